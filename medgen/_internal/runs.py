"""Run folders with a lifecycle: one writer at a time, complete only when marked, never mixed.

A *run folder* (a trained classifier or generative model, a simulation, a batch of synthetic
images) goes through three states:

- **empty**: absent, or an empty folder;
- **interrupted**: it holds files of a run but no completion marker (the writer died, or is
  still writing);
- **complete**: the writer wrote its results, then :data:`COMPLETE` atomically, listing the
  SHA-256 of every result file.

Writers hold :func:`run_lock` (an exclusive ``flock`` on :data:`LOCK`, released by the kernel if
the process dies) and call :func:`prepare_run_folder` first: a complete folder is reused only with
``overwrite``, an interrupted one only with ``resume`` or ``overwrite``, and a folder holding files
that are not part of a run is refused. Loaders call :func:`check_complete`, which refuses an
interrupted folder and one whose files changed after completion (a mixed folder).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from medgen._internal.files import write_text_atomic
from medgen._internal.provenance import file_sha256
from medgen.errors import RunFolderError, RunLockedError

__all__ = [
    "COMPLETE",
    "LOCK",
    "RunFolderError",
    "RunLockedError",
    "check_complete",
    "check_resumable",
    "mark_complete",
    "prepare_run_folder",
    "refuse_foreign_files",
    "run_lock",
    "run_state",
]

#: the completion marker, written last
COMPLETE = "run_complete.json"
#: the lock file (kept between runs; its content names the last holder)
LOCK = ".medgen.lock"

RunState = Literal["empty", "interrupted", "complete"]


def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:500],
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


@contextmanager
def run_lock(
    folder: str | os.PathLike[str], *, what: str = "run", owned: Iterable[str] | None = None
) -> Iterator[Path]:
    """Hold the exclusive write lock of ``folder`` (created when missing) for the block.

    A second writer fails at once with :class:`RunLockedError` naming the holder. The lock is an
    ``flock`` on :data:`LOCK`: the kernel releases it when the holding process exits, however it
    exits, so a killed run never leaves a stale lock.

    ``owned``: the names a run writes (as for :func:`prepare_run_folder`); a folder holding
    anything else is refused (:func:`refuse_foreign_files`) before the lock file is made in it,
    so a folder of someone else's files is left exactly as it was.
    """
    d = Path(folder).expanduser()
    if owned is not None:
        refuse_foreign_files(d, owned=owned, what=what)
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            try:
                holder = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                holder = {}
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}: "
                f"{holder.get('command')}"
                if holder
                else "another process"
            )
            raise RunLockedError(
                f"{what} folder {str(d)!r} is being written by {who}. Wait for it to finish, or "
                "write to another folder."
            ) from err
        except ImportError:  # pragma: no cover - no flock (Windows): one writer is not enforced
            pass
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield d
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != LOCK) if d.is_dir() else []


def run_state(folder: str | os.PathLike[str]) -> RunState:
    """``"empty"``, ``"interrupted"`` or ``"complete"`` (see the module docstring)."""
    d = Path(folder).expanduser()
    if (d / COMPLETE).is_file():
        return "complete"
    return "interrupted" if _entries(d) else "empty"


def _is_owned(name: str, owned: Iterable[str]) -> bool:
    for pattern in owned:
        if pattern.endswith("/") and name == pattern[:-1]:
            return True
        if pattern.startswith("*") and name.endswith(pattern[1:]):
            return True
        if name == pattern:
            return True
    # temporary files of medgen's atomic writers (".name.XXXX.tmp...")
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


def refuse_foreign_files(
    folder: str | os.PathLike[str], *, owned: Iterable[str], what: str = "run"
) -> None:
    """Raise :class:`RunFolderError` when ``folder`` holds entries a run does not write.

    Call it before :func:`run_lock` too, so a folder of someone else's files is refused before
    even the lock file is made in it (:func:`prepare_run_folder` calls it again under the lock).
    """
    d = Path(folder).expanduser()
    owned = list(owned)
    foreign = [n for n in _entries(d) if n != COMPLETE and not _is_owned(n, owned)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f", ... ({len(foreign)} in all)" if len(foreign) > 5 else ""
        )
        raise RunFolderError(
            f"{what} folder {str(d)!r} holds files that are not part of a medgen run ({shown}); "
            "medgen never deletes or mixes files it did not write. Choose a new or empty folder."
        )


def check_resumable(
    folder: str | os.PathLike[str],
    *,
    resume_needs: str,
    what: str = "run",
    overwrite_hint: str = "--overwrite",
) -> None:
    """Refuse to resume a folder that holds files but not ``resume_needs`` (its training state):
    a saved model, or a run that stopped before its first checkpoint. Changes nothing."""
    d = Path(folder).expanduser()
    if run_state(d) != "empty" and not (d / resume_needs).is_file():
        raise RunFolderError(
            f"{what} folder {str(d)!r} holds no training state to resume (no {resume_needs}: it "
            "was written by save(), or its run stopped before its first checkpoint). Pass "
            f"{overwrite_hint} to train again, or choose a new folder."
        )


def prepare_run_folder(
    folder: str | os.PathLike[str],
    *,
    owned: Iterable[str],
    resume: bool = False,
    overwrite: bool = False,
    what: str = "run",
    resume_hint: str = "--resume",
    overwrite_hint: str = "--overwrite",
    resume_needs: str | None = None,
) -> RunState:
    """Check that a writer may start in ``folder`` and put it in the "being written" state.

    Args:
        folder: the run folder (call inside :func:`run_lock`).
        owned: names of the files and folders a run writes there (``"images/"`` for a folder,
            ``"*.csv"`` for a suffix); anything else is someone else's and is never deleted.
        resume: continue an interrupted run (or extend a complete one).
        overwrite: replace a previous run: its owned files are deleted, nothing else.
        what: the kind of run, for messages (``"classifier training"``).
        resume_hint, overwrite_hint: how the caller spells the two options (CLI flags or
            keyword arguments).
        resume_needs: a file a run can be resumed from (its training state); ``resume`` on a
            folder that holds files but not this one is refused (a saved model, or a run that
            stopped before its first checkpoint).

    Returns:
        The state found. On return the completion marker is gone (a crash from here on leaves
        an interrupted run, never a complete-looking mixed one).

    Raises:
        RunFolderError: the folder holds files that are not a run's, a finished run without
            ``overwrite``/``resume``, an interrupted run without either, or nothing to resume.
    """
    if resume and overwrite:
        raise RunFolderError(
            f"{resume_hint} and {overwrite_hint} contradict each other; pass one of them."
        )
    d = Path(folder).expanduser()
    owned = list(owned)
    state = run_state(d)
    entries = _entries(d)
    refuse_foreign_files(d, owned=owned, what=what)
    if state == "empty":
        if resume:
            raise RunFolderError(
                f"{what} folder {str(d)!r} holds no run to resume; start without {resume_hint}."
            )
        return state
    if resume and resume_needs is not None:
        check_resumable(d, resume_needs=resume_needs, what=what, overwrite_hint=overwrite_hint)
    if state == "complete" and not (resume or overwrite):
        raise RunFolderError(
            f"{what} folder {str(d)!r} already holds a finished run. Choose a new folder, pass "
            f"{overwrite_hint} to replace it, or {resume_hint} to continue training it."
        )
    if state == "interrupted" and not (resume or overwrite):
        raise RunFolderError(
            f"{what} folder {str(d)!r} holds an interrupted run (no {COMPLETE}). Pass "
            f"{resume_hint} to continue it, or {overwrite_hint} to start again."
        )
    (d / COMPLETE).unlink(missing_ok=True)
    if overwrite:
        for name in entries:
            p = d / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    return state


def mark_complete(
    folder: str | os.PathLike[str],
    files: Iterable[str],
    *,
    kind: str,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write :data:`COMPLETE` (atomically, last) listing the SHA-256 of ``files``.

    ``files`` are names relative to ``folder``: the results a loader needs (weights, config).
    """
    d = Path(folder).expanduser()
    hashes = {name: file_sha256(d / name) for name in files}
    marker = {
        "kind": kind,
        "files": hashes,
        "completed": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **dict(info or {}),
    }
    return write_text_atomic(d / COMPLETE, json.dumps(marker, indent=1, default=str))


