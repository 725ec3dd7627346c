"""``medgen denoise train|apply`` and ``medgen superres train|apply``: thin shells over
:mod:`medgen.generative`. Heavy imports happen inside the commands."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

# options both train (and both apply) commands take
_Epochs = Annotated[int, typer.Option(help="epochs")]
_Steps = Annotated[int, typer.Option(help="steps per epoch")]
_Batch = Annotated[int, typer.Option(help="patches per step")]
_AdvWeight = Annotated[float, typer.Option(help="PatchGAN loss weight (0 = off)")]
_TimeBudget = Annotated[float | None, typer.Option(help="seconds of training")]
_LrSchedule = Annotated[str, typer.Option(help="constant | cosine (to 0 over all epochs)")]
_Workers = Annotated[int, typer.Option(help="processes making training pairs beside the network")]
_Resume = Annotated[bool, typer.Option(help="continue an interrupted run")]
_Device = Annotated[str, typer.Option(help="auto | cpu | cuda")]
_Seed = Annotated[int, typer.Option(help="random seed")]
_Progress = Annotated[bool, typer.Option(help="progress bars")]
_Run = Annotated[Path, typer.Argument(help="trained run folder")]
_Inputs = Annotated[list[Path], typer.Argument(help="NIfTI files, DICOM folders or a manifest")]
_ApplyOutput = Annotated[Path, typer.Option("-o", "--output", help="output folder")]
_Format = Annotated[str | None, typer.Option(help="nifti | dicom (default: as input)")]
_SelfEnsemble = Annotated[
    bool, typer.Option(help="average over 8 rotations/flips (8x slower, better)")
]


def _parse_ints(text: str, name: str) -> tuple[int, ...]:
    from medgen.errors import ConfigError

    try:
        vals = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as err:
        raise ConfigError(f"{name} must be integers like 16,32,64, not {text!r}") from err
    if not vals:
        raise ConfigError(f"{name} must list integers like 16,32,64, not {text!r}")
    return vals


#: the training options both train commands take: CLI parameter -> TrainConfig option
_TRAIN_OPTIONS = {
    "epochs": "epochs",
    "steps_per_epoch": "steps_per_epoch",
    "batch_size": "batch_size",
    "adv_weight": "adv_weight",
    "lr_schedule": "lr_schedule",
    "device": "device",
    "seed": "seed",
    "time_budget": "time_budget_s",
    "workers": "num_workers",
}


def _train_options(
    epochs: _Epochs = 10,
    steps_per_epoch: _Steps = 50,
    batch_size: _Batch = 16,
    adv_weight: _AdvWeight = 0.0,
    time_budget: _TimeBudget = None,
    lr_schedule: _LrSchedule = "constant",
    workers: _Workers = 0,
    resume: _Resume = False,
    device: _Device = "auto",
    seed: _Seed = 0,
    progress: _Progress = True,
) -> None:
    """The options both train commands take after their own (read by :func:`_train_command`)."""


def _train_command(build: Callable[..., Any]) -> Callable[..., None]:
    """A train command from ``build``, which takes the task's own options (the manifest and
    ``--output`` first) and returns the untrained model: the command takes them plus the
    options of :func:`_train_options`, builds the model and trains it (:func:`_fit`)."""
    own = inspect.signature(build, eval_str=True).parameters
    shared = inspect.signature(_train_options, eval_str=True).parameters

    def command(**params: Any) -> None:
        _fit(build(**{k: params[k] for k in own}), params)

    command.__name__ = command.__qualname__ = build.__name__
    command.__doc__ = build.__doc__
    sig = inspect.Signature([*own.values(), *shared.values()], return_annotation=None)
    command.__signature__ = sig  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in sig.parameters.values()}
    return command


def _fit(model: Any, params: Mapping[str, Any]) -> None:
    """Train ``model`` on ``params["manifest"]`` into ``params["output"]`` with the training
    options both train commands take (``params``: a train command's arguments); CLI option
    names map to :class:`~medgen.generative.TrainConfig` names in :data:`_TRAIN_OPTIONS`."""
    cfg = {name: params[k] for k, name in _TRAIN_OPTIONS.items() if params[k] is not None}
    output = params["output"]
    model.fit(
        params["manifest"],
        run_dir=output,
        config=cfg,
        resume=params["resume"],
        progress=params["progress"],
    )
    typer.echo(f"model -> {output}")


def _apply_inputs(inputs: list[Path]) -> list[tuple[str, Path, dict[str, Any] | None]]:
    """``(name, image path, manifest row or None)`` for files, DICOM folders and manifests."""
    from medgen.errors import MedgenFileNotFoundError

    out: list[tuple[str, Path, dict[str, Any] | None]] = []
    for p in inputs:
        if not p.exists():
            raise MedgenFileNotFoundError(
                f"input {p} does not exist; pass image files, DICOM folders or a manifest."
            )
        if p.suffix.lower() in (".csv", ".parquet"):
            from medgen.cohort import Cohort

            cohort = Cohort.from_manifest(p)
            for row in cohort.df.to_dict("records"):
                out.append(
                    (
                        str(row["image_id"]),
                        Path(row["image_path"]),
                        {str(k): v for k, v in row.items()},
                    )
                )
        else:
            name = p.name
            for suf in (".nii.gz", ".nii", ".dcm"):
                if name.lower().endswith(suf):
                    name = name[: -len(suf)]
            out.append((name, p, None))
    return out


def _apply(
    kind: str,
    run: Path,
    inputs: list[Path],
    output: Path,
    fmt: str | None,
    progress: bool,
    self_ensemble: bool = False,
) -> None:
    import logging

    import pandas as pd
    from tqdm.auto import tqdm

    from medgen.errors import ConfigError
    from medgen.generative import Denoiser, SuperResolver
    from medgen.io import load, save

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if fmt not in (None, "nifti", "dicom"):
        raise ConfigError(f"--format must be nifti or dicom, not {fmt!r}.")
    cls = Denoiser if kind == "denoise" else SuperResolver
    model = cls.load(run)
    if self_ensemble:
        model.config.self_ensemble = True
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, path, row in tqdm(_apply_inputs(inputs), disable=not progress, desc=kind):
        img = load(path)
        restored = model.apply(img)
        f = fmt or str(img.meta.get("format", "nifti"))
        target = output / (f"{name}.nii.gz" if f == "nifti" else name)
        tags = {}
        if f == "dicom":
            for key in ("Modality", "PatientSex", "PatientAge", "Manufacturer", "InstitutionName"):
                if img.meta.get(key) not in (None, ""):
                    tags[key] = img.meta[key]
        written = save(
            restored,
            target,
            format=f,
            derivation_description=model.description,
            dicom_tags=tags or None,
        )
        typer.echo(f"{path} -> {written}")
        if row is not None:
            new = dict(row)
            new["image_path"] = str(written.resolve())
            new["derived_from"] = str(path)
            rows.append(new)
    if rows:
        from medgen._internal.files import write_table

        write_table(pd.DataFrame(rows), output / "manifest.csv")
        typer.echo(f"manifest -> {output / 'manifest.csv'}")


def _apply_command(kind: str, doc: str) -> Callable[..., None]:
    """The ``apply`` command of ``kind`` (``"denoise"`` or ``"superres"``), helped by ``doc``."""

    def command(
        run: _Run,
        inputs: _Inputs,
        output: _ApplyOutput,
        format: _Format = None,
        self_ensemble: _SelfEnsemble = False,
        progress: _Progress = True,
    ) -> None:
        _apply(kind, run, inputs, output, format, progress, self_ensemble)

    command.__name__ = command.__qualname__ = f"{kind}_apply"
    command.__doc__ = doc
    return command


def register(app: typer.Typer) -> None:
    """Add the ``denoise`` and ``superres`` command groups to the ``medgen`` app."""
    denoise = typer.Typer(
        help="Learned denoising: train on a cohort, apply to images.", no_args_is_help=True
    )
    superres = typer.Typer(
        help="Learned super-resolution (x2/x4, in plane or thick slices).", no_args_is_help=True
    )
    app.add_typer(denoise, name="denoise")
    app.add_typer(superres, name="superres")

    @denoise.command("train")
    @_train_command
    def denoise_train(
        manifest: Annotated[
            Path,
            typer.Argument(help="cohort manifest (clean images, or clean_path/noisy_path pairs)"),
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        model: Annotated[str, typer.Option(help="unet | vae")] = "unet",
        spatial_dims: Annotated[int, typer.Option(help="2 (slices) or 3 (patches)")] = 2,
        channels: Annotated[str, typer.Option(help="widths per level")] = "16,32,64,128",
        patch_size: Annotated[
            int | None, typer.Option(help="training patch / window edge [default: 64; 3D: 32]")
        ] = None,
        noise: Annotated[
            list[str] | None, typer.Option(help="gaussian | rician | poisson_gaussian (repeat)")
        ] = None,
        sigma_min: Annotated[
            float, typer.Option(help="lowest noise s.d. (fraction of range)")
        ] = 0.02,
        sigma_max: Annotated[
            float, typer.Option(help="highest noise s.d. (fraction of range)")
        ] = 0.15,
    ) -> Any:
        """Train a denoiser; writes config.json, model.safetensors, checkpoint.pt, metrics.csv."""
        from medgen.generative import Denoiser

        return Denoiser(
            model=model,
            spatial_dims=spatial_dims,
            channels=_parse_ints(channels, "--channels"),
            patch_size=patch_size,
            noise=noise or ["gaussian", "rician"],
            sigma=(sigma_min, sigma_max),
        )

    denoise.command("apply")(
        _apply_command("denoise", "Denoise images; outputs are marked DERIVED and name the model.")
    )

    @superres.command("train")
    @_train_command
    def superres_train(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest of clean images")],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        scale: Annotated[int, typer.Option(help="2 or 4")] = 2,
        axes: Annotated[str, typer.Option(help="inplane | through (thick slices, 3D)")] = "inplane",
        model: Annotated[str, typer.Option(help="unet | vae")] = "unet",
        spatial_dims: Annotated[int, typer.Option(help="2 (slices) or 3 (patches)")] = 2,
        channels: Annotated[str, typer.Option(help="widths per level")] = "16,32,64,128",
        patch_size: Annotated[
            int | None,
            typer.Option(help="training patch / window edge, fine grid [default: 64; 3D: 32]"),
        ] = None,
    ) -> Any:
        """Train a super-resolver; writes config.json, model.safetensors, checkpoint.pt, metrics.csv."""
        from medgen.generative import SuperResolver

        return SuperResolver(
            scale=scale,
            axes=axes,
            model=model,
            spatial_dims=spatial_dims,
            channels=_parse_ints(channels, "--channels"),
            patch_size=patch_size,
        )

    superres.command("apply")(
        _apply_command(
            "superres",
            "Super-resolve images; the output affine has the finer spacing; marked DERIVED.",
        )
    )
