"""``generate``: a synthetic dataset of exactly ``n`` marked images, sharded, seeded, resumable.

The driver (this module) checks everything, then runs the shards on an executor
(:mod:`medgen.batch._executor`; the work of a shard is :func:`medgen.batch._shard.run_shard`)
and assembles the manifest, provenance and dataset card. See docs/batch.md.

Folder (``out_dir``), a run folder of :mod:`medgen._internal.runs`::

    generate.json            the arguments (written first; a rerun must match them)
    shards/shard-00000/      the images of shard 0 (NIfTI files or DICOM series folders)
    shards/shard-00000.csv   its manifest part, written last: shard 0 is done
    shards/shard-00000.rejected.csv   its rejected near-copies (when any)
    manifest.csv, manifest.parquet    every image, in the cohort schema
    rejected.csv             every rejected draw (the memorisation gate's table)
    provenance.json, dataset_card.md, dataset_card.json
    run_complete.json        last
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medgen._internal.suggest import did_you_mean
from medgen.errors import (
    ConfigError,
    MedgenError,
    MedgenRuntimeError,
    MedgenValueError,
    OutputPathError,
    RunFolderError,
)

if TYPE_CHECKING:
    from medgen.generative.synthesis import Synthesizer

log = logging.getLogger(__name__)

__all__ = ["OWNED", "SPEC", "generate"]

#: the arguments file, written first
SPEC = "generate.json"
#: its format
SPEC_FORMAT = "medgen.batch.generate/1"
#: the files and folders a generation writes in its folder (anything else is refused)
OWNED = (
    SPEC,
    "shards/",
    "manifest.csv",
    "manifest.parquet",
    "rejected.csv",
    "provenance.json",
    "dataset_card.md",
    "dataset_card.json",
)
#: the completion marker's kind
KIND = "medgen.batch.generate"
WHAT = "synthetic dataset"
FORMATS = ("nifti", "dicom")


# ---------------------------------------------------------------------------------- arguments
def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise MedgenValueError(f"generate: {name} must be a positive integer, not {value!r}.")
    return int(value)


def _canonical(syn: Synthesizer, col: str, value: Any) -> Any:
    """``value`` as the model's vocabulary spells it (``"1"`` from a command line -> ``1``)."""
    return syn.vocabulary[col][syn._value_index(col, value)]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v == ""


def _where(syn: Synthesizer, where: Mapping[str, Any] | None) -> dict[str, Any]:
    spec = dict(where or {})
    syn._check_columns(list(spec), "generate(where=...)")
    return {col: _canonical(syn, col, v) for col, v in spec.items()}


def _balance(syn: Synthesizer, balance: Any, where: Mapping[str, Any]) -> list[str]:
    cols = [balance] if isinstance(balance, str) else [str(c) for c in balance]
    if not cols:
        raise ConfigError("generate: balance must name at least one condition, like ('label',).")
    if len(set(cols)) != len(cols):
        raise ConfigError(f"generate: balance names a condition twice: {cols}.")
    syn._check_columns(cols, "generate(balance=...)")
    both = [c for c in cols if c in where]
    if both:
        raise ConfigError(
            f"generate: {both} are fixed by where and balanced by balance; a condition is either "
            "fixed (where) or balanced (balance)."
        )
    return cols


def _read_conditions(syn: Synthesizer, conditions: Any) -> tuple[pd.DataFrame, str]:
    """The conditions table (one row per image; empty cells are drawn), canonical values, and
    where it came from."""
    from medgen._internal.files import read_table

    if isinstance(conditions, pd.DataFrame):
        df, source = conditions.reset_index(drop=True), "<DataFrame>"
    elif isinstance(conditions, str | os.PathLike):
        p = Path(conditions).expanduser()
        cols = read_table(p, what="conditions table").columns
        # every cell as text, so 01 stays 01 and 1 is not read back as 1.0
        df = read_table(p, what="conditions table", dtype={str(c): "string" for c in cols})
        source = str(p.resolve())
    else:
        raise MedgenValueError(
            "generate: conditions must be a DataFrame or the path of a table (CSV/Parquet) with "
            f"a row per image, not {type(conditions).__name__}."
        )
    if len(df) == 0:
        raise MedgenValueError(f"generate: the conditions table {source} has no rows.")
    unknown = [str(c) for c in df.columns if c not in syn.conditions]
    if unknown:
        raise MedgenValueError(
            f"generate: conditions table columns {unknown} are not conditions of this model; its "
            f"conditions are {list(syn.conditions)}.{did_you_mean(unknown[0], syn.conditions)} "
            "Keep only condition columns (empty cells are drawn)."
        )
    values = {
        str(col): [None if _missing(v) else _canonical(syn, str(col), v) for v in df[col].tolist()]
        for col in df.columns
    }
    return pd.DataFrame(values, dtype=object), source


