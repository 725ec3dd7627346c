"""``medgen denoise train|apply`` and ``medgen superres train|apply``: thin shells over
:mod:`medgen.generative`. Heavy imports happen inside the commands."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

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


#: the tables ``apply`` writes into its output folder
OUTPUTS = "outputs.csv"
DERIVED_MANIFEST = "manifest.csv"
#: the columns of ``outputs.csv``: one row per image written, never removed
OUTPUT_COLUMNS = ("input", "output", "image_id", "kind", "run")


class _Item(NamedTuple):
    """One image ``apply`` restores: where it is, what the output is named, its manifest row."""

    path: Path
    name: str  # the wanted output name (file or DICOM folder), before de-duplication
    fmt: str
    row: dict[str, Any] | None


def _strip_suffix(name: str) -> str:
    for suf in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _apply_inputs(inputs: list[Path], fmt: str | None) -> tuple[list[_Item], list[Path]]:
    """The images of ``inputs`` (NIfTI files, DICOM files or folders, manifests) and every path
    that must not be written (the inputs, the manifests and their image paths).

    Manifest ids name their outputs through :func:`~medgen._internal.paths.safe_file_name`: an
    id that would leave the output folder (``../x``, ``/abs/x``, NUL) is an error naming it."""
    from medgen._internal.paths import safe_file_name
    from medgen.errors import MedgenFileNotFoundError
    from medgen.io._common import image_format

    items: list[_Item] = []
    protected: list[Path] = []
    for p in inputs:
        if not p.exists():
            raise MedgenFileNotFoundError(
                f"input {p} does not exist; pass image files, DICOM folders or a manifest."
            )
        protected.append(p)
        if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
            from medgen.cohort import Cohort

            cohort = Cohort.from_manifest(p)
            root = Path(cohort.root) if cohort.root is not None else p.parent
            for row in cohort.df.to_dict("records"):
                path = Path(str(row["image_path"])).expanduser()
                if not path.is_absolute():
                    path = root / path
                iid = safe_file_name(row["image_id"], what=f"image_id of {p}")
                f = fmt or image_format(path)
                name = f"{iid}.nii.gz" if f == "nifti" else iid
                items.append(_Item(path, name, f, {str(k): v for k, v in row.items()}))
                protected.append(path)
        else:
            f = fmt or image_format(p)
            stem = _strip_suffix(p.name)
            items.append(_Item(p, f"{stem}.nii.gz" if f == "nifti" else stem, f, None))
    return items, protected


def _read_outputs(output: Path) -> Any:
    """The rows of an existing ``outputs.csv`` in ``output`` (an empty table when none)."""
    import pandas as pd

    from medgen._internal.files import read_table

    path = output / OUTPUTS
    if not path.is_file():
        return pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    old = read_table(path, what="outputs manifest", dtype={c: "string" for c in OUTPUT_COLUMNS})
    missing = [c for c in ("input", "output") if c not in old.columns]
    if missing:
        from medgen.errors import ManifestError

        raise ManifestError(
            f"{path}: an outputs manifest needs the columns 'input' and 'output' (missing "
            f"{missing}); it was not written by medgen apply. Choose another output folder."
        )
    return old


def _output_names(items: list[_Item], output: Path, outputs: Any) -> list[str]:
    """Distinct output names: within this call (:func:`~medgen._internal.paths.unique_output_names`)
    and beside what ``output`` already holds (earlier outputs are never replaced)."""
    from medgen._internal.paths import unique_output_names

    taken = {OUTPUTS, DERIVED_MANIFEST}
    if output.is_dir():
        taken |= {e.name for e in output.iterdir()}
    taken |= {str(v) for v in outputs["output"].dropna()}
    # names already taken go first, under keys no input can have, so the inputs get the next ones
    held = [f"\x00taken:{n}" for n in sorted(taken)]
    keys = [*held, *(f"{i}:{item.path}" for i, item in enumerate(items))]
    names = unique_output_names(keys, [*sorted(taken), *(item.name for item in items)])
    return [names[k] for k in keys[len(held) :]]


def _apply(
    kind: str,
    run: Path,
    inputs: list[Path],
    output: Path,
    fmt: str | None,
    progress: bool,
    self_ensemble: bool = False,
    retain: tuple[str, ...] = (),
) -> None:
    """Restore ``inputs`` with the model in ``run`` into ``output``.

    Outputs carry only the header fields of the allow-list (plus the ``retain`` groups), like
    every medgen writer (docs/privacy.md).

    Nothing is written before every check has passed: the model folder is complete, ``output``
    is not, does not contain and does not lie inside an input (or ``run``), every manifest id
    makes a file name inside ``output``. Outputs never replace an input nor an earlier output
    (two inputs named alike get ``x.nii.gz`` and ``x-2.nii.gz``); ``outputs.csv`` maps each
    input to its output (extended, rewritten atomically after each image)."""
    import logging

    import pandas as pd
    from tqdm.auto import tqdm

    from medgen._internal.deid import allowed_keywords
    from medgen._internal.files import read_table, write_table
    from medgen._internal.paths import check_output_not_input, confined
    from medgen._internal.runs import run_lock
    from medgen.errors import ConfigError, MedgenValueError
    from medgen.generative import Denoiser, SuperResolver
    from medgen.io import load, save

    allowed_keywords(retain)  # an unknown retain option fails before anything is read

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if fmt not in (None, "nifti", "dicom"):
        raise ConfigError(f"--format must be nifti or dicom, not {fmt!r}.")
    cls = Denoiser if kind == "denoise" else SuperResolver
    model = cls.load(run)
    if self_ensemble:
        model.config.self_ensemble = True
    items, protected = _apply_inputs(inputs, fmt)
    check_output_not_input(output, [run, *protected], what="--output")
    if output.exists() and not output.is_dir():
        raise MedgenValueError(f"--output {str(output)!r} is a file; pass a folder.")
    with run_lock(output, what=f"{kind} apply output"):
        outputs = _read_outputs(output)
        derived_path = output / DERIVED_MANIFEST
        derived_old = (
            read_table(derived_path, what="derived manifest")
            if (derived_path.is_file() and any(it.row is not None for it in items))
            else None
        )
        if derived_old is not None and not {"image_id", "derived_from"} <= set(derived_old):
            from medgen.errors import ManifestError

            raise ManifestError(
                f"{derived_path}: exists but was not written by medgen apply (no 'image_id' and "
                "'derived_from' columns); medgen never rewrites files it did not write. Choose "
                "another output folder."
            )
        names = _output_names(items, output, outputs)
        targets = [
            confined(output, n, what=f"output of {it.path}")
            for it, n in zip(items, names, strict=True)
        ]
        rows, log_rows = [], []
        pairs = list(zip(items, targets, strict=True))
        for item, target in tqdm(pairs, disable=not progress, desc=kind):
            img = load(item.path)
            restored = model.apply(img)
            # the header fields come from restored.meta, filtered by save's allow-list
            written = save(
                restored,
                target,
                format=item.fmt,
                derivation_description=model.description,
                retain=retain,
            )
            typer.echo(f"{item.path} -> {written}")
            log_rows.append(
                {
                    "input": str(item.path),
                    "output": target.name,
                    "image_id": "" if item.row is None else str(item.row["image_id"]),
                    "kind": kind,
                    "run": str(run),
                }
            )
            table = pd.concat([outputs, pd.DataFrame(log_rows)], ignore_index=True)
            write_table(table, output / OUTPUTS, what="outputs manifest")
            if item.row is not None:
                new = dict(item.row)
                new["image_path"] = str(written.resolve())
                new["derived_from"] = str(item.path)
                rows.append(new)
        typer.echo(f"outputs -> {output / OUTPUTS}")
        if rows:
            table = pd.DataFrame(rows)
            if derived_old is not None:
                # the newest output of an image stands for it; outputs.csv keeps all of them
                keep = ~derived_old["image_id"].astype(str).isin(table["image_id"].astype(str))
                table = pd.concat([derived_old[keep], table], ignore_index=True)
            write_table(table, derived_path, what="derived manifest")
            typer.echo(f"manifest -> {derived_path}")


def _apply_command(kind: str, doc: str) -> Callable[..., None]:
    """The ``apply`` command of ``kind`` (``"denoise"`` or ``"superres"``), helped by ``doc``."""

    def command(
        run: _Run,
        inputs: _Inputs,
        output: _ApplyOutput,
        format: _Format = None,
        self_ensemble: _SelfEnsemble = False,
        progress: _Progress = True,
        retain: _Retain = None,
    ) -> None:
        _apply(kind, run, inputs, output, format, progress, self_ensemble, tuple(retain or ()))

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
