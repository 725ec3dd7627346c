"""Output paths that can never destroy an input or escape their folder.

Every writer of medgen (``io.save``, every ``apply``, ``simulate``, reports, batch generation)
goes through these checks before it writes anything:

- :func:`check_output_not_input`: the output is not one of the inputs, does not contain one and
  does not lie inside one (a DICOM series folder, say);
- :func:`safe_file_name`: an id from a manifest becomes a file name that stays in its folder; ids
  that try to leave it (``../x``, ``/abs/x``, NUL bytes) are errors naming the id;
- :func:`confined`: a path built under an output folder really lies inside it;
- :func:`unique_output_names`: two inputs with the same file name from different folders get
  distinct, deterministic output names instead of overwriting each other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from medgen.errors import MedgenValueError, OutputPathError

__all__ = [
    "check_output_not_input",
    "confined",
    "safe_file_name",
    "unique_output_names",
]

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+\-]")
_MAX_NAME = 200


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_not_input(
    output: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    *,
    what: str = "output",
) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs``.

    Paths are compared after resolving symbolic links, and by file identity where both exist (a
    hard link or a case-insensitive file system naming the same file).

    Raises:
        OutputPathError: naming the input and the output, and how to fix it.

    Example:
        >>> check_output_not_input("out/scan.nii.gz", ["data/scan.nii.gz"])
        >>> check_output_not_input("data", ["data/scan.nii.gz"])
        Traceback (most recent call last):
        ...
        medgen.errors.OutputPathError: output 'data' contains the input 'data/scan.nii.gz'; ...
    """
    out = _resolved(output)
    for given in inputs:
        src = _resolved(given)
        same = out == src
        if not same and out.exists() and src.exists():
            try:
                same = os.path.samefile(out, src)
            except OSError:  # pragma: no cover - raced away
                same = False
        if same:
            rule = "is the input"
        elif _inside(src, out):
            rule = "contains the input"
        elif _inside(out, src):
            rule = "lies inside the input"
        else:
            continue
        raise OutputPathError(
            f"{what} {str(output)!r} {rule} {str(given)!r}; medgen never writes over its inputs. "
            "Choose an output folder outside the input files and folders."
        )


def safe_file_name(name: object, *, what: str = "id") -> str:
    """A file name for ``name`` that stays inside the folder it is joined to.

    Characters other than letters, digits and ``. _ + -`` become ``_``; a leading dot is
    replaced (no hidden files). Names that try to leave their folder are errors, not silently
    rewritten: they contain a path separator or a NUL byte, or are ``.``/``..``/empty.

    Raises:
        OutputPathError: naming the offending id.

    Example:
        >>> safe_file_name("sub 01:T1w")
        'sub_01_T1w'
        >>> safe_file_name("../../victim")
        Traceback (most recent call last):
        ...
        medgen.errors.OutputPathError: id '../../victim' cannot name an output file: ...
    """
    text = str(name)
    bad = None
    if "\x00" in text:
        bad = "it contains a NUL byte"
    elif "/" in text or "\\" in text or os.sep in text or (os.altsep and os.altsep in text):
        bad = "it contains a path separator"
    elif text.strip() in ("", ".", ".."):
        bad = "it is empty or a relative folder name"
    if bad is not None:
        raise OutputPathError(
            f"{what} {text!r} cannot name an output file: {bad}, so the output could land outside "
            "the output folder. Use ids made of letters, digits, '.', '_' and '-'."
        )
    safe = _UNSAFE_CHARS.sub("_", text.strip())
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return safe[:_MAX_NAME]


def confined(root: str | os.PathLike[str], *parts: str, what: str = "output") -> Path:
    """``root / parts`` after checking that it resolves inside ``root``.

    Raises:
        OutputPathError: the joined path leaves ``root`` (an absolute part, ``..`` or a link).

    Example:
        >>> confined("out", "a", "x.nii.gz").as_posix()
        'out/a/x.nii.gz'
    """
    base = Path(root).expanduser()
    path = base.joinpath(*parts)
    if not _inside(_resolved(path), _resolved(base)):
        raise OutputPathError(
            f"{what} {'/'.join(parts)!r} would be written outside the output folder "
            f"{str(base)!r}; use names without '..', absolute paths or links out of the folder."
        )
    return path


def _split_suffix(name: str) -> tuple[str, str]:
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    p = Path(name)
    return p.stem if p.suffix else name, p.suffix


def unique_output_names(
    inputs: Sequence[str | os.PathLike[str]], names: Sequence[str] | None = None
) -> dict[str, str]:
    """Distinct output names for ``inputs``, deterministic in their order.

    ``names`` are the wanted names (default: each input's file name); a name wanted twice keeps
    its first use and becomes ``stem-2.suffix``, ``stem-3.suffix``... for the later ones, in input
    order (case-insensitively, so case-insensitive file systems do not merge them either).

    Returns:
        ``{str(input): output name}``; record it in the output manifest.

    Example:
        >>> unique_output_names(["a/x.nii.gz", "b/x.nii.gz", "c/y.nii.gz"])
        {'a/x.nii.gz': 'x.nii.gz', 'b/x.nii.gz': 'x-2.nii.gz', 'c/y.nii.gz': 'y.nii.gz'}
    """
    wanted = list(names) if names is not None else [Path(p).name for p in inputs]
    if len(wanted) != len(inputs):
        raise MedgenValueError(
            f"unique_output_names: {len(inputs)} inputs but {len(wanted)} names."
        )
    taken: set[str] = set()
    out: dict[str, str] = {}
    for src, name in zip(inputs, wanted, strict=True):
        if str(src) in out:
            raise OutputPathError(f"input {str(src)!r} is given twice; give each input once.")
        candidate, k = name, 1
        stem, suffix = _split_suffix(name)
        while candidate.lower() in taken:
            k += 1
            candidate = f"{stem}-{k}{suffix}"
        taken.add(candidate.lower())
        out[str(src)] = candidate
    return out


def as_mapping_table(mapping: Mapping[str, str]) -> list[dict[str, str]]:
    """``[{"input": ..., "output": ...}]`` rows of a :func:`unique_output_names` result."""
    return [{"input": k, "output": v} for k, v in mapping.items()]
