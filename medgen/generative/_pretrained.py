"""Restoration models trained by medgen and shipped inside the package: registry, checks, loading.

The registry is a folder (package data ``medgen/data/pretrained/``; the environment variable
``MEDGEN_PRETRAINED_DIR`` points elsewhere, e.g. for tests or a registry being regenerated)::

    index.json      {"format": 1, "models": {NAME: {"kind": "denoise" | "superres", "dir": NAME,
                     "sha256": {"model.safetensors": HEX, "config.json": HEX},
                     "summary": one line, "card": "card.md"}}}
    NAME/           what GenerativeModel.save(dir) writes (config.json, model.safetensors,
                    run_complete.json), plus card.md (the model card) and card.json (its figures)

The index is the truth: :func:`available_pretrained` lists what it holds. Every load checks the
SHA-256 of each file the index lists (:class:`~medgen.errors.ChecksumError` on a difference) and
reads the weights with safetensors (no pickle). ``"pretrained:NAME"`` is accepted wherever a
trained run folder is (:func:`medgen.generative.load`, ``medgen denoise|superres apply``,
``fit(init=...)``); :func:`export_pretrained` (used by ``scripts/train_pretrained.py``) writes
one model into the registry.

Example:
    >>> parse_pretrained("pretrained:mri"), parse_pretrained("runs/denoise")
    ('mri', None)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ChecksumError, ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.generative._run import CONFIG, WEIGHTS

if TYPE_CHECKING:
    import pandas as pd

    from medgen.generative._model import GenerativeModel

__all__ = [
    "PREFIX",
    "PRETRAINED_ENV",
    "available_pretrained",
    "export_pretrained",
    "load_pretrained",
    "parse_pretrained",
    "pretrained_dir",
    "pretrained_root",
    "resolve_run",
]

#: the environment variable that moves the registry away from the package data
PRETRAINED_ENV = "MEDGEN_PRETRAINED_DIR"
#: how a pretrained model is named where a run folder is expected
PREFIX = "pretrained:"
INDEX = "index.json"
INDEX_FORMAT = 1
CARD = "card.md"
CARD_JSON = "card.json"
#: the files of a registry entry (an existing entry holding anything else is never replaced)
_ENTRY_FILES = frozenset({WEIGHTS, CONFIG, "run_complete.json", ".medgen.lock", CARD, CARD_JSON})
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_REMEDY = (
    "Reinstall medgen (pip install --force-reinstall medgen), or regenerate the pretrained "
    "models with `python scripts/train_pretrained.py`."
)


def pretrained_root() -> Path:
    """The registry folder: ``$MEDGEN_PRETRAINED_DIR`` when set, else the package's
    ``medgen/data/pretrained``."""
    env = os.environ.get(PRETRAINED_ENV)
    if env:
        return Path(env).expanduser()
    import medgen

    return Path(medgen.__file__).resolve().parent / "data" / "pretrained"


def parse_pretrained(source: str | os.PathLike[str]) -> str | None:
    """``NAME`` of ``"pretrained:NAME"``, or ``None`` for anything else (a run folder)."""
    text = os.fspath(source)
    return text[len(PREFIX) :] if text.startswith(PREFIX) else None


def _read_index(root: Path) -> dict[str, dict[str, Any]]:
    """The ``models`` of ``root/index.json`` (none when the file is missing)."""
    path = root / INDEX
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MedgenValueError(f"{path}: not valid JSON ({err}). {_REMEDY}") from err
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise MedgenValueError(f"{path}: not a pretrained-model index (no 'models'). {_REMEDY}")
    if index.get("format") != INDEX_FORMAT:
        raise MedgenValueError(
            f"{path}: index format {index.get('format')!r}, this medgen reads format "
            f"{INDEX_FORMAT}. {_REMEDY}"
        )
    models: dict[str, dict[str, Any]] = {}
    for name, entry in index["models"].items():
        if not isinstance(entry, dict) or not _NAME.fullmatch(str(entry.get("dir", ""))):
            raise MedgenValueError(
                f"{path}: entry {name!r} has no valid 'dir' (a folder name inside {root}). "
                f"{_REMEDY}"
            )
        models[str(name)] = entry
    return models


def _check_kind(kind: str | None) -> None:
    from medgen.generative._model import model_kinds

    if kind is not None and kind not in model_kinds():
        raise ConfigError(
            f"kind={kind!r} is not a model kind; choose one of {model_kinds()}."
            f"{did_you_mean(kind, model_kinds())}"
        )


def _entry(name: str, kind: str | None) -> tuple[Path, dict[str, Any]]:
    """``(root, index entry)`` of ``name``, of ``kind`` when given."""
    _check_kind(kind)
    root = pretrained_root()
    models = _read_index(root)
    if name not in models:
        if not models:
            raise ConfigError(
                f"no pretrained model {name!r}: the registry {root} lists none (no {INDEX} or an "
                f"empty one). {_REMEDY}"
            )
        raise ConfigError(
            f"no pretrained model {name!r}; known: {sorted(models)}.{did_you_mean(name, models)} "
            "List them with `medgen pretrained`."
        )
    entry = models[name]
    if kind is not None and entry.get("kind") != kind:
        same = sorted(n for n, e in models.items() if e.get("kind") == kind)
        raise ConfigError(
            f"pretrained model {name!r} is a {entry.get('kind')!r} model, not a {kind!r} model; "
            f"the pretrained {kind!r} models are {same}."
        )
    return root, entry


def pretrained_dir(name: str, *, kind: str | None = None, verify: bool = True) -> Path:
    """The folder of the pretrained model ``name`` (a saved model folder).

    Args:
        name: a name listed by :func:`available_pretrained` (without ``"pretrained:"``).
        kind: refuse a model of another kind (``"denoise"``, ``"superres"``).
        verify: check the SHA-256 of every file the index lists.

    Raises:
        ConfigError: an unknown name (the message lists the known ones and the closest), or a
            model of another ``kind`` (the message lists the names of that kind).
        MedgenFileNotFoundError: a listed file is missing.
        ChecksumError: a listed file differs from the index (names the file and both hashes).
    """
    return _folder(name, kind, verify=verify)[0]


def _folder(name: str, kind: str | None, *, verify: bool) -> tuple[Path, dict[str, Any]]:
    """``(folder, index entry)`` of ``name`` (:func:`pretrained_dir`)."""
    from medgen._internal.provenance import file_sha256

    root, entry = _entry(name, kind)
    d = root / str(entry["dir"])
    if verify:
        for fname, expected in sorted(dict(entry.get("sha256") or {}).items()):
            path = d / str(fname)
            if not path.is_file():
                raise MedgenFileNotFoundError(
                    f"{path}: missing; the pretrained model {name!r} is incomplete. {_REMEDY}"
                )
            actual = file_sha256(path)
            if actual != expected:
                raise ChecksumError(
                    f"{path}: SHA-256 {actual} differs from {expected} recorded in "
                    f"{root / INDEX}; the pretrained model {name!r} is corrupt or was changed. "
                    f"{_REMEDY}"
                )
    return d, entry


def resolve_run(run: str | os.PathLike[str], *, kind: str | None = None) -> Path:
    """The folder of a run argument: ``"pretrained:NAME"`` -> its checked registry folder
    (:func:`pretrained_dir`, of ``kind`` when given), anything else -> the path itself."""
    name = parse_pretrained(run)
    return Path(run).expanduser() if name is None else pretrained_dir(name, kind=kind)


def load_pretrained(name: str, *, kind: str | None = None, device: str = "cpu") -> GenerativeModel:
    """Load the pretrained model ``name`` after checking its files against the index.

    The weights are read by :meth:`~medgen.generative.GenerativeModel.load` (safetensors: tensors
    only, never unpickled objects); nothing is downloaded. The model records where it came
    from: ``pretrained_name`` and ``pretrained_sha256`` (of its weights).

    Args:
        name: a name listed by :func:`available_pretrained` (``"pretrained:NAME"`` also works).
        kind: refuse a model of another kind (``"denoise"``, ``"superres"``).
        device: where the networks go.

    Raises:
        ConfigError: an unknown name, or a model of another ``kind`` (see :func:`pretrained_dir`).
        ChecksumError: a weights or config file differs from the index.
    """
    from medgen.generative._model import get_model_kind

    name = parse_pretrained(name) or name
    d, entry = _folder(name, kind, verify=True)
    expected = str(entry.get("kind"))
    model = get_model_kind(expected).load(d, device=device)
    if model.kind != expected:  # pragma: no cover - load refuses another kind itself
        raise ConfigError(f"{d} holds a {model.kind!r} model; the index says {expected!r}.")
    model.pretrained_name = name
    model.pretrained_sha256 = str(dict(entry.get("sha256") or {}).get(WEIGHTS) or "") or None
    return model


def available_pretrained(kind: str | None = None) -> pd.DataFrame:
    """The pretrained models of the registry (of ``kind`` when given), one row each.

    Returns:
        A DataFrame with columns ``name``, ``kind``, ``summary`` and ``size_mb`` (of the files
        the index lists), sorted by name; empty when none is installed.

    Raises:
        ConfigError: ``kind`` is not a model kind.
    """
    import pandas as pd

    _check_kind(kind)
    root = pretrained_root()
    rows = []
    for name, entry in sorted(_read_index(root).items()):
        if kind is not None and entry.get("kind") != kind:
            continue
        d = root / str(entry["dir"])
        size = sum((d / f).stat().st_size for f in entry.get("sha256") or {} if (d / f).is_file())
        rows.append(
            {
                "name": name,
                "kind": str(entry.get("kind")),
                "summary": str(entry.get("summary", "")),
                "size_mb": round(size / 1e6, 3),
            }
        )
    return pd.DataFrame(rows, columns=["name", "kind", "summary", "size_mb"])


def export_pretrained(
    model: GenerativeModel,
    name: str,
    *,
    card: str,
    figures: Mapping[str, Any],
    summary: str | None = None,
    directory: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a trained model into the registry as ``name`` (what ``scripts/train_pretrained.py``
    calls).

    The folder is written beside its final place and renamed onto it (an earlier model of that
    name is replaced, nothing else in the registry); then ``index.json`` is rewritten
    atomically with the SHA-256 of the weights and the config. The registry's lock is held
    throughout.

    Args:
        model: a trained :class:`~medgen.generative.GenerativeModel` (``steps_trained > 0``).
        name: lower-case letters, digits, ``_``, ``.``, ``-`` (e.g. ``"mri"``, ``"x2"``).
        card: the model card (Markdown): data, recipe, figures, limits; saved as ``card.md``.
        figures: JSON-able figures of the card (e.g. PSNR per noise level); ``card.json``.
        summary: one line for :func:`available_pretrained`; default: the card's first line of
            text.
        directory: the registry folder; default :func:`pretrained_root`.

    Returns:
        The model's folder.

    Raises:
        ConfigError: an invalid name, an untrained model, an empty card, figures that are not
            JSON-able, a summary of several lines.
        MedgenValueError: the existing folder of ``name`` holds files the registry did not write.
    """
    from medgen._internal.files import atomic_dir, write_text_atomic
    from medgen._internal.provenance import file_sha256
    from medgen._internal.runs import LOCK, run_lock
    from medgen.generative._model import GenerativeModel

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"export_pretrained: name must be lower-case letters, digits, '_', '.' or '-' "
            f"(starting with a letter or digit), not {name!r}."
        )
    if not isinstance(model, GenerativeModel) or not model.kind:
        raise ConfigError(
            f"export_pretrained: model must be a registered GenerativeModel, not {model!r}."
        )
    if model.steps_trained <= 0:
        raise ConfigError(
            f"export_pretrained({name!r}): the model is untrained (steps_trained=0); fit it first."
        )
    if not isinstance(card, str) or not card.strip():
        raise ConfigError(f"export_pretrained({name!r}): card must be non-empty Markdown text.")
    try:
        figures_text = json.dumps(dict(figures), indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"export_pretrained({name!r}): figures must be a JSON-able dict (numbers, strings, "
            f"lists, dicts; no NaN): {err}."
        ) from err
    if summary is None:
        lines = [ln.strip().lstrip("#").strip() for ln in card.splitlines()]
        summary = next((ln for ln in lines if ln), "")
    if "\n" in summary:
        raise ConfigError(f"export_pretrained({name!r}): summary must be one line.")
    root = Path(directory).expanduser() if directory is not None else pretrained_root()
    with run_lock(root, what="pretrained-model registry"):
        with atomic_dir(root / name, replaceable=lambda p: p.name in _ENTRY_FILES) as tmp:
            model.save(tmp)
            (tmp / LOCK).unlink(missing_ok=True)
            write_text_atomic(tmp / CARD, card if card.endswith("\n") else card + "\n")
            write_text_atomic(tmp / CARD_JSON, figures_text + "\n")
            hashes = {f: file_sha256(tmp / f) for f in (WEIGHTS, CONFIG)}
        models = _read_index(root)
        models[name] = {
            "kind": model.kind,
            "dir": name,
            "sha256": hashes,
            "summary": summary,
            "card": CARD,
        }
        index = {"format": INDEX_FORMAT, "models": dict(sorted(models.items()))}
        write_text_atomic(root / INDEX, json.dumps(index, indent=2) + "\n")
    return root / name