def _reference(syn: Synthesizer, reference: Any) -> str:
    if reference is None:
        tm = syn.training_manifest
        if not tm or not Path(tm).is_file():
            raise MedgenValueError(
                "generate: the memorisation gate needs the model's training cohort, and this "
                f"model's training manifest ({tm!r}) is not readable; pass reference= (CLI "
                "--reference) the manifest it was trained on."
            )
        return str(Path(tm).resolve())
    if not isinstance(reference, str | os.PathLike):
        raise MedgenValueError(
            f"generate: reference must be the path of the training manifest, not "
            f"{type(reference).__name__}."
        )
    p = Path(reference).expanduser()
    if not p.is_file():
        from medgen.errors import MedgenFileNotFoundError

        raise MedgenFileNotFoundError(
            f"generate: reference {str(reference)!r} does not exist; pass the manifest the model "
            "was trained on."
        )
    return str(p.resolve())


def _evaluation(syn: Synthesizer, run: Path, evaluation: Any) -> dict[str, Any] | None:
    """The synthesis evaluation to put in the dataset card: ``evaluation`` (a ``medgen synth
    evaluate`` output folder or its ``evaluation.json``), else ``run/evaluation.json`` when it
    exists, else ``None``."""
    from medgen._internal.files import read_table

    if evaluation is None:
        path = run / "evaluation.json"
        if not path.is_file():
            return None
    else:
        path = Path(evaluation).expanduser()
        if path.is_dir():
            path = path / "evaluation.json"
        if not path.is_file():
            from medgen.errors import MedgenFileNotFoundError

            raise MedgenFileNotFoundError(
                f"generate: evaluation {str(evaluation)!r} holds no evaluation.json; pass the "
                "output folder of `medgen synth evaluate`."
            )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise MedgenValueError(f"generate: {path} is not readable JSON ({err}).") from err
    if info.get("weights_sha256") not in (None, syn.weights_sha256):
        raise MedgenValueError(
            f"generate: the evaluation {path} measured another model ({info.get('model_id')}), "
            f"not {syn.model_id}; evaluate this model with `medgen synth evaluate` or leave "
            "evaluation out."
        )
    tables: dict[str, Any] = {}
    for name in ("quality", "fidelity", "tstr", "near_copies"):
        csv = path.parent / f"{name}.csv"
        if csv.is_file():
            tables[name] = json.loads(
                read_table(csv, what=f"{name} table").to_json(orient="records")
            )
    return {"path": str(path.resolve()), "provenance": info, "tables": tables}


