"""``medgen synth train|sample``: thin shells over :class:`medgen.generative.synthesis.Synthesizer`.

Heavy imports happen inside the commands; commands raise medgen errors and never print them
(the app's group class prints one ``Error: ...`` line, exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def parse_where(text: str | None) -> dict[str, str]:
    """``"label=1,sex=F"`` as ``{"label": "1", "sex": "F"}`` (values are matched to the model's
    vocabulary by their text).

    Example:
        >>> parse_where("label=1, sex=F")
        {'label': '1', 'sex': 'F'}
    """
    from medgen.errors import ConfigError

    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"--where must be COLUMN=VALUE pairs separated by commas, like label=1,sex=F; "
                f"{part.strip()!r} is not one."
            )
        if key.strip() in out:
            raise ConfigError(f"--where gives {key.strip()!r} twice: {text!r}.")
        out[key.strip()] = value.strip()
    return out


def _ints(text: str, name: str) -> tuple[int, ...]:
    from medgen.errors import ConfigError

    try:
        vals = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as err:
        raise ConfigError(f"{name} must be integers like 64,64, not {text!r}") from err
    if not vals:
        raise ConfigError(f"{name} must list integers like 64,64, not {text!r}")
    return vals


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command group (``train``, ``sample``) to ``app``."""
    synth = typer.Typer(
        help="Conditional synthesis: train on a cohort, sample images for chosen conditions.",
        no_args_is_help=True,
    )
    app.add_typer(synth, name="synth")

    @synth.command("train")
    def synth_train(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest (trains on split=train)")],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        condition: Annotated[
            list[str], typer.Option("--condition", help="categorical manifest column (repeat)")
        ],
        model: Annotated[str, typer.Option(help="vae-gan | ldm")] = "vae-gan",
        image_size: Annotated[str, typer.Option(help="model image size")] = "64,64",
        channels: Annotated[str, typer.Option(help="autoencoder widths per level")] = "16,32,64",
        epochs: Annotated[int, typer.Option(help="epochs")] = 20,
        steps_per_epoch: Annotated[int, typer.Option(help="steps per epoch")] = 50,
        batch_size: Annotated[int, typer.Option(help="images per step")] = 16,
        time_budget: Annotated[float | None, typer.Option(help="seconds of training")] = None,
        resume: Annotated[bool, typer.Option(help="continue the run in OUTPUT")] = False,
        overwrite: Annotated[bool, typer.Option(help="replace the run in OUTPUT")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """Train a conditional synthesizer on MANIFEST into the run folder OUTPUT."""
        from medgen.generative.synthesis import Synthesizer

        size = _ints(image_size, "--image-size")
        syn = Synthesizer(
            model,
            tuple(condition),
            spatial_dims=len(size),
            image_size=size,
            channels=_ints(channels, "--channels"),
        )
        config: dict[str, Any] = {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size,
            "time_budget_s": time_budget,
            "device": device,
            "seed": seed,
        }
        syn.fit(
            manifest,
            run_dir=output,
            config=config,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
        )
        typer.echo(f"model -> {output}")

    @synth.command("sample")
    def synth_sample(
        run: Annotated[Path, typer.Argument(help="trained synthesizer run folder")],
        n: Annotated[int, typer.Option("-n", help="number of images")],
        output: Annotated[Path, typer.Option("-o", "--output", help="new or empty folder")],
        where: Annotated[
            str | None, typer.Option(help="conditions, e.g. label=1,sex=F (others drawn)")
        ] = None,
        format: Annotated[str, typer.Option(help="nifti | dicom")] = "nifti",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        guidance_scale: Annotated[
            float | None, typer.Option(help="ldm: classifier-free guidance scale")
        ] = None,
        device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    ) -> None:
        """Draw N images from RUN for the conditions --where, into OUTPUT (+ manifest.csv)."""
        from medgen.errors import MedgenValueError
        from medgen.generative.synthesis import Synthesizer

        if n <= 0:
            raise MedgenValueError(f"-n must be a positive number of images, not {n}.")
        syn = Synthesizer.load(run, device=device)
        samples = syn.sample(n, parse_where(where), seed=seed, guidance_scale=guidance_scale)
        manifest = syn.write(samples, output, format=format)
        typer.echo(f"{n} images -> {output} (manifest {manifest.name})")
