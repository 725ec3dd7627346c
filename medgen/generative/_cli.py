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
_Resume = Annotated[
    bool,
    typer.Option(
        help="continue the interrupted run in OUTPUT (same options), or train a finished one "
        "longer (more --epochs or --time-budget)"
    ),
]
_Overwrite = Annotated[
    bool, typer.Option(help="replace the run in OUTPUT (its files only; anything else is kept)")
]
_Device = Annotated[str, typer.Option(help="auto | cpu | cuda")]
_Seed = Annotated[int, typer.Option(help="random seed")]
_Progress = Annotated[bool, typer.Option(help="progress bars")]
_Run = Annotated[Path, typer.Argument(help="trained run folder")]
_Inputs = Annotated[list[Path], typer.Argument(help="NIfTI files, DICOM folders or a manifest")]
_ApplyOutput = Annotated[
    Path,
    typer.Option("-o", "--output", help="output folder (outside every input; gets outputs.csv)"),
]
_Format = Annotated[str | None, typer.Option(help="nifti | dicom (default: as input)")]
_SelfEnsemble = Annotated[
    bool, typer.Option(help="average over 8 rotations/flips (8x slower, better)")
]
_Retain = Annotated[
    list[str] | None,
    typer.Option(
        "--retain",
        help="de-identification retain option for DICOM output (repeatable): "
        "patient_characteristics, device_identity, institution_identity, descriptors; "
        "see docs/privacy.md",
    ),
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
    overwrite: _Overwrite = False,
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
        overwrite=params["overwrite"],
        progress=params["progress"],
    )
    typer.echo(f"model -> {output}")


_ApplyWorkers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="run on a local Dask cluster of W processes (pip install 'medgen\\[dask]')",
    ),
]
_Scheduler = Annotated[
    str | None,
    typer.Option(help="run on an existing Dask cluster (tcp://host:8786); see docs/batch.md"),
]
_ShardSize = Annotated[int, typer.Option(help="images per task (the unit of work and resume)")]


def _apply(
    kind: str,
    run: Path,
    inputs: list[Path],
    output: Path,
    fmt: str | None,
    progress: bool,
    self_ensemble: bool = False,
    retain: tuple[str, ...] = (),
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    shard_size: int = 16,
) -> None:
    """Apply the ``kind`` model in ``run`` to ``inputs`` into ``output``: a thin shell over
    :func:`medgen.batch.apply_model` (every check, the resume and the refusals are there).

    Outputs carry only the header fields of the allow-list (plus the ``retain`` groups), like
    every medgen writer (docs/privacy.md). Nothing is written before every check has passed: the
    model folder is complete, ``output`` is not, does not contain and does not lie inside an
    input (or ``run``), every manifest id makes a file name inside ``output``. Outputs never
    replace an input (two inputs named alike get ``x.nii.gz`` and ``x-2.nii.gz``);
    ``outputs.csv`` maps each input to its output, with its sha256. Rerunning the same command
    resumes: inputs already done are skipped."""
    import logging

    import pandas as pd

    from medgen.batch._apply import run_apply

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if fmt not in (None, "nifti", "dicom"):
        from medgen.errors import ConfigError

        raise ConfigError(f"--format must be nifti or dicom, not {fmt!r}.")
    table = run_apply(
        kind,
        run,
        inputs,
        output,
        format=fmt,
        workers=workers,
        scheduler=scheduler,
        scheduler_timeout=5.0,
        shard_size=shard_size,
        self_ensemble=self_ensemble,
        retain=retain,
        device="cpu",
        progress=progress,
        arg="--output",
    )
    n = len(pd.read_csv(table, dtype=str, keep_default_na=False))
    typer.echo(f"{n} images -> {output}")
    typer.echo(f"outputs -> {table}")
    if (output / "manifest.csv").is_file() and any(
        p.suffix.lower() in (".csv", ".parquet") for p in inputs
    ):
        typer.echo(f"manifest -> {output / 'manifest.csv'}")


def _apply_command(kind: str, doc: str) -> Callable[..., None]:
    """The ``apply`` command of ``kind`` (``"denoise"``, ``"superres"`` or ``"translate"``),
    helped by ``doc``. The translate command has no ``--self-ensemble``."""

    def command(
        run: _Run,
        inputs: _Inputs,
        output: _ApplyOutput,
        format: _Format = None,
        self_ensemble: _SelfEnsemble = False,
        workers: _ApplyWorkers = None,
        scheduler: _Scheduler = None,
        shard_size: _ShardSize = 16,
        progress: _Progress = True,
        retain: _Retain = None,
    ) -> None:
        _apply(
            kind,
            run,
            inputs,
            output,
            format,
            progress,
            self_ensemble,
            tuple(retain or ()),
            workers=workers,
            scheduler=scheduler,
            shard_size=shard_size,
        )

    def translate_command(
        run: _Run,
        inputs: _Inputs,
        output: _ApplyOutput,
        format: _Format = None,
        workers: _ApplyWorkers = None,
        scheduler: _Scheduler = None,
        shard_size: _ShardSize = 16,
        progress: _Progress = True,
        retain: _Retain = None,
    ) -> None:
        command(
            run, inputs, output, format, False, workers, scheduler, shard_size, progress, retain
        )

    out: Callable[..., None] = translate_command if kind == "translate" else command
    out.__name__ = out.__qualname__ = f"{kind}_apply"
    out.__doc__ = doc
    return out


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
