"""The classifier run folder: its files, who may write it, checkpoints and resume.

A classifier run folder follows :mod:`medgen._internal.runs` (STYLE.md item 14): the writer
(``train(out_dir=...)`` or :meth:`Classifier.save`) holds the folder's lock, refuses a finished,
interrupted or foreign folder unless told to replace (``overwrite``) or continue (``resume``) it,
and writes :data:`~medgen._internal.runs.COMPLETE` last, listing the SHA-256 of the weights and the
config. Files, all written to a temporary name and renamed:

- ``config.json``: config, temperature, metrics, provenance (``"format": "medgen.classify/2"``);
- ``model.safetensors``: the weights of the best epoch;
- ``metrics.csv``: one row per epoch, rewritten after each epoch;
- ``checkpoint.pt``: after each epoch, the network, the AdamW state, the best epoch's weights,
  early-stopping state, the history and the rows each epoch visited (training runs only; read
  with ``torch.load(weights_only=True)``);
- ``train_state.json``: the resolved options and data hash a resume must match, the epoch
  reached and the history (readable copy);
- ``run_complete.json``: the completion marker.

Folders written by medgen before run folders had a lifecycle hold ``config.json`` (format
``medgen.classify/1``) and ``model.safetensors`` but no marker; they are *legacy* folders: they
load, and a writer replaces them only with ``overwrite``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medgen._internal.files import atomic_path, write_text_atomic
from medgen._internal.runs import COMPLETE, prepare_run_folder
from medgen.errors import ConfigError, RunFolderError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.json"
#: every file a classifier run writes (anything else in the folder is never deleted)
OWNED = (CONFIG, WEIGHTS, METRICS, CHECKPOINT, TRAIN_STATE)
#: the files the completion marker vouches for
RESULT_FILES = (WEIGHTS, CONFIG)
#: ``kind`` in the completion marker
KIND = "medgen.classify"
#: ``format`` in ``config.json`` (``/1``: written before completion markers existed)
FORMAT = "medgen.classify/2"
LEGACY_FORMATS = ("medgen.classify/1",)
CHECKPOINT_FORMAT = "medgen.classify.checkpoint/1"
#: options a resumed run may change (``epochs``: to train longer; the LR is constant)
RESUME_FREE = ("epochs", "time_budget_s", "device")
#: options added after runs were first saved, with the value that reproduces a stored run that
#: lacks them (the behaviour of its time) when it is resumed
ADDED_OPTIONS: dict[str, Any] = {"grad_clip": 0.0}

RESUME_HINT = "--resume (Python: resume=True)"
OVERWRITE_HINT = "--overwrite (Python: overwrite=True)"


def _config_format(folder: Path) -> str | None:
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(meta.get("format")) if isinstance(meta, dict) else None


def is_legacy(folder: Path) -> bool:
    """A classifier saved by a medgen without run folders: ``config.json`` (not format
    ``medgen.classify/2``) and ``model.safetensors``, no marker, no training state."""
    return (
        not (folder / COMPLETE).exists()
        and (folder / CONFIG).is_file()
        and (folder / WEIGHTS).is_file()
        and not (folder / CHECKPOINT).exists()
        and not (folder / TRAIN_STATE).exists()
        and _config_format(folder) != FORMAT
    )


def prepare(
    folder: Path,
    *,
    resume: bool,
    overwrite: bool,
    what: str,
    resume_hint: str = RESUME_HINT,
    overwrite_hint: str = OVERWRITE_HINT,
) -> str:
    """:func:`~medgen._internal.runs.prepare_run_folder` for a classifier folder (call it inside
    the folder's lock), with clearer refusals for a legacy folder and for a folder that holds no
    training state to resume."""
    if folder.is_dir() and not overwrite and is_legacy(folder):
        raise RunFolderError(
            f"{what} folder {str(folder)!r} holds a classifier saved by an older medgen (no "
            f"{COMPLETE}, no {TRAIN_STATE}); it cannot be resumed. Choose a new folder, or "
            f"pass {overwrite_hint} to replace it."
        )
    return prepare_run_folder(
        folder,
        owned=OWNED,
        resume=resume,
        overwrite=overwrite,
        what=what,
        resume_hint=resume_hint,
        overwrite_hint=overwrite_hint,
        resume_needs=TRAIN_STATE,
    )


@contextmanager
def finished_kept_on_failure(folder: Path, *, resume: bool) -> Iterator[None]:
    """Around preparing and running a resume of ``folder``: when the folder held a finished run
    and the block fails before training writes a new checkpoint (a refused option, unreadable
    data), put back the completion marker that preparation removed. The run's files are then
    exactly those the marker vouches for, so the finished run stays finished."""
    marker = folder / COMPLETE
    if not resume or not marker.is_file():
        yield
        return
    text = marker.read_text(encoding="utf-8")
    ckpt = folder / CHECKPOINT
    before = ckpt.stat().st_ino if ckpt.exists() else None
    try:
        yield
    except BaseException:
        after = ckpt.stat().st_ino if ckpt.exists() else None
        if after == before and not marker.exists():
            write_text_atomic(marker, text)
        raise


# ---------------------------------------------------------------------------------------------
# training state


def jsonable(obj: Any) -> Any:
    """``obj`` as strict JSON values (NaN and infinities become ``None``; tuples lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy / torch scalars
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_train_state(folder: Path) -> dict[str, Any] | None:
    """``train_state.json`` of ``folder``, or ``None`` when there is none."""
    path = folder / TRAIN_STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError("no 'config' object")
    except (OSError, ValueError) as err:
        raise RunFolderError(
            f"{path}: the training state is unreadable ({err}); the run cannot be resumed. Pass "
            f"{OVERWRITE_HINT} to train again, or choose a new folder."
        ) from err
    return state


def write_train_state(
    folder: Path,
    *,
    config: Mapping[str, Any],
    run_info: Mapping[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
) -> None:
    state = {
        "format": "medgen.classify.train_state/1",
        "epoch": epoch,
        "config": jsonable(config),
        "run_info": jsonable(run_info),
        "history": jsonable(history),
    }
    write_text_atomic(folder / TRAIN_STATE, json.dumps(state, indent=1))


def check_resumable(
    stored: Mapping[str, Any],
    *,
    config: Mapping[str, Any],
    run_info: Mapping[str, Any],
    folder: Path,
) -> None:
    """Refuse a resume whose options (other than :data:`RESUME_FREE`) or data differ from the
    stored ones, naming each difference with both values."""
    now = jsonable({k: v for k, v in config.items() if k not in RESUME_FREE})
    old = {**ADDED_OPTIONS, **dict(stored.get("config", {}))}
    diffs = [
        f"{k} (stored {old.get(k)!r}, now {now.get(k)!r})"
        for k in sorted(set(now) | (set(old) - set(RESUME_FREE)))
        if old.get(k) != now.get(k)
    ]
    info_now = jsonable(run_info)
    info_old = dict(stored.get("run_info", {}))
    for k in sorted(set(info_now) | set(info_old)):
        if info_old.get(k) != info_now.get(k):
            if k == "manifest_sha256":
                diffs.append("the training data (manifest SHA-256 differs)")
            else:
                diffs.append(f"{k} (stored {info_old.get(k)!r}, now {info_now.get(k)!r})")
    if diffs:
        raise ConfigError(
            f"cannot resume the classifier run in {str(folder)!r}: it was started with other "
            f"options or data; differs in {'; '.join(diffs)}. Resume with the run's options "
            f"(see {TRAIN_STATE}), or pass {OVERWRITE_HINT} to start again."
        )


def save_checkpoint(folder: Path, ckpt: Mapping[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically (``torch.save`` of tensors and plain values only)."""
    import torch

    with atomic_path(folder / CHECKPOINT) as tmp:
        torch.save(dict(ckpt), tmp)


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """``checkpoint.pt`` of ``folder`` read with ``weights_only=True`` (CPU), or ``None``."""
    import torch

    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types; its advice (weights_only=False) is unsafe
        raise RunFolderError(
            f"{path}: cannot read the checkpoint ({type(err).__name__}); it is corrupt, truncated "
            f"or not a medgen checkpoint. Pass {OVERWRITE_HINT} to train again, or choose a new "
            "folder."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunFolderError(
            f"{path}: not a medgen classifier checkpoint; the run cannot be resumed. Pass "
            f"{OVERWRITE_HINT} to train again, or choose a new folder."
        )
    return ckpt