def _spec(
    syn: Synthesizer,
    *,
    run: Path,
    n: int,
    seed: int,
    where: dict[str, Any],
    balance: list[str] | None,
    table: pd.DataFrame | None,
    table_source: str | None,
    format: str,
    shard_size: int,
    batch_size: int,
    reference: str,
    quantile: float,
    max_draws: int,
    guidance_scale: float | None,
    num_inference_steps: int | None,
    device: str,
    split: str,
) -> dict[str, Any]:
    from medgen._internal.provenance import file_sha256

    ldm = syn.model == "ldm"
    table_info = None
    if table is not None:
        text = table.to_csv(index=False).encode()
        table_info = {
            "sha256": hashlib.sha256(text).hexdigest(),
            "rows": len(table),
            "columns": list(table.columns),
        }
    arguments = {
        "weights_sha256": syn.weights_sha256,
        "n": n,
        "seed": seed,
        "where": where or None,
        "balance": balance,
        "conditions": table_info,
        "format": format,
        "split": split,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "reference_sha256": file_sha256(reference),
        "quantile": quantile,
        "max_draws": max_draws,
        "guidance_scale": (
            float(syn.options["guidance_scale"] if guidance_scale is None else guidance_scale)
            if ldm
            else None
        ),
        "num_inference_steps": (
            int(num_inference_steps or syn.options["num_inference_steps"]) if ldm else None
        ),
        "device": device,
    }
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode())
    n_shards = math.ceil(n / shard_size)
    return {
        "format": SPEC_FORMAT,
        "dataset_id": digest.hexdigest()[:10],
        "arguments": arguments,
        "paths": {"run": str(run.resolve()), "reference": reference, "conditions": table_source},
        "model": {
            "model_id": syn.model_id,
            "model": syn.model,
            "conditions": list(syn.conditions),
            "vocabulary": {k: list(v) for k, v in syn.vocabulary.items()},
        },
        "n_shards": n_shards,
        "shard_width": max(5, len(str(n_shards - 1))),
        "id_width": max(6, len(str(n - 1))),
    }


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = dict(old.get("arguments") or {}), dict(new["arguments"])
    return [
        f"{key}: {a.get(key)!r} in the folder, {b.get(key)!r} now"
        for key in sorted(set(a) | set(b))
        if json.dumps(a.get(key), sort_keys=True, default=str)
        != json.dumps(b.get(key), sort_keys=True, default=str)
    ]


def _read_spec(out: Path) -> dict[str, Any] | None:
    path = out / SPEC
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(
            f"{WHAT} folder {str(out)!r}: {SPEC} is unreadable ({err}); generate into a new folder."
        ) from err
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise RunFolderError(
            f"{WHAT} folder {str(out)!r}: {SPEC} was not written by this version of "
            "medgen.batch.generate; generate into a new folder."
        )
    return spec


def _check_folder(out: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """Read-only checks of ``out`` before anything starts: a file, foreign files, a generation
    with other arguments, an unwritable folder. Returns the folder's spec (or ``None``)."""
    from medgen._internal.runs import refuse_foreign_files, run_state

    if out.exists() and not out.is_dir():
        raise OutputPathError(f"generate: out_dir {str(out)!r} is a file; pass a folder.")
    refuse_foreign_files(out, owned=OWNED, what=WHAT)
    old = _read_spec(out)
    if old is None and run_state(out) != "empty":
        raise RunFolderError(
            f"{WHAT} folder {str(out)!r} holds files of a generation but no {SPEC}, so it cannot "
            "be resumed safely; generate into a new folder."
        )
    if old is not None:
        diff = _differences(old, spec)
        if diff:
            raise RunFolderError(
                f"{WHAT} folder {str(out)!r} holds a generation with other arguments ("
                + "; ".join(diff)
                + "). Rerun with the folder's arguments to resume or finish it, or generate "
                "into a new folder."
            )
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"generate: out_dir {str(out)!r} cannot be written ({str(probe)!r} is not writable: "
            "permission denied). Choose a folder you can write to, or fix its permissions "
            "(chmod u+w)."
        )
    return old


def _job(
    syn: Synthesizer,
    spec: dict[str, Any],
    out: Path,
    cells: list[dict[str, Any]],
    table: pd.DataFrame | None,
) -> dict[str, Any]:
    a = spec["arguments"]
    return {
        "out_dir": str(out.resolve()),
        "run": spec["paths"]["run"],
        "reference": spec["paths"]["reference"],
        "weights_sha256": a["weights_sha256"],
        "model_id": syn.model_id,
        "device": a["device"],
        "seed": a["seed"],
        "n": a["n"],
        "shard_size": a["shard_size"],
        "batch_size": a["batch_size"],
        "quantile": a["quantile"],
        "max_draws": a["max_draws"],
        "guidance_scale": a["guidance_scale"],
        "num_inference_steps": a["num_inference_steps"],
        "format": a["format"],
        "split": a["split"],
        "where": a["where"],
        "cells": cells,
        "table_columns": None if table is None else list(table.columns),
        "conditions": list(syn.conditions),
        "spatial_dims": int(syn.options["spatial_dims"]),
        "spacing": [float(s) for s in syn.spacing],
        "dataset_id": spec["dataset_id"],
        "id_width": spec["id_width"],
        "shard_width": spec["shard_width"],
    }


