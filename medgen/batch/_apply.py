"""``apply_model``: a trained denoiser, super-resolver or translator over many images, sharded,
on any executor, resumable. ``medgen denoise|superres|translate apply`` are thin shells over it.

The driver (:func:`apply_model`) checks everything, plans an output name for every input, runs
the shards on an executor (:mod:`medgen.batch._executor`; the work of a shard is
:func:`apply_shard`) and writes the tables. Output folder::

    <outputs>                   the restored images (NIfTI files or DICOM series folders)
    outputs.csv                 input -> output, with the sha256 of each output
    manifest.csv                the derived manifest (manifest inputs only)
    .medgen-apply/job.json      the arguments (written first; a rerun must match them)
    .medgen-apply/plan.csv      every input's planned output name and shard (before any image)
    .medgen-apply/part-<k>.csv  shard k's finished images, written last: they are done

Resume: a rerun into the same folder skips the inputs whose output is recorded in a part and
still has its sha256, and does the rest under the names planned for them; new inputs get new
names beside the old ones. Other arguments (model, weights, kind, format, self-ensemble,
retain, device) are refused with the differences listed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from medgen.errors import (
    ConfigError,
    ManifestError,
    MedgenError,
    MedgenRuntimeError,
    MedgenValueError,
    RunFolderError,
)

log = logging.getLogger(__name__)

__all__ = ["APPLY_KINDS", "apply_model", "apply_shard"]

#: the kinds of batch apply: command group -> the model kind it applies
APPLY_KINDS = {"denoise": "denoise", "superres": "superres", "translate": "translator"}
#: the tables apply writes into its output folder
OUTPUTS = "outputs.csv"
DERIVED_MANIFEST = "manifest.csv"
#: the columns of ``outputs.csv``: one row per image written
OUTPUT_COLUMNS = ("input", "output", "image_id", "kind", "run", "sha256")
#: the bookkeeping folder inside the output folder
JOB_DIR = ".medgen-apply"
JOB = "job.json"
PLAN = "plan.csv"
JOB_FORMAT = "medgen.batch.apply/1"
PLAN_COLUMNS = ("key", "input", "image_id", "output", "format", "shard")
#: models kept per process (a worker may serve two jobs in turn)
_KEEP = 2
_MODELS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


class _Item(NamedTuple):
    """One input image: where it is, its output name (before de-duplication), its row."""

    path: Path
    name: str
    fmt: str
    row: dict[str, Any] | None


# ---------------------------------------------------------------------------------- inputs
def _strip_suffix(name: str) -> str:
    for suf in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def collect_inputs(inputs: Sequence[Path], fmt: str | None) -> tuple[list[_Item], list[Path]]:
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


def _image_id(item: _Item) -> str:
    return "" if item.row is None else str(item.row["image_id"])


def _keys(items: Sequence[_Item]) -> list[str]:
    """A key per item: its resolved path, its image id and which occurrence of the pair it is
    (an input given twice is two items, as it always was)."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for it in items:
        pair = (
            str(it.path.expanduser().resolve()),
            "" if it.row is None else str(it.row["image_id"]),
        )
        seen[pair] = seen.get(pair, 0) + 1
        keys.append(f"{pair[0]}|{pair[1]}|{seen[pair]}")
    return keys


# ---------------------------------------------------------------------------------- the model
def _load_model(kind: str | None, run: Path, device: str) -> tuple[str, Any]:
    """``(kind, model)`` of the run folder; ``kind=None``: whatever the folder holds."""
    from medgen.generative import load

    if kind is not None and kind not in APPLY_KINDS:
        from medgen._internal.suggest import did_you_mean

        raise ConfigError(
            f"apply: kind must be one of {list(APPLY_KINDS)}, not {kind!r}."
            f"{did_you_mean(str(kind), APPLY_KINDS)}"
        )
    if kind in ("denoise", "superres"):
        from medgen.generative import Denoiser, SuperResolver

        cls = Denoiser if kind == "denoise" else SuperResolver
        return kind, _mark_pretrained(cls.load(run, device=device), run)
    model = _mark_pretrained(load(run, device=device), run)
    found = {v: k for k, v in APPLY_KINDS.items()}.get(str(model.kind))
    if kind == "translate" and model.kind != "translator":
        other = f", or use `medgen {found} apply` for this one" if found else ""
        raise ConfigError(
            f"translate apply: run folder {str(run)!r} holds a {model.kind!r} model, not a "
            "translator (kind 'translator'); pass a run of medgen.generative.Translator "
            f"(fit and saved: `medgen translate train`){other}."
        )
    if found is None:
        raise ConfigError(
            f"apply: run folder {str(run)!r} holds a {model.kind!r} model, which is not applied "
            f"image by image; apply runs of kinds {sorted(APPLY_KINDS.values())}."
        )
    return found, model


