"""The manifest schema: loading it, reading manifest tables, validating them against it.

The schema ships inside the package (``medgen/data/manifest_schema.json``; documented in
``data_manifests/README.md``). :func:`validate` is what :meth:`medgen.Cohort.from_manifest` and
:meth:`medgen.Cohort.concat` run: errors name the file, column and rows at fault and the remedy.
Imports only pandas/numpy.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medgen._internal import files
from medgen._internal.suggest import close_matches, did_you_mean
from medgen.errors import ManifestError, MedgenFileNotFoundError, MedgenValueError

__all__ = [
    "MAX_LISTED",
    "REQUIRED_COLUMNS",
    "is_missing",
    "list_some",
    "load_schema",
    "manifest_spec",
    "path_columns",
    "read_table",
    "suggest",
    "validate",
]

MAX_LISTED = 5
"""How many offending values an error message lists before ``(and N more)``."""


@functools.cache
def load_schema() -> dict[str, Any]:
    """Return the manifest schema (JSON Schema of one row plus medgen's ``x-medgen`` block).

    The schema ships inside the package (``medgen/data/manifest_schema.json``); a copy lives in
    ``data_manifests/schema.json`` for readers of the repository.
    """
    text = importlib.resources.files("medgen").joinpath("data/manifest_schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def manifest_spec() -> dict[str, Any]:
    """The ``x-medgen`` block of the schema: required, string, numeric and path columns, values."""
    spec: dict[str, Any] = load_schema()["x-medgen"]
    return spec


REQUIRED_COLUMNS: tuple[str, ...] = tuple(manifest_spec()["required_columns"])
"""The columns every manifest must have: image_id, image_path, subject_id, split, source."""


def list_some(values: Sequence[Any], n: int = MAX_LISTED) -> str:
    """The first ``n`` values as reprs, then ``(and N more)``: for error messages."""
    shown = ", ".join(repr(v) for v in list(values)[:n])
    more = len(values) - n
    return f"{shown} (and {more} more)" if more > 0 else shown


def suggest(value: str, allowed: Iterable[str]) -> str:
    """`` Did you mean 'val'?`` for a misspelt column, split or source value (or ``""``)."""
    # 'validation' -> 'val': prefix matches are what people mean most often.
    return did_you_mean(value, allowed, cutoff=0.4, ignore_case=True, prefix=True)


def is_missing(series: pd.Series) -> pd.Series:
    """True where a cell is NaN/None/NA or an empty/blank string."""
    missing = series.isna()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        missing |= series.astype(str).str.strip().eq("")
    return missing


def read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    fmts = manifest_spec()["file_formats"]
    if suffix not in fmts:
        raise ManifestError(
            f"Manifest {str(path)!r} has suffix {suffix!r}; medgen reads manifests ending in "
            f"{', '.join(fmts)}. Rename the file or convert it with pandas."
        )
    if not path.is_file():
        raise MedgenFileNotFoundError(
            f"Manifest {str(path)!r} does not exist. Check the path (relative paths are taken from "
            f"the current directory, {os.getcwd()!r}), or create one with `medgen scan DIR -o FILE`."
        )
    string_cols = {c: "string" for c in manifest_spec()["string_columns"]}
    return files.read_table(path, what="Manifest", dtype=string_cols, error=ManifestError)


def path_columns(columns: Iterable[str]) -> list[str]:
    """``image_path``, ``mask_path`` and any other column named ``*_path``, in table order."""
    suffix = manifest_spec()["path_column_suffix"]
    fixed = manifest_spec()["path_columns"]
    return [c for c in columns if c in fixed or str(c).endswith(suffix)]


def validate(
    df: pd.DataFrame,
    *,
    name: str,
    root: Path | None,
    check_files: bool,
    label_columns: Sequence[str],
) -> pd.DataFrame:
    """Check a manifest against the schema; return it normalised (str ids, abs paths, split '')."""
    spec = manifest_spec()
    if not isinstance(df, pd.DataFrame):
        raise MedgenValueError(
            f"Cohort.from_manifest expects a path or a pandas DataFrame, not {type(df).__name__}."
        )
    df = df.copy()
    df.columns = [str(c) for c in df.columns]
    required = spec["required_columns"]
    missing_cols = [c for c in required if c not in df.columns]
    if missing_cols:
        hints = []
        for c in missing_cols:
            close = close_matches(c, [x for x in df.columns if x not in required])
            if close:
                hints.append(f"{close[0]!r} -> {c!r}")
        hint = f" Rename {', '.join(hints)}." if hints else ""
        if len(df.columns) == 1:
            sep = next((c for c in (";", "\t", "|") if c in str(df.columns[0])), None)
            if sep is not None:
                hint += f" The header looks {sep!r}-separated; medgen reads comma-separated CSV."
        raise ManifestError(
            f"Manifest {name}: missing required column(s) {missing_cols}; it has "
            f"{list(df.columns)}. Every manifest needs {required} (see data_manifests/README.md)."
            + hint
        )
    if df.empty:
        raise ManifestError(
            f"Manifest {name} has the columns but no rows; a cohort needs at least one image."
        )
    dup_cols = df.columns[df.columns.duplicated()].tolist()
    if dup_cols:
        raise ManifestError(f"Manifest {name}: column(s) {dup_cols} appear more than once.")

    # Required string columns: no missing values (split may be empty = unassigned).
    for col in ("image_id", "image_path", "subject_id", "source"):
        miss = is_missing(df[col])
        if miss.any():
            rows = (np.flatnonzero(miss.to_numpy()) + 2).tolist()  # +2: header line, 1-based
            raise ManifestError(
                f"Manifest {name}: column {col!r} is empty in {int(miss.sum())} row(s) (file lines "
                f"{list_some(rows)}); fill it in or drop those rows."
            )
    string_cols = [c for c in spec["string_columns"] if c in df.columns]
    string_cols += [c for c in path_columns(df.columns) if c not in string_cols]
    for col in string_cols:
        s = df[col]
        if not (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object):
            s = s.astype(object).where(s.notna(), None)  # ints/floats -> their str() below
        text = s.astype("string").str.strip()
        if col in path_columns([col]) and col != "image_path":
            text = text.where(text.ne(""), pd.NA)
        df[col] = text
    df["split"] = df["split"].fillna("")

    dup = df["image_id"][df["image_id"].duplicated(keep=False)]
    if not dup.empty:
        ids = dup.drop_duplicates().tolist()
        raise ManifestError(
            f"Manifest {name}: column 'image_id' must be unique, but {len(ids)} id(s) appear more "
            f"than once: {list_some(ids)}. Give every image its own id."
        )
    allowed_split = spec["split_values"]
    bad_split = sorted(set(df["split"].tolist()) - {*allowed_split, ""})
    if bad_split:
        b = bad_split[0]
        raise ManifestError(
            f"Manifest {name}: column 'split' has unknown value(s) {list_some(bad_split)}; allowed "
            f"are {allowed_split} or empty (unassigned).{suggest(b, allowed_split)}"
        )
    allowed_src = spec["source_values"]
    bad_src = sorted(set(df["source"].tolist()) - set(allowed_src))
    if bad_src:
        b = bad_src[0]
        raise ManifestError(
            f"Manifest {name}: column 'source' has unknown value(s) {list_some(bad_src)}; allowed "
            f"are {allowed_src}.{suggest(b, allowed_src)}"
        )
    assigned = df[df["split"] != ""]
    n_splits = assigned.groupby("subject_id", sort=True)["split"].nunique()
    leaky_ids = n_splits.index[n_splits > 1]
    if len(leaky_ids):
        leaky = (
            assigned[assigned["subject_id"].isin(leaky_ids)]
            .groupby("subject_id", sort=True)["split"]
            .unique()
        )
        desc = [f"{s!r} in {sorted(v)}" for s, v in leaky.head(MAX_LISTED).items()]
        more = f" (and {len(leaky) - MAX_LISTED} more)" if len(leaky) > MAX_LISTED else ""
        raise ManifestError(
            f"Manifest {name}: {len(leaky)} subject(s) have images in more than one split, which "
            f"leaks a person between train and evaluation: {'; '.join(desc)}{more}. Put all images "
            "of a subject in one split (Cohort.split(..., overwrite=True) does this)."
        )
    for col in spec["numeric_columns"]:
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col].dtype):
            conv = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][conv.isna() & ~is_missing(df[col])]
            if not bad.empty:
                raise ManifestError(
                    f"Manifest {name}: column {col!r} must be numeric; found "
                    f"{list_some(bad.drop_duplicates().tolist())}. Use numbers (years for 'age')."
                )
            df[col] = conv
    if "age" in df.columns and (df["age"] < 0).any():
        bad = df.loc[df["age"] < 0, "image_id"].tolist()
        raise ManifestError(
            f"Manifest {name}: column 'age' is negative for image_ids {list_some(bad)}; "
            "age is in years, >= 0."
        )

    # Paths: resolve against root; check existence.
    for col in path_columns(df.columns):
        resolved: list[Any] = []
        relative_without_root: list[str] = []
        root_str = str(root) if root is not None else None
        for p in df[col].tolist():
            if p is None or p is pd.NA:
                resolved.append(None)
                continue
            if p.startswith("~"):
                p = os.path.expanduser(p)
            if not os.path.isabs(p):
                if root_str is None:
                    relative_without_root.append(p)
                    resolved.append(None)
                    continue
                p = os.path.join(root_str, p)
            resolved.append(os.path.normpath(p))
        if relative_without_root:
            raise ManifestError(
                f"Manifest {name}: column {col!r} has relative paths "
                f"({list_some(relative_without_root)}) but no folder to resolve them against. "
                "Pass root=<folder the paths are relative to>, or use absolute paths."
            )
        df[col] = pd.array(resolved, dtype="string")
        if check_files:
            present = df[col].notna()
            exists = df.loc[present, col].map(os.path.exists)
            absent = df.loc[present, col][~exists.astype(bool)]
            if not absent.empty:
                raise MedgenFileNotFoundError(
                    f"Manifest {name}: {len(absent)} of {int(present.sum())} file(s) in column "
                    f"{col!r} do not exist: {list_some(absent.tolist(), 3)}. Paths are relative "
                    f"to {str(root) if root else 'nothing (absolute)'}; pass root= if the images "
                    "live elsewhere, fix the paths, or check_files=False to skip this check."
                )
    for c in label_columns:
        if c in df.columns and c in required:
            raise ManifestError(f"label_columns: {c!r} is a required schema column, not a label.")
    return df.reset_index(drop=True)
