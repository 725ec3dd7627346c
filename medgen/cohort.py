"""Cohorts: a validated manifest table of images and the people behind them.

A :class:`Cohort` wraps a manifest (CSV or Parquet; schema in ``data_manifests/README.md`` and
``medgen/data/manifest_schema.json``) and offers what every stage of medgen needs from it:

- validation with errors that name the file, column and rows at fault (:meth:`Cohort.from_manifest`);
- selection (:meth:`Cohort.select`), subgroup counts (:meth:`Cohort.subgroups`);
- seeded, subject-level, stratified splits (:meth:`Cohort.split`);
- MONAI datasets with no cache, an in-memory cache or a persistent on-disk cache
  (:meth:`Cohort.dataset`);
- writing back to CSV/Parquet with paths relative to the new location (:meth:`Cohort.to_manifest`).

This module imports only pandas/numpy; torch and MONAI are imported when :meth:`Cohort.dataset`
is called.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "image_id": ["a1", "a2", "b1", "c1"],
    ...     "image_path": ["/data/a1.nii.gz", "/data/a2.nii.gz", "/data/b1.nii.gz", "/data/c1.nii.gz"],
    ...     "subject_id": ["A", "A", "B", "C"],
    ...     "split": ["", "", "", ""],
    ...     "source": ["real"] * 4,
    ...     "label": [1, 1, 0, 0],
    ...     "sex": ["F", "F", "M", None],
    ... })
    >>> cohort = Cohort.from_manifest(df, check_files=False)
    >>> len(cohort), cohort.attributes
    (4, ['sex'])
    >>> cohort.subgroups(["sex"])["n_images"].sum()
    np.int64(4)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from medgen._internal.files import write_table
from medgen._internal.suggest import close_matches, did_you_mean
from medgen.errors import ManifestError, MedgenFileNotFoundError, MedgenValueError

if TYPE_CHECKING:
    from collections.abc import Callable

    from monai.data import Dataset

__all__ = ["DEFAULT_FRACTIONS", "REQUIRED_COLUMNS", "Cohort", "LoadImaged", "load_schema"]  # noqa: F822

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
CacheMode = Literal["memory", "disk"] | None

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
"""Default subject fractions of :meth:`Cohort.split`."""
_MISSING_GROUP = "<missing>"
_MAX_LISTED = 5


@functools.cache
def load_schema() -> dict[str, Any]:
    """Return the manifest schema (JSON Schema of one row plus medgen's ``x-medgen`` block).

    The schema ships inside the package (``medgen/data/manifest_schema.json``); a copy lives in
    ``data_manifests/schema.json`` for readers of the repository.
    """
    text = importlib.resources.files("medgen").joinpath("data/manifest_schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = load_schema()["x-medgen"]
    return spec


REQUIRED_COLUMNS: tuple[str, ...] = tuple(_spec()["required_columns"])
"""The columns every manifest must have: image_id, image_path, subject_id, split, source."""


def _list_some(values: Sequence[Any], n: int = _MAX_LISTED) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:n])
    more = len(values) - n
    return f"{shown} (and {more} more)" if more > 0 else shown


def _suggest(value: str, allowed: Iterable[str]) -> str:
    # 'validation' -> 'val': prefix matches are what people mean most often.
    return did_you_mean(value, allowed, cutoff=0.4, ignore_case=True, prefix=True)


def _is_missing(series: pd.Series) -> pd.Series:
    """True where a cell is NaN/None/NA or an empty/blank string."""
    missing = series.isna()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        missing |= series.astype(str).str.strip().eq("")
    return missing


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    fmts = _spec()["file_formats"]
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
    string_cols = {c: "string" for c in _spec()["string_columns"]}
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=string_cols, keep_default_na=True)
        return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"Manifest {str(path)!r} cannot be read as {suffix[1:].upper()}: {err}. "
            "Check that the file is a complete, well-formed table."
        ) from err


class Cohort:
    """A validated cohort manifest: one row per image, with subject, split, source and attributes.

    Build one with :meth:`from_manifest`. The table is held in memory; :attr:`df` returns a copy
    whose ``image_path`` (and ``mask_path``) are **absolute** paths, so rows can be loaded from any
    working directory. Unassigned splits are the empty string ``""``.

    Attributes:
        root: the folder relative manifest paths were resolved against (``None`` when every path
            was absolute).
        label_columns: the columns treated as targets (``label``, ``severity`` and any named in
            :meth:`from_manifest`), excluded from :attr:`attributes`.
        history: the operations that produced this cohort with their parameters and seeds, e.g.
            ``({"op": "split", "seed": 0, "fractions": {...}, "stratify": [...]},)``.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        *,
        root: Path | None,
        label_columns: Sequence[str],
        source_name: str,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        # Internal: use Cohort.from_manifest, which validates. `df` must already be normalised.
        self._df = df.reset_index(drop=True)
        self.root = root
        self.label_columns: tuple[str, ...] = tuple(c for c in label_columns if c in df.columns)
        self._source_name = source_name
        self.history: tuple[dict[str, Any], ...] = tuple(dict(h) for h in history)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(
        cls,
        path_or_df: PathLike | pd.DataFrame,
        *,
        root: PathLike | None = None,
        check_files: bool = True,
        label_columns: Sequence[str] | None = None,
    ) -> Cohort:
        """Read and validate a manifest.

        Args:
            path_or_df: a ``.csv`` / ``.parquet`` file, or a DataFrame with the manifest columns.
            root: folder that relative ``image_path``/``mask_path`` values are relative to.
                Defaults to the manifest file's folder. A DataFrame with relative paths needs it.
            check_files: check that every image (and mask) path exists.
            label_columns: target columns (kept out of :attr:`attributes`). Defaults to the
                schema's ``label`` and ``severity`` where present.

        Returns:
            The validated cohort.

        Raises:
            MedgenFileNotFoundError: the manifest, or image files it names, do not exist.
            ManifestError: missing columns or values, duplicate ``image_id``\\ s, unknown ``split``
                or ``source`` values, a subject in two splits, an empty manifest.
        """
        if isinstance(path_or_df, pd.DataFrame):
            name = "<DataFrame>"
            df = path_or_df.copy()
            base = Path(root).expanduser().resolve() if root is not None else None
        else:
            path = Path(path_or_df).expanduser()
            name = str(path)
            df = _read_table(path)
            base = Path(root).expanduser().resolve() if root is not None else path.resolve().parent
        labels = (
            tuple(label_columns) if label_columns is not None else tuple(_spec()["label_columns"])
        )
        df = _validate(df, name=name, root=base, check_files=check_files, label_columns=labels)
        op: dict[str, Any] = {"op": "from_manifest", "manifest": name}
        if not isinstance(path_or_df, pd.DataFrame):
            op["sha256"] = hashlib.sha256(Path(path_or_df).expanduser().read_bytes()).hexdigest()
        return cls(df, root=base, label_columns=labels, source_name=name, history=(op,))

    def _derive(self, df: pd.DataFrame, op: Mapping[str, Any] | None = None) -> Cohort:
        hist = self.history + ((dict(op),) if op else ())
        return Cohort(
            df,
            root=self.root,
            label_columns=self.label_columns,
            source_name=self._source_name,
            history=hist,
        )

    # ------------------------------------------------------------------ properties
    @property
    def df(self) -> pd.DataFrame:
        """A copy of the manifest table (absolute paths, ``""`` for unassigned split)."""
        return self._df.copy()

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in row order."""
        return [Path(p) for p in self._df["image_path"]]

    @property
    def image_ids(self) -> list[str]:
        """Image ids, in row order."""
        return self._df["image_id"].astype(str).tolist()

    @property
    def subjects(self) -> list[str]:
        """Distinct subject ids, in order of first appearance."""
        return self._df["subject_id"].astype(str).drop_duplicates().tolist()

    @property
    def attributes(self) -> list[str]:
        """Columns that are neither schema bookkeeping (ids, paths, split, source) nor labels.

        These are the candidate sensitive attributes: ``sex``, ``age``, ``site``, ... and any
        extra column of the manifest.
        """
        spec = _spec()
        bookkeeping = set(spec["required_columns"]) | set(_path_columns(self._df.columns))
        skip = bookkeeping | set(self.label_columns)
        return [c for c in self._df.columns if c not in skip]

    @property
    def splits(self) -> dict[str, int]:
        """Number of images per split value (``""`` = unassigned)."""
        counts = self._df["split"].value_counts(sort=False)
        return {str(k): int(v) for k, v in counts.items()}

    def __len__(self) -> int:
        return len(self._df)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Iterate over rows as plain dicts (absolute paths; missing values as ``None``)."""
        for rec in self._df.astype(object).where(self._df.notna(), None).to_dict("records"):
            yield {str(k): v for k, v in rec.items()}

    def __repr__(self) -> str:
        return (
            f"Cohort({len(self)} images, {self._df['subject_id'].nunique()} subjects, "
            f"splits={self.splits}, source={self._source_name!r})"
        )

    def _repr_html_(self) -> str:
        head = f"<p><b>{self!r}</b></p>"
        return head + self._df.head(10).to_html(max_cols=12)

    # ------------------------------------------------------------------ selection
    def select(
        self,
        *,
        split: str | Sequence[str] | None = None,
        source: str | Sequence[str] | None = None,
        **col_values: Any,
    ) -> Cohort:
        """Rows matching every condition (a scalar means ``==``, a list/tuple/set means ``isin``).

        Args:
            split: ``"train"``, ``"val"``, ``"test"``, ``""`` (unassigned) or several of them.
            source: ``"real"``, ``"synthetic"``, ``"simulated"`` or several of them.
            **col_values: other columns, e.g. ``sex="F"``, ``site=["A", "B"]``. ``None`` matches
                missing values.

        Returns:
            A new cohort (possibly empty) sharing this one's root and history.

        Example:
            ``cohort.select(split="train", sex="F")``
        """
        spec = _spec()
        conds: dict[str, Any] = dict(col_values)
        if split is not None:
            allowed = [*spec["split_values"], ""]
            for s in [split] if isinstance(split, str) else split:
                if s not in allowed:
                    raise MedgenValueError(
                        f"select(split={s!r}): unknown split; use one of {spec['split_values']} "
                        f"or '' for unassigned.{_suggest(s, spec['split_values'])}"
                    )
            conds["split"] = split
        if source is not None:
            for s in [source] if isinstance(source, str) else source:
                if s not in spec["source_values"]:
                    raise MedgenValueError(
                        f"select(source={s!r}): unknown source; use one of "
                        f"{spec['source_values']}.{_suggest(s, spec['source_values'])}"
                    )
            conds["source"] = source
        mask = pd.Series(True, index=self._df.index)
        for col, want in conds.items():
            if col not in self._df.columns:
                raise MedgenValueError(
                    f"select({col}=...): the manifest has no column {col!r}; its columns are "
                    f"{list(self._df.columns)}.{_suggest(col, self._df.columns)}"
                )
            values = self._df[col]
            if isinstance(want, (list, tuple, set, frozenset)):
                wanted = list(want)
                hit = values.isin([w for w in wanted if w is not None])
                if any(w is None for w in wanted):
                    hit |= values.isna()
            elif want is None:
                hit = values.isna()
            else:
                hit = values.eq(want).fillna(False).astype(bool)
            mask &= hit
        out = self._df[mask.to_numpy()]
        if out.empty:
            logger.warning("Cohort.select(%s) matched no rows of %d", conds, len(self))
        return self._derive(
            out, {"op": "select", "where": {k: _jsonable(v) for k, v in conds.items()}}
        )

    # ------------------------------------------------------------------ counts
    def subgroups(self, attrs: Sequence[str] = (), *, label: str | None = "label") -> pd.DataFrame:
        """Count images and subjects per subgroup x split x label.

        Missing attribute values form their own group (shown as ``NaN`` in the index), never
        dropped, so the counts always add up to ``len(cohort)``.

        Args:
            attrs: attribute columns to group by, e.g. ``["sex", "site"]`` (may be empty).
            label: label column for the last index level. If it is the default ``"label"`` and
                the manifest has no such column, the level is left out; ``None`` leaves it out.

        Returns:
            A tidy DataFrame indexed by ``(*attrs, "split", label)`` with int columns
            ``n_images`` and ``n_subjects``; rows are only the combinations that occur.
        """
        if isinstance(attrs, str):
            attrs = [attrs]
        cols = list(attrs)
        for c in cols:
            if c not in self._df.columns:
                raise MedgenValueError(
                    f"subgroups(): the manifest has no column {c!r}; attribute columns are "
                    f"{self.attributes}.{_suggest(c, self._df.columns)}"
                )
        keys = [*cols, "split"]
        if label is not None:
            if label in self._df.columns:
                keys.append(label)
            elif label != "label":
                raise MedgenValueError(
                    f"subgroups(label={label!r}): the manifest has no column {label!r}; "
                    f"label columns are {list(self.label_columns)}."
                )
        if len(set(keys)) != len(keys):
            raise MedgenValueError(f"subgroups(): a column appears twice in {keys}.")
        grouped = self._df.groupby(keys, dropna=False, sort=True, observed=True)
        out = grouped.agg(
            n_images=("image_id", "size"), n_subjects=("subject_id", "nunique")
        ).astype("int64")
        out.columns.name = "count"
        return out

    # ------------------------------------------------------------------ splitting
    def split(
        self,
        *,
        fractions: Mapping[str, float] | None = None,
        stratify: Sequence[str] = ("label",),
        seed: int,
        overwrite: bool = False,
    ) -> Cohort:
        """Assign subjects to splits: seeded, subject-level, stratified.

        Every subject goes to exactly one split, so no person is in two splits. Subjects are
        grouped into strata by their **majority** value of each ``stratify`` column (ties go to
        the first value in row order; missing values are their own stratum). Within each stratum
        the subjects are shuffled with ``numpy.random.default_rng(seed)`` and cut into the splits:
        each split gets ``floor(fraction x n)`` subjects and the few left over go to splits drawn
        with probability proportional to the remainders, so group proportions are preserved
        within sampling error and small splits are not starved by rounding. Fractions are of
        subjects, not images.

        Args:
            fractions: split name -> fraction of subjects; names from ``train``, ``val``, ``test``;
                must sum to 1. Default ``{"train": 0.7, "val": 0.15, "test": 0.15}``.
            stratify: columns to stratify by (label and/or sensitive attributes); ``()`` for none.
                The default ``("label",)`` falls back to ``()`` when there is no ``label`` column.
            seed: seed of the shuffle; the same seed and cohort give the same split.
            overwrite: replace existing split assignments; without it, a cohort that already has
                any assigned split is an error.

        Returns:
            A new cohort with the ``split`` column filled in; the parameters are appended to
            :attr:`history`.
        """
        spec = _spec()
        fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
        if not fr:
            raise MedgenValueError("split(fractions={}): give at least one split name.")
        for name, f in fr.items():
            if name not in spec["split_values"]:
                raise MedgenValueError(
                    f"split(fractions=...): unknown split name {name!r}; use "
                    f"{spec['split_values']}.{_suggest(name, spec['split_values'])}"
                )
            if not isinstance(f, (int, float)) or not np.isfinite(f) or f < 0:
                raise MedgenValueError(
                    f"split(fractions=...): fraction of {name!r} must be a number >= 0, not {f!r}."
                )
        total = float(sum(fr.values()))
        if abs(total - 1.0) > 1e-6:
            raise MedgenValueError(
                f"split(fractions={fr}): fractions must sum to 1, not {total:g}. "
                "Scale them, e.g. {'train': 0.7, 'val': 0.15, 'test': 0.15}."
            )
        if isinstance(stratify, str):
            stratify = (stratify,)
        if tuple(stratify) == ("label",) and "label" not in self._df.columns:
            logger.info("split: the manifest has no 'label' column; splitting unstratified")
            stratify = ()
        for c in stratify:
            if c not in self._df.columns:
                raise MedgenValueError(
                    f"split(stratify=...): the manifest has no column {c!r}; its columns are "
                    f"{list(self._df.columns)}.{_suggest(c, self._df.columns)}"
                )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise MedgenValueError(f"split(seed=...): seed must be an int, not {seed!r}.")
        assigned = self._df["split"].ne("")
        if assigned.any() and not overwrite:
            raise ManifestError(
                f"{self._source_name}: {int(assigned.sum())} of {len(self)} images already have a "
                f"split ({self.splits}). Pass overwrite=True to reassign every subject, or "
                "select(split='') to split only the unassigned ones."
            )
        names = list(fr)
        probs = np.array([fr[n] for n in names], dtype=float)

        subj = self._df["subject_id"]
        order = subj.drop_duplicates().tolist()  # row order of first appearance
        if stratify:
            majority = {c: _majority_by_subject(self._df, c) for c in stratify}
            strata = pd.DataFrame(majority).reindex(order)
            keys = strata.astype(object).where(strata.notna(), _MISSING_GROUP)
            stratum_of = keys.apply(lambda r: tuple(str(v) for v in r), axis=1)
        else:
            stratum_of = pd.Series([()] * len(order), index=order, dtype=object)

        rng = np.random.default_rng(int(seed))
        assignment: dict[str, str] = {}
        groups: dict[tuple[str, ...], list[str]] = {}
        for subject, key in stratum_of.items():
            groups.setdefault(key, []).append(str(subject))
        if stratify and len(order) >= 10 and len(groups) > len(order) / 2:
            logger.warning(
                "split(stratify=%s): %d strata for %d subjects, so most strata hold one subject "
                "and stratification does little; stratify on binned columns (e.g. age_group "
                "instead of age) or fewer columns.",
                list(stratify),
                len(groups),
                len(order),
            )
        for key in sorted(groups):
            members = sorted(groups[key])
            members = [members[i] for i in rng.permutation(len(members))]
            counts = _allocate(len(members), probs, rng)
            start = 0
            for name, k in zip(names, counts, strict=True):
                for s in members[start : start + k]:
                    assignment[s] = name
                start += k
        df = self._df.copy()
        df["split"] = subj.map(assignment).astype("string")
        op = {
            "op": "split",
            "seed": int(seed),
            "fractions": fr,
            "stratify": list(stratify),
            "unit": "subject",
            "n_strata": len(groups),
        }
        logger.info("split %d subjects with %s", len(order), op)
        return self._derive(df, op)

    # ------------------------------------------------------------------ writing
    def to_manifest(self, path: PathLike, *, relative: bool = True) -> Path:
        """Write the manifest to ``path`` (``.csv`` or ``.parquet``), atomically.

        Paths are written relative to the new file's folder (``relative=False`` keeps them
        absolute). The table is written to a temporary file in the same folder and renamed, so an
        existing manifest is never left half-written.

        Returns:
            The path written.
        """
        out = Path(path).expanduser()
        suffix = out.suffix.lower()
        if suffix not in _spec()["file_formats"]:
            raise MedgenValueError(
                f"to_manifest({str(out)!r}): use a path ending in "
                f"{', '.join(_spec()['file_formats'])}."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = out.resolve().parent
        df = self._df.copy()
        if relative:
            for col in _path_columns(df.columns):
                df[col] = _relative_paths(df[col], folder)
        return write_table(df, out, what="to_manifest")

    # ------------------------------------------------------------------ datasets
    def records(
        self, *, keys: Sequence[str] = ("image",), columns: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """The data list handed to MONAI: one dict per row.

        Each dict holds ``<key>`` -> absolute path string for every key in ``keys`` (``"image"``
        reads ``image_path``, ``"mask"`` reads ``mask_path``, any ``k`` reads ``k_path``),
        ``image_id``, ``subject_id``, the label columns and the attributes (or ``columns``).
        Missing strings become ``""`` and missing numbers ``nan`` so batches collate.
        """
        path_cols = {}
        for k in keys:
            col = "image_path" if k == "image" else f"{k}_path"
            if col not in self._df.columns:
                raise MedgenValueError(
                    f"dataset(keys={list(keys)}): key {k!r} reads column {col!r}, which the "
                    f"manifest does not have; path columns are "
                    f"{[c for c in self._df.columns if c.endswith('_path')]}."
                )
            missing = _is_missing(self._df[col])
            if missing.any():
                raise ManifestError(
                    f"{self._source_name}: column {col!r} is empty for image_ids "
                    f"{_list_some(self._df.loc[missing, 'image_id'].tolist())}; drop those rows "
                    f"(select) or leave {k!r} out of keys."
                )
            path_cols[k] = col
        cols = (
            ["image_id", "subject_id", *self.label_columns, *self.attributes]
            if columns is None
            else ["image_id", *[c for c in columns if c != "image_id"]]
        )
        data: dict[str, list[Any]] = {
            k: self._df[c].astype(str).tolist() for k, c in path_cols.items()
        }
        for c in cols:
            s = self._df[c]
            if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
                data[c] = s.astype("float64" if s.isna().any() else s.dtype).tolist()
            else:
                data[c] = s.astype(object).where(s.notna(), "").astype(str).tolist()
        n = len(self._df)
        return [{k: v[i] for k, v in data.items()} for i in range(n)]

    def dataset(
        self,
        transform: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
        *,
        split: str | Sequence[str] | None = None,
        cache: CacheMode = None,
        cache_dir: PathLike | None = None,
        keys: Sequence[str] = ("image",),
        spatial_dims: int | None = None,
        num_workers: int = 0,
        progress: bool = False,
    ) -> Dataset:
        """A MONAI dataset over this cohort.

        Items are dicts ``{"image": MetaTensor, "image_id": str, "subject_id": str, <labels>,
        <attributes>}``. Images are loaded with :func:`medgen.io.load` by :class:`LoadImaged`
        (placed first, so ``transform`` receives loaded images and composes with any MONAI
        dictionary transform). Shapes are channel-first: ``(C, X, Y, Z)`` for volumes; with
        ``spatial_dims=2`` a singleton last axis (a single DICOM slice) is squeezed to
        ``(C, X, Y)``.

        Args:
            transform: MONAI dict transform(s) applied after loading (deterministic ones are
                cached, caching stops at the first random transform).
            split: only rows of this split (or splits).
            cache: ``None`` (``monai.data.Dataset``, loads every epoch), ``"memory"``
                (``CacheDataset``, loads once into RAM) or ``"disk"`` (``PersistentDataset``
                under ``cache_dir``; entries are keyed by image path + file size + mtime + a hash
                of the deterministic transforms, so a changed file or transform is recomputed).
            cache_dir: folder of the disk cache (required with ``cache="disk"``).
            keys: image keys to load: ``"image"`` (``image_path``), ``"mask"`` (``mask_path``)...
            spatial_dims: ``2`` to squeeze a singleton slice axis, ``3``/``None`` to keep it.
            num_workers: threads that fill the memory cache.
            progress: show a progress bar while filling the memory cache.

        Returns:
            ``monai.data.Dataset``, ``monai.data.CacheDataset`` or ``monai.data.PersistentDataset``.
        """
        from medgen._cohort_dataset import build_dataset

        cohort = self if split is None else self.select(split=split)
        return build_dataset(
            cohort.records(keys=keys),
            transform,
            cache=cache,
            cache_dir=cache_dir,
            keys=tuple(keys),
            spatial_dims=spatial_dims,
            num_workers=num_workers,
            progress=progress,
        )

    # ------------------------------------------------------------------ combining
    @classmethod
    def concat(cls, cohorts: Sequence[Cohort]) -> Cohort:
        """Stack cohorts (e.g. real + synthetic). Ids must stay unique, subjects in one split."""
        if not cohorts:
            raise MedgenValueError("Cohort.concat([]): give at least one cohort.")
        df = pd.concat([c._df for c in cohorts], ignore_index=True)
        labels: list[str] = []
        for c in cohorts:
            labels += [x for x in c.label_columns if x not in labels]
        df = _validate(df, name="<concat>", root=None, check_files=False, label_columns=labels)
        return cls(
            df,
            root=cohorts[0].root,
            label_columns=labels,
            source_name="<concat>",
            history=({"op": "concat", "parts": [c._source_name for c in cohorts]},),
        )


def __getattr__(name: str) -> Any:
    # LoadImaged needs MONAI; import it only when asked for.
    if name == "LoadImaged":
        from medgen._cohort_dataset import LoadImaged

        return LoadImaged
    raise AttributeError(f"module 'medgen.cohort' has no attribute {name!r}")


# ---------------------------------------------------------------------- helpers
def _relative_paths(paths: pd.Series, folder: Path) -> pd.Series:
    """``os.path.relpath`` of each absolute path, computed once per parent directory."""
    cache: dict[str, str] = {}

    def rel(p: Any) -> Any:
        if not isinstance(p, str) or not p:
            return p
        parent, name = os.path.split(p)
        if parent not in cache:
            cache[parent] = os.path.relpath(parent, folder)
        return name if cache[parent] == "." else os.path.join(cache[parent], name)

    return paths.map(rel)


def _path_columns(columns: Iterable[str]) -> list[str]:
    """``image_path``, ``mask_path`` and any other column named ``*_path``, in table order."""
    suffix = _spec()["path_column_suffix"]
    fixed = _spec()["path_columns"]
    return [c for c in columns if c in fixed or str(c).endswith(suffix)]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple, set, frozenset)):
        items = [_jsonable(x) for x in v]
        # keep history small when selecting thousands of ids
        return items if len(items) <= 20 else {"n": len(items), "first": items[:5]}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _majority_by_subject(df: pd.DataFrame, col: str) -> pd.Series:
    """Each subject's most frequent value of ``col`` (missing counts as a value; ties go to the
    value seen first in row order). Indexed by subject_id."""
    tmp = pd.DataFrame(
        {
            "subject_id": df["subject_id"].to_numpy(),
            "value": df[col].astype(object).where(df[col].notna(), None).to_numpy(),
            "row": np.arange(len(df)),
        }
    )
    stats = tmp.groupby(["subject_id", "value"], dropna=False, sort=False)["row"].agg(
        ["size", "min"]
    )
    stats = stats.reset_index().sort_values(
        ["subject_id", "size", "min"], ascending=[True, False, True], kind="stable"
    )
    best = stats.drop_duplicates("subject_id", keep="first").set_index("subject_id")["value"]
    return best.astype(object).where(best.notna(), None)


def _allocate(n: int, probs: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Split ``n`` items into ``len(probs)`` counts: floors, then leftovers drawn by remainder."""
    exact = probs * n
    counts = np.floor(exact).astype(int)
    left = n - int(counts.sum())
    if left > 0:
        rem = exact - counts
        p = rem / rem.sum() if rem.sum() > 0 else probs / probs.sum()
        extra = rng.choice(len(probs), size=left, replace=False, p=p)
        counts[extra] += 1
    return counts.tolist()


def _validate(
    df: pd.DataFrame,
    *,
    name: str,
    root: Path | None,
    check_files: bool,
    label_columns: Sequence[str],
) -> pd.DataFrame:
    """Check a manifest against the schema; return it normalised (str ids, abs paths, split '')."""
    spec = _spec()
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
        miss = _is_missing(df[col])
        if miss.any():
            rows = (np.flatnonzero(miss.to_numpy()) + 2).tolist()  # +2: header line, 1-based
            raise ManifestError(
                f"Manifest {name}: column {col!r} is empty in {int(miss.sum())} row(s) (file lines "
                f"{_list_some(rows)}); fill it in or drop those rows."
            )
    string_cols = [c for c in spec["string_columns"] if c in df.columns]
    string_cols += [c for c in _path_columns(df.columns) if c not in string_cols]
    for col in string_cols:
        s = df[col]
        if not (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object):
            s = s.astype(object).where(s.notna(), None)  # ints/floats -> their str() below
        text = s.astype("string").str.strip()
        if col in _path_columns([col]) and col != "image_path":
            text = text.where(text.ne(""), pd.NA)
        df[col] = text
    df["split"] = df["split"].fillna("")

    dup = df["image_id"][df["image_id"].duplicated(keep=False)]
    if not dup.empty:
        ids = dup.drop_duplicates().tolist()
        raise ManifestError(
            f"Manifest {name}: column 'image_id' must be unique, but {len(ids)} id(s) appear more "
            f"than once: {_list_some(ids)}. Give every image its own id."
        )
    allowed_split = spec["split_values"]
    bad_split = sorted(set(df["split"].tolist()) - {*allowed_split, ""})
    if bad_split:
        b = bad_split[0]
        raise ManifestError(
            f"Manifest {name}: column 'split' has unknown value(s) {_list_some(bad_split)}; allowed "
            f"are {allowed_split} or empty (unassigned).{_suggest(b, allowed_split)}"
        )
    allowed_src = spec["source_values"]
    bad_src = sorted(set(df["source"].tolist()) - set(allowed_src))
    if bad_src:
        b = bad_src[0]
        raise ManifestError(
            f"Manifest {name}: column 'source' has unknown value(s) {_list_some(bad_src)}; allowed "
            f"are {allowed_src}.{_suggest(b, allowed_src)}"
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
        desc = [f"{s!r} in {sorted(v)}" for s, v in leaky.head(_MAX_LISTED).items()]
        more = f" (and {len(leaky) - _MAX_LISTED} more)" if len(leaky) > _MAX_LISTED else ""
        raise ManifestError(
            f"Manifest {name}: {len(leaky)} subject(s) have images in more than one split, which "
            f"leaks a person between train and evaluation: {'; '.join(desc)}{more}. Put all images "
            "of a subject in one split (Cohort.split(..., overwrite=True) does this)."
        )
    for col in spec["numeric_columns"]:
        if col in df.columns and not pd.api.types.is_numeric_dtype(df[col].dtype):
            conv = pd.to_numeric(df[col], errors="coerce")
            bad = df[col][conv.isna() & ~_is_missing(df[col])]
            if not bad.empty:
                raise ManifestError(
                    f"Manifest {name}: column {col!r} must be numeric; found "
                    f"{_list_some(bad.drop_duplicates().tolist())}. Use numbers (years for 'age')."
                )
            df[col] = conv
    if "age" in df.columns and (df["age"] < 0).any():
        bad = df.loc[df["age"] < 0, "image_id"].tolist()
        raise ManifestError(
            f"Manifest {name}: column 'age' is negative for image_ids {_list_some(bad)}; "
            "age is in years, >= 0."
        )

    # Paths: resolve against root; check existence.
    for col in _path_columns(df.columns):
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
                f"({_list_some(relative_without_root)}) but no folder to resolve them against. "
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
                    f"{col!r} do not exist: {_list_some(absent.tolist(), 3)}. Paths are relative "
                    f"to {str(root) if root else 'nothing (absolute)'}; pass root= if the images "
                    "live elsewhere, fix the paths, or check_files=False to skip this check."
                )
    for c in label_columns:
        if c in df.columns and c in required:
            raise ManifestError(f"label_columns: {c!r} is a required schema column, not a label.")
    return df.reset_index(drop=True)