def _mark_pretrained(model: Any, run: Path) -> Any:
    """A model of medgen's pretrained registry records its name and weights hash (they go into
    the outputs' DerivationDescription)."""
    from medgen.generative._pretrained import pretrained_root

    if Path(run).resolve().parent == pretrained_root().resolve():
        model.pretrained_name = Path(run).name
        model.pretrained_sha256 = _weights_sha256(Path(run)) or None
    return model


def _description(model: Any, run: str) -> str:
    return str(getattr(model, "description", None) or f"medgen translator {Path(run).name}")


def _weights_sha256(run: Path) -> str:
    try:
        meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
        return str((meta.get("weights") or {}).get("sha256") or "")
    except (OSError, ValueError):
        return ""


def _prepared(model: Any, self_ensemble: bool) -> Any:
    if self_ensemble:
        model.config.self_ensemble = True
    return model


def cached_model(job: dict[str, Any]) -> Any:
    """The model of ``job``, loaded once per process (a worker keeps it for the next shards).

    Raises:
        RunFolderError: the run folder's weights are no longer the job's (retrained meanwhile).
    """
    a = job["arguments"]
    key = (a["kind"], a["run"], a["weights_sha256"], a["device"], a["self_ensemble"])
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    run = Path(a["run"])
    if _weights_sha256(run) != a["weights_sha256"]:
        raise RunFolderError(
            f"run folder {a['run']!r} now holds other weights than the model this apply job "
            "started with: it was retrained meanwhile. Apply into a new output folder."
        )
    _, model = _load_model(a["kind"], run, a["device"])
    return _remember(key, _prepared(model, bool(a["self_ensemble"])))


def _remember(key: tuple[Any, ...], model: Any) -> Any:
    _MODELS[key] = model
    _MODELS.move_to_end(key)
    while len(_MODELS) > _KEEP:
        _MODELS.popitem(last=False)
    return model


