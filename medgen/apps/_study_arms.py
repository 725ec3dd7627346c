"""The arms of the augmentation study: which rows each arm trains on, and how they are sampled.

Everything here is table work on manifests (pandas/numpy only): the study's real data are split
into a common real test split (never trained on), a validation split shared by every arm, and
the real training rows; each arm adds rows (synthetic or user-supplied) to the training rows or
changes how they are sampled or augmented. :func:`plan_arm` returns the training cohort and the
:func:`medgen.classify.train` options of one arm and seed, with its per-cell row counts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, ManifestError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd

    from medgen.cohort import Cohort

log = logging.getLogger(__name__)

#: The built-in arms, in the order the report shows them.
STUDY_ARMS: tuple[str, ...] = (
    "real",
    "reweight",
    "augment",
    "focal",
    "synthetic-balanced",
    "synthetic-only",
)
#: The arms that need synthetic images (``synthetic=`` or ``synthesizer=``).
SYNTHETIC_ARMS: tuple[str, ...] = ("synthetic-balanced", "synthetic-only")
#: The focusing parameter of the ``focal`` arm (Lin et al. 2017's usual value).
FOCAL_GAMMA = 2.0
#: The arm every other arm is compared with.
BASELINE = "real"
#: Keys of a user-defined arm given as a mapping.
CUSTOM_ARM_KEYS = ("name", "extra", "weight", "train")
#: ``train`` options the study sets itself (per arm or per seed); refused in ``classifier=``.
STUDY_CONTROLLED = (
    "target",
    "seed",
    "balance",
    "synthetic_fraction",
    "out_dir",
    "resume",
    "overwrite",
    "progress",
    "distributed",
)
#: Separators allowed between several ids in one ``derived_from`` cell.
_ID_SEPARATORS = ("|", ";", ",")


class ArmWarning(UserWarning):
    """A study arm could not be built exactly as asked (e.g. too few synthetic rows of a cell)."""


@dataclass(frozen=True)
class ArmSpec:
    """One arm of the study.

    Attributes:
        name: the arm's name (a file-name-safe string).
        kind: a built-in arm name (:data:`STUDY_ARMS`) or ``"custom"``.
        extra: ``custom``: the cohort of extra training rows, or ``None`` (the real rows only).
        weight: ``custom``: the share of each epoch drawn from the extra rows (through
            :func:`medgen.classify.train`'s ``synthetic_fraction``; extra rows must be synthetic);
            ``None``: extra rows are drawn as often as real ones.
        train: ``custom``: :func:`medgen.classify.train` options that differ from the study's
            classifier settings (e.g. ``{"class_weights": True}``).
    """

    name: str
    kind: str
    extra: Any = None
    weight: float | None = None
    train: dict[str, Any] = field(default_factory=dict)


def parse_arms(arms: Sequence[str | Mapping[str, Any]]) -> list[ArmSpec]:
    """Turn ``arms=`` into :class:`ArmSpec` s, baseline first.

    Raises:
        ConfigError: an unknown arm name (the closest is suggested), a mapping with unknown
            keys or no name, duplicate names, no ``"real"`` arm, a bad weight or train option.
    """
    from medgen._internal.paths import safe_file_name

    if isinstance(arms, str | Mapping):
        arms = [arms]
    specs: list[ArmSpec] = []
    for arm in arms:
        if isinstance(arm, str):
            if arm not in STUDY_ARMS:
                raise ConfigError(
                    f"Unknown study arm {arm!r}.{did_you_mean(arm, STUDY_ARMS)} Built-in arms: "
                    f"{', '.join(STUDY_ARMS)}; a user-defined arm is a mapping "
                    '{"name": ..., "extra": <manifest>, "weight": w}.'
                )
            specs.append(ArmSpec(name=arm, kind=arm))
            continue
        if not isinstance(arm, Mapping):
            raise ConfigError(
                f"each arm must be a name ({', '.join(STUDY_ARMS)}) or a mapping with keys "
                f"{', '.join(CUSTOM_ARM_KEYS)}, not {type(arm).__name__}"
            )
        unknown = sorted(set(map(str, arm)) - set(CUSTOM_ARM_KEYS))
        if unknown:
            raise ConfigError(
                f"user-defined arm {dict(arm).get('name')!r}: unknown keys {unknown}; allowed "
                f"keys: {', '.join(CUSTOM_ARM_KEYS)}.{did_you_mean(unknown[0], CUSTOM_ARM_KEYS)}"
            )
        name = arm.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a user-defined arm needs a 'name' (a non-empty string): {arm!r}")
        if name in STUDY_ARMS:
            raise ConfigError(
                f"user-defined arm name {name!r} is a built-in arm; give it another name"
            )
        if safe_file_name(name, what="arm name") != name:
            raise ConfigError(
                f"arm name {name!r} must be usable as a file name: letters, digits and . _ + - "
                f"only (e.g. {safe_file_name(name, what='arm name')!r})"
            )
        weight = arm.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigError(
                    f"arm {name!r}: weight must be a number in (0, 1), not {weight!r}"
                )
            if not 0.0 < float(weight) < 1.0:
                raise ConfigError(
                    f"arm {name!r}: weight is the share of each epoch drawn from the extra rows "
                    f"and must be in (0, 1), not {weight!r}"
                )
            if arm.get("extra") is None:
                raise ConfigError(f"arm {name!r}: weight={weight} needs extra=<manifest of rows>")
        overrides = dict(arm.get("train") or {})
        check_train_options(overrides, what=f"arm {name!r}: train")
        specs.append(
            ArmSpec(
                name=name,
                kind="custom",
                extra=arm.get("extra"),
                weight=None if weight is None else float(weight),
                train=overrides,
            )
        )
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"arm names must be unique; repeated: {dupes}")
    if BASELINE not in names:
        raise ConfigError(
            f"arms must include {BASELINE!r}, the baseline every other arm is compared with "
            f"(got {names})"
        )
    if len(specs) < 2:
        raise ConfigError(
            f"a study compares arms with {BASELINE!r}: give at least one more arm, e.g. "
            "arms=('real', 'reweight')"
        )
    return sorted(specs, key=lambda s: s.name != BASELINE)


def check_train_options(options: Mapping[str, Any], *, what: str) -> None:
    """Refuse :func:`medgen.classify.train` options that the study sets itself."""
    import inspect

    from medgen.classify import train

    allowed = set(inspect.signature(train).parameters) - {"cohort"}
    for key in options:
        if key in STUDY_CONTROLLED:
            raise ConfigError(
                f"{what} option {key!r} is set by the study ({', '.join(STUDY_CONTROLLED)} are "
                "chosen per arm and seed); leave it out"
            )
        if key not in allowed:
            raise ConfigError(
                f"{what}: {key!r} is not an option of medgen.classify.train."
                f"{did_you_mean(key, sorted(allowed))}"
            )


# ---------------------------------------------------------------------------------------------
# the real data


def class_key(value: Any) -> str:
    """A label or attribute value as text, so 1, 1.0, numpy 1 and "1" name the same cell."""
    import math

    v = value.item() if hasattr(value, "item") else value
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "<missing>"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def cell_keys(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """One text key per row: the values of ``columns`` joined (see :func:`class_key`)."""
    import pandas as pd

    if not len(df):
        return pd.Series([], index=df.index, dtype=object)
    parts = [df[c].map(class_key) for c in columns]
    out = parts[0]
    for p in parts[1:]:
        out = out + "\x1f" + p
    return out.astype(object)


@dataclass
class StudyData:
    """The real data of a study, split once for every arm and seed.

    Attributes:
        cohort: the input cohort (real rows only).
        train: real training rows (absolute paths).
        val: validation rows shared by every arm (the cohort's ``val`` split, or training
            subjects carved out once with ``val_seed``).
        test: the common real test split.
        target, attributes: the label column and the columns whose cells are balanced.
        label_columns: label columns of the training cohorts.
        val_carved: whether ``val`` was carved out of the training subjects.
    """

    cohort: Cohort
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    target: str
    attributes: tuple[str, ...]
    label_columns: tuple[str, ...]
    val_carved: bool = False

    @property
    def classes(self) -> list[str]:
        """Target values of the real training rows (as cell keys), sorted."""
        return sorted(self.train[self.target].map(class_key).unique().tolist())

    @property
    def held_out(self) -> pd.DataFrame:
        """Rows no arm may train on or derive from: validation and test."""
        import pandas as pd

        return pd.concat([self.val, self.test], ignore_index=True)


def prepare_data(
    cohort: Cohort,
    *,
    target: str,
    attributes: Sequence[str],
    val_fraction: float = 0.2,
    val_seed: int = 0,
) -> StudyData:
    """Split the real cohort into training, validation and test rows for every arm.

    Raises:
        ManifestError: synthetic rows in the cohort, a missing target or attribute column,
            missing target values, no ``train`` or no ``test`` rows.
    """
    import numpy as np

    df = cohort.df
    columns = ", ".join(map(str, df.columns))
    for col in (target, *attributes):
        if col not in df.columns:
            what = "target" if col == target else "attribute"
            raise ManifestError(
                f"the cohort has no column {col!r} (the {what}); its columns: {columns}."
                f"{did_you_mean(col, df.columns)}"
            )
    syn = df["source"].astype(str) == "synthetic"
    if syn.any():
        raise ManifestError(
            f"the cohort holds {int(syn.sum())} synthetic rows (e.g. "
            f"{df.loc[syn, 'image_id'].astype(str).tolist()[:3]}); the study's cohort is the real "
            "data: drop them (cohort.select(source=['real', 'simulated'])) and pass synthetic "
            "images as synthetic=<manifest>"
        )
    split = df["split"].fillna("").astype(str).str.lower()
    train, val, test = df[split == "train"], df[split == "val"], df[split == "test"]
    if not len(test):
        raise ManifestError(
            f"the cohort has no 'test' rows (splits: {cohort.splits}); every arm is tested on the "
            "real test split: assign splits with cohort.split(...)"
        )
    if not len(train):
        raise ManifestError(
            f"the cohort has no 'train' rows (splits: {cohort.splits}); assign splits with "
            "cohort.split(...)"
        )
    for name, part in (("train", train), ("test", test)):
        missing = part[target].isna()
        if missing.any():
            raise ManifestError(
                f"target column {target!r} has {int(missing.sum())} missing values in the "
                f"{name} split (e.g. images {part.loc[missing, 'image_id'].tolist()[:5]}); fill "
                "them or drop those rows"
            )
    carved = False
    if not len(val):
        # carve validation subjects out of train once, so every arm and seed validates on the
        # same real rows (train() would carve per call, from rows that include synthetic ones)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), not {val_fraction!r}")
        subjects = train["subject_id"].astype(str).drop_duplicates().sort_values().to_numpy()
        n_val = max(1, round(len(subjects) * val_fraction))
        rng = np.random.default_rng(val_seed)
        chosen = set(rng.choice(subjects, size=n_val, replace=False).tolist())
        is_val = train["subject_id"].astype(str).isin(chosen)
        val = train[is_val].assign(split="val")
        train = train[~is_val]
        carved = True
        log.info("study: no 'val' split, carved %d training subjects out for validation", n_val)
    labels = tuple(dict.fromkeys([*cohort.label_columns, target]))
    return StudyData(
        cohort=cohort,
        train=train.reset_index(drop=True),
        val=val.reset_index(drop=True),
        test=test.reset_index(drop=True),
        target=target,
        attributes=tuple(attributes),
        label_columns=labels,
        val_carved=carved,
    )


def count_deficits(data: StudyData) -> pd.DataFrame:
    """Rows per label x attribute cell of the real training split and what balancing needs.

    Cells are every combination of the target's values and each attribute's values seen in the
    training rows (so a cell with no training row at all, e.g. no positive women, is a cell to
    fill). ``target_n`` is the largest cell's count; ``deficit = target_n - n``.

    Returns:
        DataFrame indexed by ``(<target>, *attributes)`` (values as text) with ``n``,
        ``target_n``, ``deficit``.
    """
    import itertools

    import pandas as pd

    cols = [data.target, *data.attributes]
    values = [sorted(data.train[c].map(class_key).unique().tolist()) for c in cols]
    cells = list(itertools.product(*values))
    keys = cell_keys(data.train, cols)
    counts = keys.value_counts()
    n = [int(counts.get("\x1f".join(cell), 0)) for cell in cells]
    top = max(n)
    index = pd.MultiIndex.from_tuples(cells, names=cols)
    return pd.DataFrame({"n": n, "target_n": top, "deficit": [top - k for k in n]}, index=index)


# ---------------------------------------------------------------------------------------------
# extra rows (synthetic manifests, user arms)


def load_extra(extra: Any, *, what: str) -> pd.DataFrame:
    """The manifest table of extra rows (absolute paths): a Cohort, a path or a DataFrame."""
    import pandas as pd

    from medgen.cohort import Cohort

    if isinstance(extra, Cohort):
        return extra.df
    if isinstance(extra, pd.DataFrame) and not len(extra):
        raise ManifestError(f"{what} has no rows")
    if isinstance(extra, str | Path):
        return Cohort.from_manifest(extra).df
    if isinstance(extra, pd.DataFrame):
        return Cohort.from_manifest(extra).df
    raise MedgenValueError(
        f"{what} must be a medgen.Cohort, a manifest path or a DataFrame, not {type(extra).__name__}"
    )


def _split_ids(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    text = str(value)
    for sep in _ID_SEPARATORS[1:]:
        text = text.replace(sep, _ID_SEPARATORS[0])
    return [t.strip() for t in text.split(_ID_SEPARATORS[0]) if t.strip()]


def check_leakage(extra: pd.DataFrame, data: StudyData, *, what: str) -> None:
    """Refuse extra rows that belong to, or derive from, held-out (validation/test) subjects.

    A row leaks when its ``subject_id`` is a validation or test subject, or when its
    ``derived_from`` (when present; one or several ids separated by ``|``, ``;`` or ``,``) names
    a held-out subject id, image id or image path.

    Raises:
        ManifestError: naming the subjects and the split they belong to.
    """
    import os

    held = data.held_out
    split_of: dict[str, str] = {}
    subject_of: dict[str, str] = {}
    for row in held[["subject_id", "image_id", "image_path", "split"]].itertuples(index=False):
        sid, iid, path, split = (str(v) for v in row)
        split_of[sid] = split
        subject_of[sid] = sid
        subject_of[iid] = sid
        subject_of[os.path.normpath(path)] = sid
    leaks: dict[str, set[str]] = {}  # held-out subject -> extra image ids
    derived = extra["derived_from"] if "derived_from" in extra.columns else [None] * len(extra)
    for iid, subject, origin in zip(extra["image_id"], extra["subject_id"], derived, strict=True):
        for ref in [str(subject), *_split_ids(origin)]:
            key = os.path.normpath(ref) if ("/" in ref or os.sep in ref) else ref
            hit = subject_of.get(key)
            if hit is not None:
                leaks.setdefault(hit, set()).add(str(iid))
    if not leaks:
        return
    by_split: dict[str, list[str]] = {}
    for sid in sorted(leaks):
        by_split.setdefault(split_of[sid], []).append(sid)
    n_rows = len(set().union(*leaks.values()))
    parts = []
    for split, subjects in sorted(by_split.items(), key=lambda kv: kv[0] != "test"):
        shown = ", ".join(subjects[:10]) + (
            f", ... ({len(subjects)} in all)" if len(subjects) > 10 else ""
        )
        parts.append(f"{len(subjects)} subjects of the {split} split ({shown})")
    raise ManifestError(
        f"{what}: {n_rows} rows belong to or derive from held-out subjects: "
        f"{'; '.join(parts)}. That leaks the images the arms are tested (or validated) on into "
        "training. Train the generator on the train split only (cohort.select(split='train')) "
        "and regenerate, or drop those rows."
    )


def check_extra(
    extra: pd.DataFrame, data: StudyData, *, what: str, need_attributes: bool
) -> pd.DataFrame:
    """Validate extra training rows and return them with ``split = "train"``.

    Raises:
        ManifestError: no rows, the target (or, for balancing, an attribute) missing, target
            values the real training rows do not have, rows assigned to ``val``/``test``, image
            ids that are also real ids, leakage (:func:`check_leakage`).
    """
    if not len(extra):
        raise ManifestError(f"{what} has no rows")
    cols = ", ".join(map(str, extra.columns))
    need = [data.target, *(data.attributes if need_attributes else ())]
    for col in need:
        if col not in extra.columns:
            role = "the target" if col == data.target else "an attribute the arm balances"
            raise ManifestError(
                f"{what} has no column {col!r} ({role}); its columns: {cols}. Write the "
                f"{col!r} of each image into the manifest (a synthesizer conditioned on it "
                "records it)."
            )
    missing = extra[data.target].isna()
    if missing.any():
        raise ManifestError(
            f"{what}: target column {data.target!r} is empty for {int(missing.sum())} rows "
            f"(e.g. {extra.loc[missing, 'image_id'].astype(str).tolist()[:5]})"
        )
    unknown = sorted(set(extra[data.target].map(class_key)) - set(data.classes))
    if unknown:
        raise ManifestError(
            f"{what}: target {data.target!r} has values {unknown} that the real training rows "
            f"do not have (classes: {data.classes})"
        )
    split = extra["split"].fillna("").astype(str).str.lower()
    bad = ~split.isin(["", "train"])
    if bad.any():
        raise ManifestError(
            f"{what}: {int(bad.sum())} rows have split {sorted(set(split[bad]))}; extra rows only "
            "train (the study tests on the real test split): give them split '' or 'train'"
        )
    real_ids = set(data.cohort.image_ids)
    clash = [i for i in extra["image_id"].astype(str) if i in real_ids]
    if clash:
        raise ManifestError(
            f"{what}: image ids {clash[:5]} (of {len(clash)}) are also ids of the real cohort; "
            "extra rows need their own ids"
        )
    check_leakage(extra, data, what=what)
    return extra.assign(split="train").reset_index(drop=True)


def fill_deficit(
    pool: pd.DataFrame,
    data: StudyData,
    *,
    seed: int,
    shortage: str = "error",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Choose the synthetic rows that fill each cell up to the largest real cell.

    Per cell (in :func:`count_deficits` order) ``deficit`` rows are drawn without replacement
    from the pool's rows of that cell, ordered by ``image_id`` and permuted by
    ``numpy.random.default_rng([seed, 1])``: the same pool and seed give the same rows, whatever
    the manifest's row order.

    Args:
        pool: validated synthetic rows (:func:`check_extra`).
        data: the study's real data.
        seed: the replicate's seed.
        shortage: a cell whose pool has fewer rows than its deficit: ``"error"`` raises,
            ``"warn"`` takes every row of the cell, warns (:class:`ArmWarning`) and records the
            shortfall.

    Returns:
        ``(chosen rows, per-cell table)``: the table is :func:`count_deficits` plus
        ``available`` (pool rows of the cell) and ``filled``.

    Raises:
        ManifestError: ``shortage="error"`` and a cell is short (the message lists every short
            cell with its deficit and the pool's count).
    """
    import numpy as np
    import pandas as pd

    if shortage not in ("error", "warn"):
        raise ConfigError(f"shortage must be 'error' or 'warn', not {shortage!r}")
    table = count_deficits(data)
    cols = [data.target, *data.attributes]
    keys = cell_keys(pool, cols)
    order = pool.assign(_key=keys).sort_values("image_id", kind="stable")
    rng = np.random.default_rng([int(seed), 1])
    chosen: list[pd.DataFrame] = []
    available, filled, short = [], [], []
    for cell, row in table.iterrows():
        cell_t = cell if isinstance(cell, tuple) else (cell,)
        cands = order[order["_key"] == "\x1f".join(map(str, cell_t))]
        need = int(row["deficit"])
        available.append(len(cands))
        take = min(need, len(cands))
        if need > len(cands):
            short.append((cell_t, need, len(cands)))
        if take:
            pick = rng.permutation(len(cands))[:take]
            chosen.append(cands.iloc[np.sort(pick)])
        filled.append(take)
    table = table.assign(available=available, filled=filled)
    if short:
        desc = "; ".join(
            f"{', '.join(f'{c}={v}' for c, v in zip(cols, cell, strict=True))}: needs {need}, "
            f"the manifest has {have}"
            for cell, need, have in short
        )
        msg = (
            f"synthetic-balanced: the synthetic manifest has too few images of some cells ({desc})"
        )
        if shortage == "error":
            raise ManifestError(
                f"{msg}. Generate more images of those cells, or pass shortage='warn' to use "
                "every image there is (the arm is then not fully balanced)."
            )
        warnings.warn(f"{msg}; using every image there is.", ArmWarning, stacklevel=3)
    rows = pd.concat(chosen, ignore_index=True) if chosen else pool.iloc[:0]
    return rows.drop(columns="_key", errors="ignore"), table


# ---------------------------------------------------------------------------------------------
# one arm, one seed


@dataclass
class ArmPlan:
    """What one arm trains on for one seed.

    Attributes:
        name: the arm.
        seed: the replicate.
        rows: training rows (real and extra; ``split == "train"``) plus the shared validation rows.
        options: :func:`medgen.classify.train` options of this arm on top of the study's.
        counts: rows per cell: ``n_real``, ``n_extra``, ``n`` and ``share`` (expected share of
            each epoch's draws, from the sampling rule).
        fill: ``synthetic-balanced``: the per-cell deficit table of :func:`fill_deficit`.
    """

    name: str
    seed: int
    rows: pd.DataFrame
    options: dict[str, Any]
    counts: pd.DataFrame
    fill: pd.DataFrame | None = None

    def cohort(self, data: StudyData) -> Cohort:
        """The arm's training cohort (absolute paths; validated by :class:`medgen.Cohort`)."""
        from medgen.cohort import Cohort

        return Cohort.from_manifest(self.rows, label_columns=data.label_columns)


def _counts(
    train_rows: pd.DataFrame, is_extra: Any, data: StudyData, *, balance: bool, weight: float | None
) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    base = count_deficits(data)[[]]
    cols = [data.target, *data.attributes]
    keys = cell_keys(train_rows, cols)
    extra = np.asarray(is_extra, dtype=bool)
    real_n = keys[~extra].value_counts()
    extra_n = keys[extra].value_counts()
    idx_keys = ["\x1f".join(map(str, c if isinstance(c, tuple) else (c,))) for c in base.index]
    # cells an extra row adds that the real rows lack (possible for user arms)
    for k in list(extra_n.index):
        if k not in idx_keys:
            idx_keys.append(k)
    index = pd.MultiIndex.from_tuples([tuple(k.split("\x1f")) for k in idx_keys], names=cols)
    out = pd.DataFrame(
        {
            "n_real": [int(real_n.get(k, 0)) for k in idx_keys],
            "n_extra": [int(extra_n.get(k, 0)) for k in idx_keys],
        },
        index=index,
    )
    out["n"] = out["n_real"] + out["n_extra"]
    total = max(int(out["n"].sum()), 1)
    if balance:
        nonempty = out["n"] > 0
        out["share"] = np.where(nonempty, 1.0 / max(int(nonempty.sum()), 1), 0.0)
    elif weight is not None:
        r, e = max(int(out["n_real"].sum()), 1), max(int(out["n_extra"].sum()), 1)
        out["share"] = (1 - weight) * out["n_real"] / r + weight * out["n_extra"] / e
    else:
        out["share"] = out["n"] / total
    return out


def plan_arm(
    spec: ArmSpec,
    data: StudyData,
    *,
    seed: int,
    synthetic: pd.DataFrame | None,
    base_augment: str,
    augment_preset: str,
    shortage: str = "error",
    synthetic_only: pd.DataFrame | None = None,
    base_options: Mapping[str, Any] | None = None,
) -> ArmPlan:
    """The rows and options of arm ``spec`` for replicate ``seed``.

    ``synthetic`` fills ``synthetic-balanced``; ``synthetic-only`` trains on ``synthetic_only``
    when given (the study's generated "tstr" pool), else on every row of ``synthetic``.

    Raises:
        ConfigError: a synthetic arm without synthetic rows, an ``augment`` arm that would not
            change the augmentation, a user arm whose weight needs synthetic rows.
        ManifestError: an arm without training rows, bad extra rows (:func:`check_extra`),
            a short cell (:func:`fill_deficit`).
    """
    import numpy as np
    import pandas as pd

    base_options = dict(base_options or {})
    real = data.train
    extra = real.iloc[:0]
    options: dict[str, Any] = {}
    fill = None
    balance = False
    weight = None
    use_real = True
    if spec.kind in SYNTHETIC_ARMS and synthetic is None:
        raise ConfigError(
            f"arm {spec.name!r} needs synthetic images: pass synthetic=<manifest of generated "
            "images with source=synthetic, the target and the attribute columns>"
        )
    if spec.kind == "reweight":
        options["balance"] = [data.target, *data.attributes]
        balance = True
    elif spec.kind == "augment":
        if augment_preset == base_augment:
            raise ConfigError(
                f"the 'augment' arm uses augment={augment_preset!r}, which the classifier "
                f"settings already use for every arm; pass a stronger augment_preset= or a "
                "lighter classifier={'augment': ...}"
            )
        options["augment"] = augment_preset
    elif spec.kind == "focal":
        if "focal_gamma" in base_options:
            raise ConfigError(
                "the 'focal' arm trains with focal_gamma=2, but classifier= already sets "
                f"focal_gamma={base_options['focal_gamma']!r} for every arm; drop it from "
                "classifier= (or use a user-defined arm with train={'focal_gamma': ...})"
            )
        options["focal_gamma"] = FOCAL_GAMMA
    elif spec.kind == "synthetic-balanced":
        assert synthetic is not None
        extra, fill = fill_deficit(synthetic, data, seed=seed, shortage=shortage)
        if not len(extra):
            log.warning(
                "synthetic-balanced: the real training cells are already balanced; the arm "
                "trains on the real rows only"
            )
    elif spec.kind == "synthetic-only":
        assert synthetic is not None
        extra = synthetic if synthetic_only is None else synthetic_only
        use_real = False
    elif spec.kind == "custom":
        if spec.extra is not None:
            extra = check_extra(
                load_extra(spec.extra, what=f"arm {spec.name!r}: extra"),
                data,
                what=f"arm {spec.name!r}: extra",
                need_attributes=False,
            )
        if spec.weight is not None:
            if not (extra["source"].astype(str) == "synthetic").all():
                raise ConfigError(
                    f"arm {spec.name!r}: weight= sets the share of synthetic rows in each epoch "
                    "(train's synthetic_fraction), so every extra row must have "
                    "source == 'synthetic'; drop weight to mix real extra rows in at their count"
                )
            options["synthetic_fraction"] = spec.weight
            weight = spec.weight
        options.update(spec.train)
    train_rows = pd.concat([real, extra], ignore_index=True) if use_real else extra
    if not len(train_rows):
        raise ManifestError(f"arm {spec.name!r} has no training rows")
    is_extra = np.r_[np.zeros(len(real) if use_real else 0, bool), np.ones(len(extra), bool)]
    counts = _counts(train_rows, is_extra, data, balance=balance, weight=weight)
    rows = pd.concat([train_rows, data.val], ignore_index=True)
    return ArmPlan(spec.name, int(seed), rows, options, counts, fill)
