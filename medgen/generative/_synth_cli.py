"""``medgen synth train|sample|generate|interpolate|evaluate``: thin shells over :class:`medgen.generative.synthesis.Synthesizer`.

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
    """Add the ``synth`` command group (``train``, ``sample``, ``generate``, ``interpolate``,
    ``evaluate``)."""
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
        lesion_weight: Annotated[
            float,
            typer.Option(help="weight the L1 inside lesion masks 1 + W (needs --mask-column)"),
        ] = 0.0,
        mask_column: Annotated[
            str, typer.Option(help="manifest column of the lesion masks")
        ] = "mask_path",
        mask_condition: Annotated[
            bool,
            typer.Option(
                help="vae-gan: decode under lesion masks (samples: a training mask of the same "
                "conditions)"
            ),
        ] = False,
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
            lesion_weight=lesion_weight,
            mask_column=mask_column,
            mask_condition=mask_condition,
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
        reference: Annotated[
            Path | None,
            typer.Option(help="training manifest for the memorisation gate (default: the run's)"),
        ] = None,
        allow_copies: Annotated[
            bool, typer.Option(help="also write near-copies of training images (marked)")
        ] = False,
    ) -> None:
        """Draw N images from RUN for the conditions --where, into OUTPUT (+ manifest.csv).

        Near-copies of training images (the memorisation gate) are not written unless
        --allow-copies; the command says how many were dropped."""
        import json

        from medgen._internal.paths import check_output_not_input
        from medgen.errors import MedgenValueError
        from medgen.generative.synthesis import Synthesizer

        if n <= 0:
            raise MedgenValueError(f"-n must be a positive number of images, not {n}.")
        check_output_not_input(output, [run, *([reference] if reference else [])], what="--output")
        syn = Synthesizer.load(run, device=device)
        samples = syn.sample(n, parse_where(where), seed=seed, guidance_scale=guidance_scale)
        manifest = syn.write(
            samples, output, format=format, reference=reference, allow_copies=allow_copies
        )
        info = json.loads((output / "synthesis.json").read_text(encoding="utf-8"))
        note = ""
        if info["n_dropped"]:
            note = f"; {info['n_dropped']} near-copies of training images not written"
        elif info["near_copies_written"]:
            note = f"; {len(info['near_copies_written'])} near-copies written (--allow-copies)"
        typer.echo(
            f"{info['n_written']} of {n} images -> {output} (manifest {manifest.name}){note}"
        )

    @synth.command("generate")
    def synth_generate(
        run: Annotated[
            Path | None, typer.Argument(help="trained synthesizer run folder", show_default=False)
        ] = None,
        n: Annotated[int | None, typer.Option("-n", help="number of images")] = None,
        output: Annotated[
            Path | None,
            typer.Option("-o", "--output", help="dataset folder: new, or this command's to resume"),
        ] = None,
        where: Annotated[
            str | None, typer.Option(help="conditions of every image, e.g. label=1,sex=F")
        ] = None,
        balance: Annotated[
            str | None, typer.Option(help="conditions to balance, e.g. label,sex")
        ] = None,
        conditions: Annotated[
            Path | None, typer.Option(help="table (CSV/Parquet) of each image's conditions")
        ] = None,
        format: Annotated[str, typer.Option(help="nifti | dicom")] = "nifti",
        shard_size: Annotated[int, typer.Option(help="images per shard (unit of resume)")] = 256,
        batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 64,
        workers: Annotated[
            int | None, typer.Option(help="local Dask worker processes (pip install medgen[dask])")
        ] = None,
        scheduler: Annotated[
            str | None, typer.Option(help="address of a running Dask scheduler, tcp://host:8786")
        ] = None,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        reference: Annotated[
            Path | None,
            typer.Option(help="training manifest for the memorisation gate (default: the run's)"),
        ] = None,
        evaluation: Annotated[
            Path | None,
            typer.Option(help="`medgen synth evaluate` output for the dataset card"),
        ] = None,
        split: Annotated[str, typer.Option(help="split of every row: '' or train")] = "",
        device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
        progress: Annotated[bool, typer.Option(help="progress bar")] = True,
        check: Annotated[
            Path | None,
            typer.Option("--check", help="verify a finished dataset folder (nothing else runs)"),
        ] = None,
    ) -> None:
        """Generate N synthetic images from RUN into OUTPUT: sharded, resumable, the same
        images for any number of workers; manifest.csv/.parquet, provenance.json and
        dataset_card.md/.json. Rerunning the same command resumes an interrupted run.

        `medgen synth generate --check OUTPUT` verifies a finished folder (counts, unique ids,
        readable files, sha256s)."""
        generate_command(
            run, n, output, where=where, balance=balance, conditions=conditions, format=format,
            shard_size=shard_size, batch_size=batch_size, workers=workers, scheduler=scheduler,
            seed=seed, reference=reference, evaluation=evaluation, split=split, device=device,
            progress=progress, check=check,
        )  # fmt: skip

    @synth.command("interpolate")
    def synth_interpolate(
        run: Annotated[Path, typer.Argument(help="trained synthesizer run folder")],
        image_a: Annotated[Path, typer.Argument(help="first image (NIfTI file or DICOM series)")],
        image_b: Annotated[Path, typer.Argument(help="last image")],
        output: Annotated[Path, typer.Option("-o", "--output", help="new or empty folder")],
        steps: Annotated[int, typer.Option(help="images, endpoints included (>= 2)")] = 8,
        where: Annotated[
            str | None, typer.Option(help="conditions of every step, e.g. label=1,sex=F")
        ] = None,
        overwrite: Annotated[bool, typer.Option(help="replace an earlier output")] = False,
        device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    ) -> None:
        """Interpolate from IMAGE_A to IMAGE_B in RUN's latent space into OUTPUT.

        Writes interp-000.nii.gz ... (marked synthetic), interpolation.csv, interpolation.png
        and run_complete.json (last)."""
        interpolate_command(
            run, image_a, image_b, output, steps=steps, where=where, overwrite=overwrite,
            device=device,
        )  # fmt: skip

    @synth.command("evaluate")
    def synth_evaluate(
        run: Annotated[Path, typer.Argument(help="trained synthesizer run folder")],
        manifest: Annotated[Path, typer.Argument(help="the training cohort's manifest")],
        output: Annotated[Path, typer.Option("-o", "--output", help="new or empty folder")],
        n: Annotated[
            int | None, typer.Option("-n", help="samples (default: one per held-out row)")
        ] = None,
        by: Annotated[
            list[str] | None, typer.Option("--by", help="condition to split by (repeat)")
        ] = None,
        target: Annotated[str, typer.Option(help="TSTR target condition ('' to skip)")] = "label",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        classifier_epochs: Annotated[int, typer.Option(help="fidelity/TSTR classifier")] = 20,
        kid_subsets: Annotated[int, typer.Option(help="KID subsets")] = 100,
        overwrite: Annotated[bool, typer.Option(help="replace an earlier output")] = False,
        device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    ) -> None:
        """Measure RUN against the real cohort MANIFEST into OUTPUT: quality.csv,
        quality_classifier.csv, fidelity.csv, tstr.csv, near_copies.csv, memorisation.csv, report.html, evaluation.json and
        run_complete.json (last)."""
        evaluate_command(
            run, manifest, output, n=n, by=by, target=target or None, seed=seed,
            classifier_epochs=classifier_epochs, kid_subsets=kid_subsets, overwrite=overwrite,
            device=device,
        )  # fmt: skip


#: files `medgen synth interpolate` owns in its output folder
INTERPOLATE_OWNED = ("*.nii.gz", "interpolation.csv", "interpolation.png")
#: files `medgen synth evaluate` owns in its output folder
EVALUATE_OWNED = (
    "quality.csv",
    "quality_classifier.csv",
    "fidelity.csv",
    "tstr.csv",
    "near_copies.csv",
    "memorisation.csv",
    "report.html",
    "evaluation.json",
)


def generate_command(
    run: Path | None,
    n: int | None,
    output: Path | None,
    *,
    where: str | None,
    balance: str | None,
    conditions: Path | None,
    format: str,
    shard_size: int,
    batch_size: int,
    workers: int | None,
    scheduler: str | None,
    seed: int,
    reference: Path | None,
    evaluation: Path | None,
    split: str,
    device: str,
    progress: bool,
    check: Path | None,
) -> None:
    """``medgen synth generate`` (and ``--check``)."""
    import json

    from medgen.errors import ConfigError, MedgenValueError

    if check is not None:
        given = [
            name
            for name, value in (("RUN", run), ("-n", n), ("-o", output), ("--where", where),
                                ("--balance", balance), ("--conditions", conditions))
            if value is not None
        ]  # fmt: skip
        if given:
            raise ConfigError(
                f"--check OUTPUT verifies a finished dataset and takes no other arguments; drop "
                f"{', '.join(given)} (or drop --check to generate)."
            )
        from medgen.batch import check_dataset

        report = check_dataset(check)
        if not report.ok:
            raise MedgenValueError(report.message())
        typer.echo(report.message())
        return
    if run is None or output is None:
        raise ConfigError(
            "synth generate needs RUN (a trained synthesizer run folder) and -o OUTPUT, e.g. "
            "medgen synth generate runs/synth -n 1000 -o synthetic/ (or --check OUTPUT)."
        )
    if n is not None and n <= 0:
        raise MedgenValueError(f"-n must be a positive number of images, not {n}.")
    if n is None and conditions is None:
        raise ConfigError(
            "-n N is required (the number of images), unless --conditions gives a row per image."
        )
    from medgen.batch import generate

    cols = None
    if balance is not None:
        cols = tuple(c.strip() for c in balance.split(",") if c.strip())
        if not cols:
            raise ConfigError(f"--balance must list conditions like label,sex, not {balance!r}.")
    manifest = generate(
        run,
        n,
        output,
        where=parse_where(where) or None,
        balance=cols,
        conditions=conditions,
        format=format,
        shard_size=shard_size,
        batch_size=batch_size,
        workers=workers,
        scheduler=scheduler,
        seed=seed,
        reference=reference,
        evaluation=evaluation,
        split=split,
        device=device,
        progress=progress,
    )
    card = json.loads((manifest.parent / "dataset_card.json").read_text(encoding="utf-8"))
    g = card["generation"]
    typer.echo(
        f"{g['n_delivered']} images -> {manifest.parent} (manifest {manifest.name}, "
        f"dataset_card.md); {g['n_rejected']} near-copies of training images rejected and "
        "replaced"
    )


def _prepare_output(output: Path, owned: tuple[str, ...], overwrite: bool, what: str) -> None:
    from medgen._internal.runs import prepare_run_folder

    if output.exists() and not output.is_dir():
        from medgen.errors import OutputPathError

        raise OutputPathError(f"--output {str(output)!r} is a file; pass a folder.")
    prepare_run_folder(output, owned=owned, overwrite=overwrite, what=what)
    output.mkdir(parents=True, exist_ok=True)


def interpolate_command(
    run: Path,
    image_a: Path,
    image_b: Path,
    output: Path,
    *,
    steps: int,
    where: str | None,
    overwrite: bool,
    device: str,
) -> None:
    """``medgen synth interpolate`` (everything is checked before anything is written)."""
    import base64

    import numpy as np
    import pandas as pd

    from medgen._internal.files import write_bytes_atomic, write_table
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.report import figure_png
    from medgen._internal.runs import mark_complete, run_lock
    from medgen.errors import MedgenValueError
    from medgen.generative._synth_eval import _middle
    from medgen.generative._synth_report import strip_figure
    from medgen.generative._synth_write import save_sample
    from medgen.generative.synthesis import Synthesizer
    from medgen.io import load

    if steps < 2:
        raise MedgenValueError(f"--steps must be an integer >= 2, not {steps}.")
    check_output_not_input(output, [run, image_a, image_b], what="--output")
    syn = Synthesizer.load(run, device=device)
    conditions = parse_where(where) or None
    a, b = load(image_a), load(image_b)
    path = syn.interpolate(a, b, steps, conditions=conditions)
    units, _ = syn._to_units(path, "interpolation")
    with run_lock(output, what="synth interpolate output", owned=INTERPOLATE_OWNED):
        _prepare_output(output, INTERPOLATE_OWNED, overwrite, "synth interpolate output")
        rows, names = [], []
        for k in range(steps):
            name = f"interp-{k:03d}.nii.gz"
            t = k / (steps - 1)
            save_sample(
                path[k].numpy(),
                output / name,
                format="nifti",
                spatial_dims=int(syn.options["spatial_dims"]),
                spacing=syn.spacing,
                description=f"medgen {syn.model_id} interpolation t={t:.3f}",
            )
            rows.append({"step": k, "t": t, "file": name, "model_id": syn.model_id})
            names.append(name)
        write_table(
            pd.DataFrame([{**r, "image_a": str(image_a), "image_b": str(image_b)} for r in rows]),
            output / "interpolation.csv",
            what="interpolation table",
        )
        fig = strip_figure(
            np.stack([_middle(x) for x in units.numpy()]), [image_a.name, image_b.name]
        )
        write_bytes_atomic(output / "interpolation.png", base64.b64decode(figure_png(fig)))
        mark_complete(
            output,
            [*names, "interpolation.csv", "interpolation.png"],
            kind="synth-interpolate",
            info={"run": str(run), "model_id": syn.model_id, "steps": steps},
        )
    typer.echo(f"{steps} images -> {output}")


def evaluate_command(
    run: Path,
    manifest: Path,
    output: Path,
    *,
    n: int | None,
    by: list[str] | None,
    target: str | None,
    seed: int,
    classifier_epochs: int,
    kid_subsets: int,
    overwrite: bool,
    device: str,
) -> None:
    """``medgen synth evaluate`` (everything is measured before anything is written)."""
    import json

    from medgen._internal.files import write_text_atomic
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.runs import mark_complete, run_lock
    from medgen.cohort import Cohort
    from medgen.errors import MedgenValueError
    from medgen.generative.synthesis import Synthesizer

    if n is not None and n <= 0:
        raise MedgenValueError(f"-n must be a positive number of samples, not {n}.")
    cohort = Cohort.from_manifest(manifest)
    images = [
        p
        for col in ("image_path", "mask_path")
        if col in cohort.df
        for p in cohort.df[col]
        if isinstance(p, str) and p
    ]
    check_output_not_input(output, [run, manifest, *images], what="--output")
    syn = Synthesizer.load(run, device=device)
    ev = syn.evaluate(
        cohort,
        n=n,
        by=by or None,
        target=target,
        seed=seed,
        classifier_epochs=classifier_epochs,
        kid_subsets=kid_subsets,
    )
    html_text = ev.to_html()
    with run_lock(output, what="synth evaluate output", owned=EVALUATE_OWNED):
        _prepare_output(output, EVALUATE_OWNED, overwrite, "synth evaluate output")
        ev.to_csv(output)
        write_text_atomic(output / "report.html", html_text)
        prov = {**ev.provenance, "run": str(run), "manifest": str(manifest)}
        write_text_atomic(output / "evaluation.json", json.dumps(prov, indent=1, default=str))
        mark_complete(output, list(EVALUATE_OWNED), kind="synth-evaluate", info={"run": str(run)})
    typer.echo(f"evaluation -> {output} (report.html)")