def check_complete(
    folder: str | os.PathLike[str],
    *,
    what: str = "run",
    resume_hint: str = "--resume",
    verify: bool = True,
) -> dict[str, Any]:
    """Refuse to load from an interrupted or mixed run folder; return the marker.

    Args:
        folder: the run folder.
        what: the kind of run, for messages.
        resume_hint: how the caller resumes (named in the message).
        verify: check every listed file's SHA-256 (a file replaced after completion, e.g. by a
            second run into the same folder, makes the folder mixed).

    Raises:
        RunFolderError: no marker (interrupted or still being written), a listed file missing or
            changed.
    """
    d = Path(folder).expanduser()
    marker_path = d / COMPLETE
    if not marker_path.is_file():
        raise RunFolderError(
            f"{what} folder {str(d)!r} holds no finished run (no {COMPLETE}): the run was "
            f"interrupted or is still being written. Finish it with {resume_hint}, or retrain "
            "into a new folder."
        )
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(
            f"{marker_path}: the completion marker is unreadable ({err}); retrain into a new "
            "folder."
        ) from err
    if verify:
        for name, digest in dict(marker.get("files", {})).items():
            p = d / name
            if not p.is_file():
                raise RunFolderError(
                    f"{what} folder {str(d)!r}: {name} is missing although the run finished; "
                    "the folder was changed afterwards. Retrain into a new folder."
                )
            if file_sha256(p) != digest:
                raise RunFolderError(
                    f"{what} folder {str(d)!r} is mixed: {name} changed after the run finished "
                    "(another run wrote into the folder?). Retrain into a new folder."
                )
    return dict(marker)