# ---------------------------------------------------------------------------------- a shard
def _part_path(out: Path, shard: int) -> Path:
    return out / JOB_DIR / f"part-{int(shard):05d}.csv"


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def apply_shard(job: dict[str, Any], shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the model of ``job`` to the planned ``rows`` of shard ``shard`` and record them.

    Each output is written atomically (:func:`medgen.io.save`), then the shard's part
    ``.medgen-apply/part-<shard>.csv`` (its earlier rows and these, with each output's sha256)
    atomically, last: the rows in it are done.

    Returns:
        ``{"shard", "n", "rows"}``: the part's new rows (``key``, ``output``, ``sha256``).
    """
    from medgen._internal.files import write_table
    from medgen._internal.paths import confined
    from medgen.batch._shard import path_sha256
    from medgen.io import load, save

    out = Path(job["out_dir"])
    a = job["arguments"]
    model = cached_model(job)
    description = _description(model, a["run"])
    retain = tuple(a["retain"])
    done = []
    for r in rows:
        target = confined(out, str(r["output"]), what=f"output of {r['input']}")
        restored = model.apply(load(r["path"]), slices=True)  # 2D models: volumes by slice
        # the header fields come from restored.meta, filtered by save's allow-list
        written = save(
            restored,
            target,
            format=r["format"],
            derivation_description=description,
            retain=retain,
        )
        done.append({"key": r["key"], "output": target.name, "sha256": path_sha256(written)})
    part = _part_path(out, shard)
    new = pd.DataFrame(done, columns=["key", "output", "sha256"])
    if part.is_file():
        old = _read_csv(part)
        new = pd.concat([old[~old["key"].isin(new["key"])], new], ignore_index=True)
    write_table(new, part, what="apply part")
    return {"shard": int(shard), "n": len(done), "rows": done}


# ---------------------------------------------------------------------------------- the folder
def _read_job(out: Path) -> dict[str, Any] | None:
    path = out / JOB_DIR / JOB
    if not path.is_file():
        return None
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(
            f"apply output {str(out)!r}: {JOB_DIR}/{JOB} is unreadable ({err}); apply into a new "
            "output folder."
        ) from err
    if not isinstance(job, dict) or job.get("format") != JOB_FORMAT:
        raise RunFolderError(
            f"apply output {str(out)!r}: {JOB_DIR}/{JOB} was not written by this version of "
            "medgen apply; apply into a new output folder."
        )
    return job


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = dict(old.get("arguments") or {}), dict(new["arguments"])
    return [
        f"{key}: {a.get(key)!r} in the folder, {b.get(key)!r} now"
        for key in sorted(set(a) | set(b))
        if json.dumps(a.get(key), sort_keys=True) != json.dumps(b.get(key), sort_keys=True)
    ]


def _check_folder(out: Path, spec: dict[str, Any], arg: str) -> dict[str, Any] | None:
    """Read-only checks of ``out``: a file, an earlier apply without resume records, another
    job. Returns the folder's job (or ``None``)."""
    if out.exists() and not out.is_dir():
        raise MedgenValueError(f"{arg} {str(out)!r} is a file; pass a folder.")
    old = _read_job(out)
    if old is None and (out / OUTPUTS).is_file():
        raise RunFolderError(
            f"{arg} {str(out)!r} holds an {OUTPUTS} of an earlier medgen apply without resume "
            f"records ({JOB_DIR}/{JOB}); it cannot be extended safely. Apply into a new output "
            "folder."
        )
    if old is not None:
        diff = _differences(old, spec)
        if diff:
            raise RunFolderError(
                f"{arg} {str(out)!r} holds outputs of an apply with other arguments ("
                + "; ".join(diff)
                + "). Rerun with the folder's arguments to resume or extend it, or apply into a "
                "new output folder."
            )
    return old


def _read_plan(out: Path) -> pd.DataFrame:
    path = out / JOB_DIR / PLAN
    if not path.is_file():
        return pd.DataFrame(columns=list(PLAN_COLUMNS))
    return _read_csv(path)


def _read_done(out: Path) -> dict[str, tuple[str, str]]:
    """``key -> (output, sha256)`` of every row of every part."""
    done: dict[str, tuple[str, str]] = {}
    d = out / JOB_DIR
    if not d.is_dir():
        return done
    for p in sorted(d.glob("part-*.csv")):
        for key, name, sha in _read_csv(p)[["key", "output", "sha256"]].itertuples(index=False):
            done[str(key)] = (str(name), str(sha))
    return done


def _still_there(out: Path, name: str, sha: str) -> bool:
    from medgen.batch._shard import path_sha256

    p = out / name
    return p.exists() and path_sha256(p) == sha


def _new_names(wanted: Sequence[str], taken: Iterable[str]) -> list[str]:
    """Distinct names for ``wanted`` (in order), beside the ``taken`` ones
    (:func:`~medgen._internal.paths.unique_output_names`: ``x.nii.gz``, ``x-2.nii.gz``, ...)."""
    from medgen._internal.paths import unique_output_names

    held_names = sorted(set(taken))
    # names already taken go first, under keys no input can have, so the new ones get the next
    held = [f"\x00taken:{n}" for n in held_names]
    keys = [*held, *(f"\x00new:{i}" for i in range(len(wanted)))]
    names = unique_output_names(keys, [*held_names, *wanted])
    return [names[k] for k in keys[len(held) :]]


def _say(message: str, progress: bool) -> None:
    """Beside the progress bar when there is one, else to the log (not both: the CLI logs to
    stderr too)."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        log.info(message)


# ---------------------------------------------------------------------------------- apply
def apply_model(
    run: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    kind: str | None = None,
    format: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_timeout: float = 5.0,
    shard_size: int = 16,
    self_ensemble: bool = False,
    retain: Sequence[str] = (),
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Apply a trained denoiser, super-resolver or translator to many images, resumably.

    Every input image (a NIfTI file, a DICOM file or series folder, or every row of a cohort
    manifest) gets one output in ``output``, in the input's format (or ``format``), marked
    DERIVED and naming the model, with only the allow-listed header fields (plus the
    ``retain`` groups; docs/privacy.md). The inputs are cut into shards of ``shard_size``
    that run on an executor (in this process, or Dask workers with ``workers`` /
    ``scheduler``); each output is the same bytes (NIfTI) whatever ran it.

    Nothing is written before every check has passed: the model folder is complete, ``output``
    is not, does not contain and does not lie inside an input (or ``run``), every manifest id
    makes a file name inside ``output``. Outputs never replace an input; two inputs named
    alike get ``x.nii.gz`` and ``x-2.nii.gz``.

    **Resume.** Rerunning into the same ``output`` skips the inputs already done (recorded with
    the sha256 of their output, which must still match) and does the rest under the names
    planned for them, so an interrupted run resumed gives the files of an uninterrupted one.
    New inputs extend the folder (``x-3.nii.gz`` beside earlier outputs); a rerun with another
    model, weights, kind, format, ``self_ensemble``, ``retain`` or device is refused, listing
    the differences.

    Args:
        run: a trained run folder (``medgen denoise|superres train``, a saved
            :class:`~medgen.generative.Translator`), or ``"pretrained:NAME"`` for a model
            shipped with medgen (``medgen pretrained`` lists them).
        inputs: image paths, DICOM folders and/or manifests (CSV/Parquet).
        output: the output folder (gets ``outputs.csv``; ``manifest.csv`` for manifest inputs).
        kind: ``"denoise"``, ``"superres"`` or ``"translate"`` (the run must hold that kind);
            default: whatever ``run`` holds.
        format: ``"nifti"`` or ``"dicom"`` (default: as each input).
        workers: run on an embedded Dask ``LocalCluster`` of this many processes (one thread
            and one torch thread each); needs ``pip install 'medgen[dask]'``.
        scheduler: run on an existing Dask cluster (``"tcp://host:8786"``); its workers must
            see ``run``, the inputs and ``output`` at the same paths.
        scheduler_timeout: seconds to wait for ``scheduler`` to answer.
        shard_size: images per task (the unit of work and of resume).
        self_ensemble: denoise/superres: average over the 8 rotations/flips (8x slower).
        retain: de-identification retain groups for DICOM outputs (docs/privacy.md).
        device: where the model runs (``"cpu"``, ``"cuda"``).
        progress: a tqdm bar over images (and the Dask dashboard's address).

    Returns:
        The path of ``outputs.csv`` (``input``, ``output``, ``image_id``, ``kind``, ``run``,
        ``sha256``: one row per image done in this folder, in the order planned).

    Raises:
        ConfigError: an unknown ``kind`` or ``format``; a run of another kind;
            ``self_ensemble`` for a translator; workers with scheduler.
        MedgenFileNotFoundError: an input or the run folder does not exist.
        OutputPathError: ``output`` is, holds or lies inside an input; a manifest id that would
            leave it.
        RunFolderError: ``output`` holds an apply with other arguments, or one of an earlier
            version; an interrupted run folder.
        MissingDependencyError: ``workers``/``scheduler`` without ``dask[distributed]``.
        MedgenRuntimeError: an unreachable scheduler; a write that failed (disk full): the
            finished outputs are kept, and rerunning resumes.
    """
    seq = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    return run_apply(
        kind,
        Path(run),
        [Path(p) for p in seq],
        Path(output),
        format=format,
        workers=workers,
        scheduler=scheduler,
        scheduler_timeout=scheduler_timeout,
        shard_size=shard_size,
        self_ensemble=self_ensemble,
        retain=tuple(retain),
        device=device,
        progress=progress,
        arg="output",
    )


def run_apply(
    kind: str | None,
    run: Path,
    inputs: list[Path],
    output: Path,
    *,
    format: str | None,
    workers: int | None,
    scheduler: str | None,
    scheduler_timeout: float,
    shard_size: int,
    self_ensemble: bool,
    retain: tuple[str, ...],
    device: str,
    progress: bool,
    arg: str,
) -> Path:
    """:func:`apply_model`; ``arg`` is how messages name the output (``"--output"`` on the CLI)."""
    from medgen._internal.deid import allowed_keywords
    from medgen._internal.files import write_table, write_text_atomic
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.runs import LOCK, run_lock
    from medgen.batch._executor import DaskExecutor, InProcessExecutor, open_executor

    # ---- everything is checked before anything is written
    allowed_keywords(retain)  # an unknown retain option fails before anything is read
    if format not in (None, "nifti", "dicom"):
        raise ConfigError(f"format must be nifti or dicom, not {format!r}.")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise MedgenValueError(f"apply: shard_size must be a positive integer, not {shard_size!r}.")
    if workers is not None and scheduler is not None:
        raise ConfigError(
            "apply: workers and scheduler are alternatives: workers=W starts a local cluster, "
            "scheduler=ADDRESS uses a running one; pass one of them."
        )
    if not inputs:
        raise MedgenValueError("apply: no inputs; pass image files, DICOM folders or a manifest.")
    from medgen.generative._pretrained import resolve_run

    run = resolve_run(run, kind=None if kind is None else APPLY_KINDS.get(kind))
    output = output.expanduser()
    kind, model = _load_model(kind, run, device)
    if self_ensemble and kind == "translate":
        raise ConfigError(
            "self_ensemble (--self-ensemble) averages a denoiser's or super-resolver's outputs "
            "over rotations and flips; a translator has no such option. Leave it out."
        )
    model = _prepared(model, self_ensemble)
    items, protected = collect_inputs(inputs, format)
    check_output_not_input(output, [run, *protected], what=arg)
    spec: dict[str, Any] = {
        "format": JOB_FORMAT,
        "arguments": {
            "kind": kind,
            "run": str(run.resolve()),
            "weights_sha256": _weights_sha256(run),
            "format": format,
            "self_ensemble": bool(self_ensemble),
            "retain": sorted(set(retain)),
            "device": str(device),
        },
    }
    _check_folder(output, spec, arg)
    keys = _keys(items)
    a = spec["arguments"]

    with ExitStack() as stack:
        executor: InProcessExecutor | DaskExecutor = open_executor(
            workers=workers, scheduler=scheduler, timeout=scheduler_timeout
        )
        stack.callback(executor.close)
        if executor.dashboard:
            _say(f"Dask dashboard: {executor.dashboard}", progress)
        stack.enter_context(run_lock(output, what=f"{kind} apply output"))
        _check_folder(output, spec, arg)  # again, under the lock
        derived_path = output / DERIVED_MANIFEST
        derived_old = (
            _read_table(derived_path, "derived manifest")
            if (derived_path.is_file() and any(it.row is not None for it in items))
            else None
        )
        if derived_old is not None and not {"image_id", "derived_from"} <= set(derived_old):
            raise ManifestError(
                f"{derived_path}: exists but was not written by medgen apply (no 'image_id' and "
                "'derived_from' columns); medgen never rewrites files it did not write. Choose "
                "another output folder."
            )
        job_dir = output / JOB_DIR
        if not (job_dir / JOB).is_file():
            created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            job_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(job_dir / JOB, json.dumps({**spec, "created": created}, indent=1))
        # ---- the plan: every input's output name and shard, fixed before any image is written
        plan = _read_plan(output)
        planned = dict(zip(plan["key"], plan.index, strict=True))
        new = [i for i, k in enumerate(keys) if k not in planned]
        if new:
            taken = {OUTPUTS, DERIVED_MANIFEST, LOCK, JOB_DIR}
            taken |= {e.name for e in output.iterdir()}
            taken |= set(plan["output"])
            names = _new_names([items[i].name for i in new], taken)
            first = int(pd.to_numeric(plan["shard"]).max()) + 1 if len(plan) else 0
            rows = [
                {
                    "key": keys[i],
                    "input": str(items[i].path),
                    "image_id": _image_id(items[i]),
                    "output": name,
                    "format": items[i].fmt,
                    "shard": first + j // shard_size,
                }
                for j, (i, name) in enumerate(zip(new, names, strict=True))
            ]
            plan = pd.concat([plan, pd.DataFrame(rows, dtype=object)], ignore_index=True)
            plan = plan.astype({"shard": str})
            write_table(plan, job_dir / PLAN, what="apply plan")
            planned = dict(zip(plan["key"], plan.index, strict=True))
        done = _read_done(output)
        todo: dict[int, list[dict[str, Any]]] = {}
        n_done = 0
        records = plan.to_dict("records")
        for i, key in enumerate(keys):
            p = records[planned[key]]
            if key in done and done[key][0] == p["output"] and _still_there(output, *done[key]):
                n_done += 1
                continue
            todo.setdefault(int(p["shard"]), []).append(
                {
                    "key": key,
                    "input": str(items[i].path),
                    "path": str(items[i].path),
                    "output": str(p["output"]),
                    "format": str(p["format"]),
                }
            )
        if n_done:
            _say(
                f"{output}: resuming: {n_done} of {len(keys)} inputs done already, "
                f"{len(keys) - n_done} to go",
                progress,
            )
        job = {"out_dir": str(output.resolve()), "arguments": a}
        if executor.kind == "in-process":
            cache_key = (a["kind"], a["run"], a["weights_sha256"], a["device"])
            _remember((*cache_key, a["self_ensemble"]), model)
        tasks = ((job, shard, rows) for shard, rows in sorted(todo.items()))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(keys), initial=n_done, unit="img", desc=kind, disable=not progress)
        try:
            for result in executor.map(apply_shard, tasks):
                bar.update(int(result["n"]))
                for r in result["rows"]:
                    done[r["key"]] = (r["output"], r["sha256"])
        except MedgenError:
            raise
        except OSError as err:
            finished = sum(1 for k in keys if k in _read_done(output))
            raise MedgenRuntimeError(
                f"apply: writing into {str(output)!r} failed ({err.strerror or err}: "
                f"{err.filename or ''}); the {finished} finished outputs of {len(keys)} are "
                "kept. Free space or fix the folder's permissions, then rerun the same command: "
                "it resumes."
            ) from err
        finally:
            bar.close()
        # ---- the tables: every image done in this folder, in the planned order
        table = pd.DataFrame(
            [
                {
                    "input": p["input"],
                    "output": p["output"],
                    "image_id": p["image_id"],
                    "kind": kind,
                    "run": a["run"],
                    "sha256": done[p["key"]][1],
                }
                for p in plan.to_dict("records")
                if p["key"] in done and done[p["key"]][0] == p["output"]
            ],
            columns=list(OUTPUT_COLUMNS),
        )
        write_table(table, output / OUTPUTS, what="outputs manifest")
        derived = []
        for it, key in zip(items, keys, strict=True):
            if it.row is not None and key in done:
                row = dict(it.row)
                row["image_path"] = str((output / done[key][0]).resolve())
                row["derived_from"] = str(it.path)
                derived.append(row)
        if derived:
            df = pd.DataFrame(derived)
            if derived_old is not None:
                # the newest output of an image stands for it; outputs.csv keeps all of them
                keep = ~derived_old["image_id"].astype(str).isin(df["image_id"].astype(str))
                df = pd.concat([derived_old[keep], df], ignore_index=True)
            write_table(df, derived_path, what="derived manifest")
    return output / OUTPUTS


def _read_table(path: Path, what: str) -> pd.DataFrame:
    from medgen._internal.files import read_table

    return read_table(path, what=what)
