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
_Run = Annotated[
    str,
    typer.Argument(
        help="trained run folder, or pretrained:NAME for a model shipped with medgen "
        "(list them: medgen pretrained)"
    ),
]
_TranslateRun = Annotated[Path, typer.Argument(help="trained run folder")]
_Init = Annotated[
    str | None,
    typer.Option(
        help="fine-tune from pretrained:NAME (medgen pretrained) or a trained RUN folder; the "
        "network options default to the init's"
    ),
]
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


def _net_option(text: str, default: str) -> Any:
    """A train command's network option: ``None`` unless passed, so ``--init`` can supply it."""
    return typer.Option(help=f"{text} \\[default: {default}; with --init: the init's]")


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
        init=params.get("init"),
    )
    typer.echo(f"model -> {output}")


#: the options of a train command that fix the network: fine-tuning (--init) keeps the init's
_NETWORK_OPTIONS = ("model", "spatial_dims", "channels", "noise_map", "scale", "axes")


def _options(
    kind: str, init: str | None, given: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The constructor options of a train command: those passed (``given``, ``None`` when not
    passed), else the ``--init`` model's (which also gives its ``model_kwargs``), else
    ``defaults``.

    Raises:
        ConfigError: ``--init`` holds another kind of model, or a network option passed differs
            from the init's (one line naming both).
    """
    from medgen.errors import ConfigError

    if init is None:
        return {k: defaults[k] if v is None else v for k, v in given.items()}
    from medgen.generative import load

    src = load(init)
    if src.kind != kind:
        raise ConfigError(
            f"--init {init} holds a {src.kind!r} model; `medgen {kind} train` fine-tunes only a "
            f"{kind!r} model (a run of `medgen {kind} train`, or pretrained:NAME of "
            "`medgen pretrained`)."
        )
    c = src.config  # type: ignore[attr-defined]
    o = c.task_options
    theirs: dict[str, Any] = {
        "model": c.model,
        "spatial_dims": c.spatial_dims,
        "channels": tuple(c.channels),
        "patch_size": c.patch_size,
        "noise_map": bool(o.get("noise_map", False)),
        "noise": list(o.get("noise", ())),
        "sigma": tuple(o.get("sigma", ())),
        "scale": o.get("scale"),
        "axes": o.get("axes"),
    }
    out: dict[str, Any] = {}
    for k, v in given.items():
        if v is not None and k in _NETWORK_OPTIONS and v != theirs[k]:
            flag = "--" + k.replace("_", "-")
            show = ",".join(map(str, v)) if isinstance(v, tuple) else v
            init_show = ",".join(map(str, theirs[k])) if k == "channels" else theirs[k]
            raise ConfigError(
                f"{flag} {show} conflicts with --init {init} (its {k} is {init_show}); leave "
                f"{flag} out to fine-tune the init's network, or train without --init."
            )
        out[k] = theirs[k] if v is None else v
    return {**out, "model_kwargs": dict(c.model_kwargs)}


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
        from medgen.generative._pretrained import resolve_run

        _apply(
            kind,
            resolve_run(run, kind=_PRETRAINED_KINDS.get(kind)),
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
        run: _TranslateRun,
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
            str(run),
            inputs,
            output,
            format,
            False,
            workers,
            scheduler,
            shard_size,
            progress,
            retain,
        )

    out: Callable[..., None] = translate_command if kind == "translate" else command
    out.__name__ = out.__qualname__ = f"{kind}_apply"
    out.__doc__ = doc
    return out


#: the model kind of ``pretrained:NAME`` for each apply command
_PRETRAINED_KINDS = {"denoise": "denoise", "superres": "superres", "translate": "translator"}


def pretrained(
    name: Annotated[str | None, typer.Argument(help="show this model's card")] = None,
    kind: Annotated[str | None, typer.Option(help="only models of this kind")] = None,
) -> None:
    """List the pretrained models shipped with medgen (use them as pretrained:NAME), or show
    one's model card."""
    from medgen.generative._pretrained import (
        CARD,
        available_pretrained,
        pretrained_dir,
        pretrained_root,
    )

    if name is not None:
        typer.echo((pretrained_dir(name, kind=kind, verify=False) / CARD).read_text("utf-8"))
        return
    table = available_pretrained(kind)
    if table.empty:
        typer.echo(f"no pretrained models in {pretrained_root()}")
        return
    typer.echo(table.to_string(index=False))


def register(app: typer.Typer) -> None:
    """Add the ``denoise`` and ``superres`` command groups and ``pretrained`` to the ``medgen``
    app."""
    app.command("pretrained")(pretrained)
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
        model: Annotated[str | None, _net_option("unet | vae", "unet")] = None,
        spatial_dims: Annotated[int | None, _net_option("2 (slices) or 3 (patches)", "2")] = None,
        channels: Annotated[str | None, _net_option("widths per level", "16,32,64,128")] = None,
        patch_size: Annotated[
            int | None,
            typer.Option(
                help="training patch / window edge \\[default: 64; 3D: 32; or the init's]"
            ),
        ] = None,
        noise: Annotated[
            list[str] | None,
            typer.Option(
                help="gaussian | rician | poisson_gaussian (repeat) \\[default: gaussian, rician; "
                "or the init's]"
            ),
        ] = None,
        sigma_min: Annotated[
            float | None,
            typer.Option(
                help="lowest noise s.d. (fraction of range) \\[default: 0.02; or the init's]"
            ),
        ] = None,
        sigma_max: Annotated[
            float | None,
            typer.Option(
                help="highest noise s.d. (fraction of range) \\[default: 0.15; or the init's]"
            ),
        ] = None,
        noise_map: Annotated[
            bool | None,
            _net_option("the noise level as a second input channel (unet only)", "off"),
        ] = None,
        init: _Init = None,
    ) -> Any:
        """Train a denoiser; writes config.json, model.safetensors, checkpoint.pt, metrics.csv.

        With --init, fine-tune a trained or pretrained denoiser (its network; its noise options
        unless given)."""
        from medgen.generative import Denoiser

        given: dict[str, Any] = {
            "model": model,
            "spatial_dims": spatial_dims,
            "channels": None if channels is None else _parse_ints(channels, "--channels"),
            "patch_size": patch_size,
            "noise_map": noise_map,
            "noise": noise or None,
            "sigma": None,
        }
        defaults = {
            "model": "unet",
            "spatial_dims": 2,
            "channels": (16, 32, 64, 128),
            "patch_size": None,
            "noise_map": False,
            "noise": ["gaussian", "rician"],
            "sigma": (0.02, 0.15),
        }
        o = _options("denoise", init, given, defaults)
        sig = tuple(o.pop("sigma"))
        lo = sigma_min if sigma_min is not None else float(sig[0])
        hi = sigma_max if sigma_max is not None else float(sig[-1])
        extra: dict[str, Any] = (
            {"noise_map": True} if o.pop("noise_map") else {}
        )  # a plain model's options
        return Denoiser(**o, sigma=(lo, hi), **extra)

    denoise.command("apply")(
        _apply_command("denoise", "Denoise images; outputs are marked DERIVED and name the model.")
    )

    @superres.command("train")
    @_train_command
    def superres_train(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest of clean images")],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        scale: Annotated[int | None, _net_option("2 or 4", "2")] = None,
        axes: Annotated[
            str | None, _net_option("inplane | through (thick slices along Z)", "inplane")
        ] = None,
        model: Annotated[str | None, _net_option("unet | vae", "unet")] = None,
        spatial_dims: Annotated[int | None, _net_option("2 (slices) or 3 (patches)", "2")] = None,
        channels: Annotated[str | None, _net_option("widths per level", "16,32,64,128")] = None,
        patch_size: Annotated[
            int | None,
            typer.Option(
                help="training patch / window edge, fine grid \\[default: 64; 3D: 32; or the init's]"
            ),
        ] = None,
        init: _Init = None,
    ) -> Any:
        """Train a super-resolver; writes config.json, model.safetensors, checkpoint.pt, metrics.csv.

        With --init, fine-tune a trained or pretrained super-resolver (its network, scale and
        axes)."""
        from medgen.generative import SuperResolver

        given: dict[str, Any] = {
            "scale": scale,
            "axes": axes,
            "model": model,
            "spatial_dims": spatial_dims,
            "channels": None if channels is None else _parse_ints(channels, "--channels"),
            "patch_size": patch_size,
        }
        defaults = {
            "scale": 2,
            "axes": "inplane",
            "model": "unet",
            "spatial_dims": 2,
            "channels": (16, 32, 64, 128),
            "patch_size": None,
        }
        return SuperResolver(**_options("superres", init, given, defaults))

    superres.command("apply")(
        _apply_command(
            "superres",
            "Super-resolve images; the output affine has the finer spacing; marked DERIVED.",
        )
    )
