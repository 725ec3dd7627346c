"""The :class:`Cohort` class: a validated manifest with selection, counts, splits and datasets.

Imports only pandas/numpy; torch and MONAI are imported when :meth:`Cohort.dataset` is called.
Schema and validation live in :mod:`medgen.cohort._schema`, the split algorithm in
:mod:`medgen.cohort._splits`, datasets and the disk cache in :mod:`medgen.cohort._dataset` and
:mod:`medgen.cohort._cache`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from medgen._internal.files import write_table
from medgen._internal.types import PathLike
from medgen.cohort._schema import (
    is_missing,
    list_some,
    manifest_spec,
    path_columns,
    read_table,
    suggest,
    validate,
)
from medgen.cohort._splits import DEFAULT_FRACTIONS, assign_splits, check_fractions
from medgen.errors import ManifestError, MedgenValueError

if TYPE_CHECKING:
    from collections.abc import Callable

    from monai.data import Dataset

__all__ = ["CacheMode", "Cohort"]

logger = logging.getLogger(__name__)

CacheMode = Literal["memory", "disk"] | None
"""``Cohort.dataset(cache=...)``: ``None`` (no cache), ``"memory"`` or ``"disk"``."""


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
            df = read_table(path)
            base = Path(root).expanduser().resolve() if root is not None else path.resolve().parent
        labels = (
            tuple(label_columns)
            if label_columns is not None
            else tuple(manifest_spec()["label_columns"])
        )
        df = validate(df, name=name, root=base, check_files=check_files, label_columns=labels)
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
        spec = manifest_spec()
        bookkeeping = set(spec["required_columns"]) | set(path_columns(self._df.columns))
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
        spec = manifest_spec()
        conds: dict[str, Any] = dict(col_values)
        if split is not None:
            allowed = [*spec["split_values"], ""]
            for s in [split] if isinstance(split, str) else split:
                if s not in allowed:
                    raise MedgenValueError(
                        f"select(split={s!r}): unknown split; use one of {spec['split_values']} "
                        f"or '' for unassigned.{suggest(s, spec['split_values'])}"
                    )
            conds["split"] = split
        if source is not None:
            for s in [source] if isinstance(source, str) else source:
                if s not in spec["source_values"]:
                    raise MedgenValueError(
                        f"select(source={s!r}): unknown source; use one of "
                        f"{spec['source_values']}.{suggest(s, spec['source_values'])}"
                    )
            conds["source"] = source
        mask = pd.Series(True, index=self._df.index)
        for col, want in conds.items():
            if col not in self._df.columns:
                raise MedgenValueError(
                    f"select({col}=...): the manifest has no column {col!r}; its columns are "
                    f"{list(self._df.columns)}.{suggest(col, self._df.columns)}"
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
                    f"{self.attributes}.{suggest(c, self._df.columns)}"
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
        fr = check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
        if isinstance(stratify, str):
            stratify = (stratify,)
        if tuple(stratify) == ("label",) and "label" not in self._df.columns:
            logger.info("split: the manifest has no 'label' column; splitting unstratified")
            stratify = ()
        for c in stratify:
            if c not in self._df.columns:
                raise MedgenValueError(
                    f"split(stratify=...): the manifest has no column {c!r}; its columns are "
                    f"{list(self._df.columns)}.{suggest(c, self._df.columns)}"
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
        split_col, n_strata = assign_splits(
            self._df, fractions=fr, stratify=stratify, seed=int(seed)
        )
        df = self._df.copy()
        df["split"] = split_col
        op = {
            "op": "split",
            "seed": int(seed),
            "fractions": fr,
            "stratify": list(stratify),
            "unit": "subject",
            "n_strata": n_strata,
        }
        logger.info("split %d subjects with %s", len(self.subjects), op)
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
        if suffix not in manifest_spec()["file_formats"]:
            raise MedgenValueError(
                f"to_manifest({str(out)!r}): use a path ending in "
                f"{', '.join(manifest_spec()['file_formats'])}."
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = out.resolve().parent
        df = self._df.copy()
        if relative:
            for col in path_columns(df.columns):
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
            missing = is_missing(self._df[col])
            if missing.any():
                raise ManifestError(
                    f"{self._source_name}: column {col!r} is empty for image_ids "
                    f"{list_some(self._df.loc[missing, 'image_id'].tolist())}; drop those rows "
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
        retain: Sequence[str] = (),
    ) -> Dataset:
        """A MONAI dataset over this cohort.

        Items are dicts ``{"image": MetaTensor, "image_id": str, "subject_id": str, <labels>,
        <attributes>}``. Images are loaded with :func:`medgen.io.load` by
        :class:`medgen.io.LoadImaged` (placed first, so ``transform`` receives loaded images and
        composes with any MONAI dictionary transform). Shapes are channel-first: ``(C, X, Y, Z)`` for volumes; with
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
            retain: de-identification retain options whose header fields stay in the items'
                ``image.meta`` (and caches); by default only technical fields and geometry do
                (docs/privacy.md).

        Returns:
            ``monai.data.Dataset``, ``monai.data.CacheDataset`` or ``monai.data.PersistentDataset``.
        """
        from medgen.cohort._dataset import build_dataset

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
            retain=tuple(retain),
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
        df = validate(df, name="<concat>", root=None, check_files=False, label_columns=labels)
        return cls(
            df,
            root=cohorts[0].root,
            label_columns=labels,
            source_name="<concat>",
            history=({"op": "concat", "parts": [c._source_name for c in cohorts]},),
        )


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


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple, set, frozenset)):
        items = [_jsonable(x) for x in v]
        # keep history small when selecting thousands of ids
        return items if len(items) <= 20 else {"n": len(items), "first": items[:5]}
    if isinstance(v, np.generic):
        return v.item()
    return v
