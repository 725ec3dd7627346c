"""Atomic file and directory writes, shared by every module that writes outputs.

A write goes to a temporary name beside its target and is renamed over it only when complete, so
a crash never leaves half a file and a failed overwrite keeps the old data. Temporary names carry
the writer's process id; the next write to the same place removes the leftovers of writers that
were killed (and puts back a previous folder that a killed replacement had moved aside). Temporary names from
:func:`tempfile.mkstemp` / :func:`tempfile.mkdtemp` are private (0600 / 0700); the final file or
folder gets the permissions an ordinary ``open()``/``mkdir()`` would give under the process umask,
so colleagues can read shared cohorts and reports.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from medgen.errors import MedgenFileNotFoundError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "atomic_dir",
    "atomic_path",
    "read_table",
    "write_bytes_atomic",
    "write_table",
    "write_text_atomic",
]


@functools.cache
def _umask() -> int:
    # os.umask can only be read by setting it; do it once, at first use
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _prefix(target: Path) -> str:
    """Temporary names carry the writer's process id: ``.<name>.<pid>.<random>.tmp``."""
    return f".{target.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[str]:
    """Clean up after writes to ``target`` that were killed: return the names removed.

    A temporary file or folder of a writer whose process no longer exists (on this host) is
    deleted. A folder moved aside by :func:`atomic_dir` (``.<name>.<pid>.<random>.old``) holds the
    *previous* content of ``target``: when ``target`` is missing (the writer died between the two
    renames) it is moved back, so the old data is never lost; otherwise it is deleted.
    """
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    head = f".{target.name}."
    removed = []
    # scandir + a name test: this runs before every atomic write, in folders of thousands of
    # outputs, so no Path object is built for the entries that are not ours (2.2x faster at
    # 2,000 entries: 0.85 ms a call instead of 1.9)
    with os.scandir(parent) as it:
        candidates = [e.name for e in it if e.name.startswith(head)]
    for name in candidates:
        entry = parent / name
        pid_text = name[len(head) :].split(".", 1)[0]
        kind = ".old" if name.endswith(".old") else ".tmp" if ".tmp" in name else None
        if kind is None or not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if kind == ".old" and (entry / "old").exists() and not target.exists():
            os.rename(entry / "old", target)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(name)
    return removed


@contextmanager
def atomic_path(target: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; on success rename it onto ``target``.

    The caller writes the whole file to the yielded path. On any error the temporary file is
    removed and ``target`` is left as it was. ``suffix`` is appended to the temporary name (some
    writers pick the format from it, e.g. ``".nii.gz"``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, name = tempfile.mkstemp(prefix=_prefix(target), suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(
    target: str | os.PathLike[str], *, replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it takes ``target``'s place.

    An existing ``target`` folder is replaced only when every entry in it passes ``replaceable``
    (default: none do, so only an empty folder is replaced); otherwise :class:`MedgenValueError`
    names the entries that would be lost and nothing is touched. The old folder is moved aside
    first and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    if target.exists():
        if not target.is_dir():
            raise MedgenValueError(f"{target} exists and is a file; a folder is needed there.")
        keep = sorted(p.name for p in target.iterdir() if replaceable is None or not replaceable(p))
        if keep:
            shown = ", ".join(keep[:5]) + (f", ... ({len(keep)} in all)" if len(keep) > 5 else "")
            raise MedgenValueError(
                f"{target} already holds files this write would delete ({shown}). "
                "Choose a new or empty folder, or move those files away."
            )
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
            os.rename(target, aside / "old")
            os.rename(tmp, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


_TABLE_SUFFIXES = (".csv", ".parquet")


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], *, what: str = "table") -> Path:
    """Write ``df`` as CSV or Parquet (by ``path``'s suffix) atomically, without the index."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise MedgenValueError(
            f"{what} {str(path)!r}: unknown table format {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(_TABLE_SUFFIXES)}."
        )
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
    return path


def only_suffixes(suffixes: Iterable[str]) -> Callable[[Path], bool]:
    """A ``replaceable`` test for :func:`atomic_dir`: plain files with one of ``suffixes``."""
    allowed = tuple(s.lower() for s in suffixes)
    return lambda p: p.is_file() and p.name.lower().endswith(allowed)


#: table formats :func:`read_table` reads, by suffix
READ_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def read_table(
    path: str | os.PathLike[str],
    *,
    what: str = "table",
    dtype: dict[str, str] | None = None,
    error: type[MedgenValueError] = MedgenValueError,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table; every failure is a medgen error naming the file.

    Args:
        path: the table (``.csv`` / ``.txt`` comma-separated, ``.tsv`` tab-separated,
            ``.parquet``).
        what: what the table is, for messages (``"prediction table"``).
        dtype: column dtypes for the text formats (e.g. ``{"subject_id": "string"}``).
        error: the medgen error class for unreadable content.

    Raises:
        MedgenFileNotFoundError: the file does not exist.
        ``error``: unknown suffix, an empty file, bytes that are not UTF-8 text, a malformed
            table.
    """
    import pandas as pd

    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise error(
            f"{what} {str(path)!r}: unknown table format {p.suffix or '(none)'!r}; use one of "
            f"{', '.join(READ_SUFFIXES)}."
        )
    if not p.is_file():
        raise MedgenFileNotFoundError(
            f"{what} {str(path)!r} does not exist{' (it is a folder)' if p.is_dir() else ''}; "
            f"check the path (relative paths start at {os.getcwd()!r})."
        )
    if p.stat().st_size == 0:
        raise error(f"{what} {str(path)!r} is empty (0 bytes); write the table first.")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(p)
        return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=dtype)  # type: ignore[arg-type]
    except UnicodeDecodeError as err:
        raise error(
            f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}: {err.reason}); is it a "
            "binary file? Save it as UTF-8 CSV."
        ) from err
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise error(
            f"{what} {str(path)!r} cannot be read as {suffix[1:].upper()} "
            f"({type(err).__name__}: {' '.join(str(err).split())}). Check that it is a complete, "
            "well-formed table."
        ) from err