def _part(out: Path, job: dict[str, Any], shard: int) -> Path:
    from medgen.batch._shard import SHARDS, shard_name

    return out / SHARDS / f"{shard_name(job, shard)}.csv"


def _say(message: str, progress: bool) -> None:
    log.info(message)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------- generate
def generate(
    run_dir: str | os.PathLike[str],
    n: int | None,
    out_dir: str | os.PathLike[str],
    *,
    where: Mapping[str, Any] | None = None,
    balance: str | Sequence[str] | None = None,
    conditions: pd.DataFrame | str | os.PathLike[str] | None = None,
    format: str = "nifti",
    shard_size: int = 256,
    batch_size: int = 64,
    workers: int | None = None,
    scheduler: str | None = None,
    scheduler_timeout: float = 5.0,
    seed: int = 0,
    reference: str | os.PathLike[str] | None = None,
    quantile: float = 0.01,
    max_draws: int | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    split: str = "",
    device: str = "cpu",
    evaluation: str | os.PathLike[str] | None = None,
    check: bool = False,
    progress: bool = True,
) -> Path:
    """Generate a synthetic dataset of exactly ``n`` images from a trained synthesizer.

    Item ``i`` (``0 <= i < n``) gets its conditions and its latent noise from ``(seed, i)``
    alone (:meth:`~medgen.generative.synthesis.Synthesizer.sample_items`); the items are cut
    into shards of ``shard_size``, and a shard's items are always sampled together in batches
    of ``batch_size``, so every file and every byte of image data is the same whatever the
    executor, the number of workers and the number of interruptions (docs/batch.md). Every
    image passes the memorisation gate: a near-copy of a training image is replaced by the
    item's next draw (same conditions, noise of ``(seed, i, r)``), counted and reported.

    Conditions (each item's; conditions not given are drawn from the training combinations
    matching the given ones, in proportion to their counts):

    - ``where={"label": 1, "sex": "F"}``: the same for every item;
    - ``balance=("label", "sex")``: every combination of these conditions' values in turn
      (item ``i`` gets combination ``i mod C``, so the counts differ by at most one); with
      ``where`` for other conditions;
    - ``conditions=``: a table (DataFrame or CSV/Parquet path) with a row per item and a
      column per condition; empty cells are drawn. ``n=None``: one image per row.

    Args:
        run_dir: a trained synthesizer run (``medgen synth train``).
        n: the number of images (``None`` with ``conditions``: its rows).
        out_dir: the dataset folder: new or empty, or one this same call was writing (it
            resumes: finished shards are kept, unfinished ones redone); another generation's
            folder is refused, listing the arguments that differ.
        where, balance, conditions: see above.
        format: ``"nifti"`` (``.nii.gz``) or ``"dicom"`` (a series folder per image:
            ``SyntheticData = YES``, ImageType ``DERIVED\\SECONDARY\\SYNTHETIC``, fresh UIDs,
            PatientName and PatientID ``SYNTHETIC^<item>``).
        shard_size: items per shard (the unit of work, of resume and of a manifest part).
        batch_size: items per forward pass (part of the arguments: it can change the last bits).
        workers: run on an embedded Dask ``LocalCluster`` of this many processes (one thread
            and one torch thread each); needs ``pip install 'medgen[dask]'``.
        scheduler: run on an existing Dask cluster (``"tcp://host:8786"``); its workers must
            see ``run_dir``, the reference cohort and ``out_dir`` at the same paths.
        scheduler_timeout: seconds to wait for ``scheduler`` to answer.
        seed: a non-negative integer: all randomness.
        reference: the training cohort's manifest for the memorisation gate (default: the
            manifest the model was trained from).
        quantile: the gate's held-out quantile (docs/synthesis.md).
        max_draws: draws per item before giving up on the gate (default
            :data:`~medgen.generative.synthesis.MAX_DRAWS`).
        guidance_scale, num_inference_steps: ``"ldm"`` sampling (defaults: the model's).
        split: the ``split`` of every row (``""`` or ``"train"``).
        device: the device of the model (``"cpu"``, ``"cuda"``).
        evaluation: a ``medgen synth evaluate`` output folder whose results go into the
            dataset card (default: ``run_dir/evaluation.json`` when it exists).
        check: verify the finished folder (:func:`check_dataset`) and raise on any problem.
        progress: a tqdm bar over items (and the Dask dashboard's address).

    Returns:
        The path of ``manifest.csv`` (cohort schema: ``image_id``, ``image_path``,
        ``subject_id``, ``split``, ``source`` = ``synthetic``, the conditions, ``seed``,
        ``item``, ``draw``, ``model_id``, ``sha256``); ``manifest.parquet`` beside it when
        pyarrow is installed.

    Raises:
        MedgenValueError: ``n`` not positive, an unknown condition or value, a bad format,
            split or quantile, a table of another length, an unreadable training manifest.
        ConfigError: where/balance/conditions combined wrongly; workers with scheduler.
        OutputPathError: ``out_dir`` is, holds or lies inside an input, or is not writable.
        RunFolderError: ``out_dir`` holds other files or another generation.
        MissingDependencyError: ``workers``/``scheduler`` without ``dask[distributed]``.
        MedgenRuntimeError: an unreachable scheduler; a write that failed (disk full): the
            finished shards are kept, and rerunning resumes.
    """
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.runs import prepare_run_folder, run_lock, run_state
    from medgen.batch._executor import DaskExecutor, InProcessExecutor, open_executor
    from medgen.batch._shard import SHARDS, remember, run_shard
    from medgen.generative.synthesis import MAX_DRAWS, Synthesizer

    # ---- everything is checked before anything is written
    if n is not None:
        n = _positive(n, "n (the number of images)")
    if format not in FORMATS:
        raise MedgenValueError(
            f"generate: format must be 'nifti' or 'dicom', not {format!r}."
            f"{did_you_mean(str(format), FORMATS)}"
        )
    if split not in ("", "train"):
        raise MedgenValueError(
            f"generate: split must be '' (unassigned) or 'train', not {split!r}."
        )
    shard_size = _positive(shard_size, "shard_size")
    batch_size = _positive(batch_size, "batch_size")
    max_draws = _positive(MAX_DRAWS if max_draws is None else max_draws, "max_draws")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MedgenValueError(f"generate: seed must be a non-negative integer, not {seed!r}.")
    if not 0.0 < float(quantile) < 1.0:
        raise MedgenValueError(f"generate: quantile must be in (0, 1), not {quantile!r}.")
    if conditions is not None and (where is not None or balance is not None):
        raise ConfigError(
            "generate: conditions= gives every item's conditions; it cannot be combined with "
            "where= or balance= (put those values in the table)."
        )
    if workers is not None and scheduler is not None:
        raise ConfigError(
            "generate: workers and scheduler are alternatives: workers=W starts a local "
            "cluster, scheduler=ADDRESS uses a running one; pass one of them."
        )
    run = Path(run_dir).expanduser()
    out = Path(out_dir).expanduser()
    inputs: list[Any] = [run]
    if isinstance(conditions, str | os.PathLike):
        inputs.append(conditions)
    if reference is not None:
        inputs.append(reference)
    check_output_not_input(out, inputs, what="generate: out_dir")
    syn = Synthesizer.load(run, device=device)
    ref = _reference(syn, reference)
    check_output_not_input(out, [ref], what="generate: out_dir")
    where_c = _where(syn, where)
    cols = _balance(syn, balance, where_c) if balance is not None else None
    table, table_source = (None, None)
    if conditions is not None:
        table, table_source = _read_conditions(syn, conditions)
        if n is None:
            n = len(table)
        elif n != len(table):
            raise MedgenValueError(
                f"generate: n={n} but the conditions table has {len(table)} rows; pass n=None "
                "(one image per row) or a table of n rows."
            )
    if n is None:
        raise MedgenValueError("generate: n must be a positive integer number of images, not None.")
    cells: list[dict[str, Any]] = []
    if cols:
        cells = [
            dict(zip(cols, combo, strict=True))
            for combo in itertools.product(*(syn.vocabulary[c] for c in cols))
        ]
    eval_info = _evaluation(syn, run, evaluation)
    spec = _spec(
        syn,
        run=run,
        n=n,
        seed=int(seed),
        where=where_c,
        balance=cols,
        table=table,
        table_source=table_source,
        format=format,
        shard_size=shard_size,
        batch_size=batch_size,
        reference=ref,
        quantile=float(quantile),
        max_draws=max_draws,
        guidance_scale=guidance_scale,
        num_inference_steps=num_inference_steps,
        device=str(syn.device.type),
        split=split,
    )
    job = _job(syn, spec, out, cells, table)
    n_shards = int(spec["n_shards"])
    old = _check_folder(out, spec)
    if old is not None and _finished(out, job, n_shards):
        _say(f"{out}: the dataset is complete already ({n} images)", progress)
        if check:
            _raise_problems(out)
        return out / "manifest.csv"

    with ExitStack() as stack:
        executor: InProcessExecutor | DaskExecutor = open_executor(
            workers=workers, scheduler=scheduler, timeout=scheduler_timeout
        )
        stack.callback(executor.close)
        if executor.dashboard:
            _say(f"Dask dashboard: {executor.dashboard}", progress)
        try:
            stack.enter_context(run_lock(out, what=WHAT, owned=OWNED))
        except PermissionError as err:
            raise OutputPathError(
                f"generate: out_dir {str(out)!r} cannot be written ({err.strerror}); choose a "
                "folder you can write to, or fix its permissions."
            ) from err
        _check_folder(out, spec)  # again, under the lock
        state = run_state(out)
        prepare_run_folder(
            out,
            owned=OWNED,
            resume=state != "empty",
            what=WHAT,
            resume_hint="the same arguments",
            overwrite_hint="a new folder",
        )
        from medgen._internal.files import write_text_atomic

        if not (out / SPEC).is_file():
            created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            write_text_atomic(out / SPEC, json.dumps({**spec, "created": created}, indent=1))
        (out / SHARDS).mkdir(exist_ok=True)
        pending = [k for k in range(n_shards) if not _part(out, job, k).is_file()]
        done_items = n - sum(_shard_len(job, k) for k in pending)
        if state != "empty":
            _say(
                f"{out}: resuming: {n_shards - len(pending)} of {n_shards} shards done, "
                f"{len(pending)} to go",
                progress,
            )
        if executor.kind == "in-process":
            remember(syn, job["run"], job["device"])
        # a generator: the executors take tasks as they go, so memory stays flat in n
        tasks = ((job, k, None if table is None else _rows(table, job, k)) for k in pending)
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done_items, unit="img", desc="generate", disable=not progress)
        rejected = 0
        try:
            for result in executor.map(run_shard, tasks):
                bar.update(int(result["n"]))
                rejected += int(result["rejected"])
                bar.set_postfix(rejected=rejected)
        except MedgenError:
            raise
        except OSError as err:
            finished = sum(_part(out, job, k).is_file() for k in range(n_shards))
            raise MedgenRuntimeError(
                f"generate: writing into {str(out)!r} failed ({err.strerror or err}: "
                f"{err.filename or ''}); the {finished} finished shards of {n_shards} are kept. "
                "Free space or fix the folder's permissions, then rerun the same command: it "
                "resumes."
            ) from err
        finally:
            bar.close()
        executor_info = executor.describe()
        from medgen.batch._card import finalize

        manifest = finalize(
            out,
            syn,
            spec,
            job,
            cells=cells,
            table=table,
            executor=executor_info,
            evaluation=eval_info,
            resumed=state != "empty",
        )
    if check:
        _raise_problems(out)
    return manifest


def _shard_len(job: dict[str, Any], shard: int) -> int:
    from medgen.batch._shard import shard_items

    return len(shard_items(job, shard))


def _rows(table: pd.DataFrame, job: dict[str, Any], shard: int) -> list[dict[str, Any]]:
    from medgen.batch._shard import shard_items

    r = shard_items(job, shard)
    return [
        {str(k): v for k, v in row.items()}
        for row in table.iloc[r.start : r.stop].to_dict("records")
    ]


def _finished(out: Path, job: dict[str, Any], n_shards: int) -> bool:
    """A complete folder whose marker's files are unchanged and whose parts are all there."""
    from medgen._internal.runs import check_complete, run_state

    if run_state(out) != "complete":
        return False
    try:
        check_complete(out, what=WHAT)
    except RunFolderError:
        return False
    return all(_part(out, job, k).is_file() for k in range(n_shards))


def _raise_problems(out: Path) -> None:
    from medgen.batch._check import check_dataset

    report = check_dataset(out)
    if not report.ok:
        raise MedgenValueError(report.message())
