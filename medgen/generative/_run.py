"""The run folders of generative training and saved models: their files and their lifecycle.

Every writer of a generative folder follows :mod:`medgen._internal.runs` (STYLE.md item 14):
it holds the folder's lock (:func:`~medgen._internal.runs.run_lock`, with ``owned=``
:data:`OWNED`, so a folder of foreign files is refused before the lock file is made in it and
is left exactly as it was) for the whole write, calls
:func:`prepare_training` / :func:`prepare_save` before it writes anything (a finished folder is
reused only with ``overwrite`` or, for training, ``resume``; an interrupted one only with
``resume`` or ``overwrite``; a folder holding files medgen did not write is refused), and writes
:data:`~medgen._internal.runs.COMPLETE` last, listing the SHA-256 of what a loader needs.
Loaders call :func:`check_loadable`.

Files, each written to a temporary name and renamed:

- ``checkpoint.pt``, ``train_state.json``, ``metrics.csv``: the engine's, after every epoch;
- ``model.safetensors`` then ``config.json``: the trained model (``model.pt``: earlier versions);
- ``run_complete.json``: the completion marker, last.

Folders written before run folders had a lifecycle (``config.json`` + ``model.safetensors`` or
``model.pt``, no marker) are *legacy* folders: they load, unless a later run wrote its training
state beside them (a mixed folder), and a writer replaces them only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from medgen._internal.runs import (
    COMPLETE,
    check_complete,
    check_resumable,
    prepare_run_folder,
    run_state,
)
from medgen.errors import RunFolderError

CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.json"
METRICS = "metrics.csv"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
#: the weights file of restoration folders saved by earlier versions (a state dict)
LEGACY_WEIGHTS = "model.pt"
#: the engine's files (written at every checkpoint)
ENGINE_FILES = (CHECKPOINT, TRAIN_STATE, METRICS)
#: the files of a saved model
MODEL_FILES = (WEIGHTS, CONFIG, LEGACY_WEIGHTS)
#: every file a generative run writes; anything else in the folder is never deleted
OWNED = (*ENGINE_FILES, *MODEL_FILES)
#: ``format`` of the ``train_state.json`` the engine writes since run folders have a lifecycle
#: (a ``train_state.json`` without it was written by an earlier version)
TRAIN_STATE_FORMAT = "medgen.generative.train_state/2"
#: ``kind`` of the completion marker of a run of :func:`~medgen.generative.fit_objective` alone
ENGINE_KIND = "medgen.generative.engine"

RESUME_HINT = "--resume (Python: resume=True)"
OVERWRITE_HINT = "--overwrite (Python: overwrite=True)"

Legacy = Literal["legacy", "mixed"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def legacy_state(folder: str | os.PathLike[str]) -> Legacy | None:
    """``"legacy"``: a model folder of an earlier version (``config.json`` + weights, no marker,
    no training state of a newer run); ``"mixed"``: such a folder beside the training state of
    another run; ``None``: neither (a folder with a marker, or without a saved model).

    In a finished run of an earlier version, ``config.json`` was written after the last
    checkpoint, so its ``steps_trained`` and ``history`` equal those of ``train_state.json``; a
    later run writing into the folder changes them (and writes :data:`TRAIN_STATE_FORMAT`).
    """
    d = Path(folder).expanduser()
    if (d / COMPLETE).exists() or not (d / CONFIG).is_file():
        return None
    if not ((d / WEIGHTS).is_file() or (d / LEGACY_WEIGHTS).is_file()):
        return None
    if not (d / TRAIN_STATE).exists():
        return "legacy"
    state = _read_json(d / TRAIN_STATE)
    meta = _read_json(d / CONFIG)
    if not isinstance(state, dict) or not isinstance(meta, dict):
        return "mixed"
    same = state.get("step") == meta.get("steps_trained") and state.get("history") == meta.get(
        "history"
    )
    if not same:
        return "mixed"
    # written by this version: a run whose marker was removed (it is being trained further)
    return None if state.get("format") == TRAIN_STATE_FORMAT else "legacy"


def _mixed_error(d: Path, what: str) -> RunFolderError:
    return RunFolderError(
        f"{what} folder {str(d)!r} is mixed: its {CONFIG} and weights belong to an earlier run "
        f"than its {TRAIN_STATE} (a later training was started in the folder and did not "
        f"finish). Finish that training with {RESUME_HINT}, start again with {OVERWRITE_HINT}, "
        "or choose a new folder."
    )


def check_training(
    folder: str | os.PathLike[str], *, resume: bool, overwrite: bool, what: str
) -> None:
    """The refusals of :func:`prepare_training` that are clearer than the generic ones, without
    changing anything (a caller that checks a resume first calls this before)."""
    d = Path(folder).expanduser()
    if d.is_dir() and not overwrite:
        legacy = legacy_state(d)
        if legacy == "legacy" and not resume:
            raise RunFolderError(
                f"{what} folder {str(d)!r} holds a model saved by an earlier medgen (no "
                f"{COMPLETE}). Choose a new folder, pass {OVERWRITE_HINT} to replace it, or "
                f"{RESUME_HINT} to train it longer (when it holds its {CHECKPOINT})."
            )
        if resume:
            check_resumable(d, resume_needs=TRAIN_STATE, what=what, overwrite_hint=OVERWRITE_HINT)


def prepare_training(
    folder: str | os.PathLike[str], *, resume: bool, overwrite: bool, what: str
) -> str:
    """:func:`~medgen._internal.runs.prepare_run_folder` for a training run (call it inside the
    folder's lock, after a resume was checked and before anything is written), with clearer
    refusals for a legacy folder and for a folder without training state to resume."""
    d = Path(folder).expanduser()
    check_training(d, resume=resume, overwrite=overwrite, what=what)
    return prepare_run_folder(
        d,
        owned=OWNED,
        resume=resume,
        overwrite=overwrite,
        what=what,
        resume_hint=RESUME_HINT,
        overwrite_hint=OVERWRITE_HINT,
    )


def prepare_save(folder: str | os.PathLike[str], *, overwrite: bool, what: str) -> str:
    """Check that a model may be saved into ``folder`` (inside its lock): new or empty, or
    ``overwrite`` (a previous model or run there is deleted, nothing else)."""
    d = Path(folder).expanduser()
    hint = "overwrite=True"
    if not overwrite and run_state(d) != "empty":
        foreign = [p.name for p in sorted(d.iterdir()) if p.name not in (*OWNED, COMPLETE)]
        if not [n for n in foreign if not n.startswith(".")]:
            raise RunFolderError(
                f"{what} folder {str(d)!r} already holds a model or training run. Save into a "
                f"new or empty folder, or pass {hint} to replace it."
            )
    return prepare_run_folder(
        d, owned=OWNED, overwrite=overwrite, what=what, resume_hint="", overwrite_hint=hint
    )


def check_loadable(
    folder: str | os.PathLike[str], *, what: str, missing: str
) -> dict[str, Any] | None:
    """Refuse to load from an interrupted or mixed folder; return the completion marker
    (``None`` for a legacy folder).

    Args:
        folder: the model or run folder.
        what: the kind of folder, for messages.
        missing: the message of a folder that holds no model at all (``MedgenFileNotFoundError``).

    Raises:
        MedgenFileNotFoundError: the folder does not exist or holds none of a run's files.
        RunFolderError: an interrupted run (no marker), a mixed folder, files changed after the
            run finished.
    """
    from medgen.errors import MedgenFileNotFoundError

    d = Path(folder).expanduser()
    if (d / COMPLETE).is_file():
        return check_complete(
            d, what=what, resume_hint=f"{RESUME_HINT}, start again with {OVERWRITE_HINT}"
        )
    if not d.is_dir() or not any((d / name).exists() for name in OWNED):
        raise MedgenFileNotFoundError(missing)
    if not ((d / TRAIN_STATE).exists() or (d / CHECKPOINT).exists()):
        # no training state: a model of an earlier version, or a damaged one (the reader names
        # the missing or corrupt file)
        return None
    legacy = legacy_state(d)
    if legacy == "legacy":
        return None
    if legacy == "mixed":
        raise _mixed_error(d, what)
    return check_complete(
        d, what=what, resume_hint=f"{RESUME_HINT}, start again with {OVERWRITE_HINT}"
    )
