"""``audit()``: per-group metrics, bootstrap CIs, disparities and a summary in one call."""

from __future__ import annotations

import hashlib
import itertools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from medgen._version import __version__
from medgen.audit._bootstrap import bootstrap_metrics, cluster_map, percentile_ci
from medgen.audit._disparity import P_ADJUST, adjust_pvalues, bootstrap_pvalue
from medgen.audit._metrics import ECE_EDGES, METRICS, build_cells, cell_metrics, row_order
from medgen.audit._multiclass import audit_multiclass, multiclass_score_columns
from medgen.audit._threshold import ThresholdSpec, resolve_threshold
from medgen.errors import MedgenValueError, MetricWarning

if TYPE_CHECKING:
    from medgen.audit._report import AuditReport

__all__ = ["DISPARITY_METRICS", "MISSING_LABEL", "Grouping", "RowData", "audit"]

logger = logging.getLogger(__name__)

#: Label of the group formed by missing sensitive values.
MISSING_LABEL = "<missing>"
#: Metrics compared against the reference group in ``AuditReport.disparities``.
DISPARITY_METRICS: tuple[str, ...] = tuple(m for m in METRICS if m != "prevalence")
#: Attribute / group names of the whole population in ``AuditReport.overall``.
OVERALL = ("overall", "all")
_JOIN = " & "


@dataclass(frozen=True)
class Grouping:
    """One audited attribute: a sensitive column or an intersection of several.

    Attributes:
        name: ``"sex"`` or ``"sex & site"``.
        columns: the sensitive columns it combines.
        codes: ``(N,)`` group code of each row (0..G-1).
        labels: ``(G,)`` group names (values as strings, joined by ``" & "``).
    """

    name: str
    columns: tuple[str, ...]
    codes: NDArray[np.int64]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class RowData:
    """The validated rows an audit was computed from (kept for curves and paired comparisons)."""

    y: NDArray[np.int8]
    score: NDArray[np.float64]
    threshold: NDArray[np.float64]
    groupings: tuple[Grouping, ...]
    cluster: NDArray[np.int64] | None = None

    @property
    def pred(self) -> NDArray[np.bool_]:
        """``(N,)`` decisions ``score >= threshold``."""
        return self.score >= self.threshold


def _missing_column(data: pd.DataFrame, column: object, argument: str) -> MedgenValueError:
    available = ", ".join(repr(str(c)) for c in data.columns[:50])
    more = "" if len(data.columns) <= 50 else f" (and {len(data.columns) - 50} more)"
    return MedgenValueError(
        f"{argument}={column!r}: no such column in the data; available columns: {available}{more}"
    )


def _labels(data: pd.DataFrame, column: str) -> NDArray[np.int8]:
    col = data[column]
    if col.isna().any():
        rows = list(col.index[col.isna()][:5])
        raise MedgenValueError(
            f"y_true column {column!r} has {int(col.isna().sum())} missing values (e.g. rows "
            f"{rows}); drop or label those rows before auditing"
        )
    if pd.api.types.is_bool_dtype(col):
        return col.to_numpy(dtype=np.int8)
    values = pd.unique(col)
    ok = pd.api.types.is_numeric_dtype(col) and set(np.asarray(values, dtype=float)) <= {0.0, 1.0}
    if not ok:
        shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:6])
        raise MedgenValueError(
            f"y_true column {column!r} must be binary with values 0/1 (or bool); found {shown}"
            f"{' ...' if len(values) > 6 else ''}. Map it first, e.g. "
            f"data[{column!r}] = (data[{column!r}] == <positive value>).astype(int)"
        )
    return col.to_numpy(dtype=np.float64).astype(np.int8)


def _scores(data: pd.DataFrame, column: str) -> NDArray[np.float64]:
    col = data[column]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise MedgenValueError(
            f"y_score column {column!r} must hold numeric probabilities, not dtype {col.dtype}"
        )
    s = col.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        rows = list(col.index[bad][:5])
        raise MedgenValueError(
            f"y_score column {column!r} has {int(bad.sum())} missing or infinite values (e.g. "
            f"rows {rows}); drop those rows or fix the predictions"
        )
    lo, hi = float(s.min()), float(s.max())
    if lo < 0.0 or hi > 1.0:
        raise MedgenValueError(
            f"y_score column {column!r} must hold probabilities in [0, 1] but ranges over "
            f"[{lo:.6g}, {hi:.6g}]; if these are logits apply a sigmoid first "
            f"(scipy.special.expit)"
        )
    return s


#: A single sensitive column with more groups than this is refused (probably continuous).
MAX_GROUPS = 100


def _encode(data: pd.DataFrame, column: str) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    col = data[column]
    try:
        codes, uniques = pd.factorize(col, sort=True, use_na_sentinel=True)
    except TypeError:  # mixed types that cannot be sorted
        codes, uniques = pd.factorize(col, sort=False, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append(MISSING_LABEL)
    if len(set(labels)) != len(labels):
        raise MedgenValueError(
            f"sensitive column {column!r} has distinct values with the same text "
            f"({labels}); convert it to strings first"
        )
    if len(labels) > MAX_GROUPS:
        raise MedgenValueError(
            f"sensitive column {column!r} has {len(labels)} distinct values (more than "
            f"{MAX_GROUPS}); a continuous attribute must be binned first, e.g. "
            f"data[{column + '_group'!r}] = pd.cut(data[{column!r}], [0, 40, 65, 120])"
        )
    if len(labels) < 2:
        raise MedgenValueError(
            f"sensitive column {column!r} has a single value ({labels[0]!r}) in all "
            f"{len(col)} rows, so there is nothing to compare; leave it out of `sensitive`"
        )
    return codes, tuple(labels)


def _intersect(parts: Sequence[Grouping]) -> Grouping:
    code = np.zeros(parts[0].codes.shape[0], dtype=np.int64)
    for p in parts:
        code = code * len(p.labels) + p.codes
    uniq, inverse = np.unique(code, return_inverse=True)
    labels = []
    for u in uniq:
        names = []
        for p in reversed(parts):
            names.append(p.labels[int(u % len(p.labels))])
            u //= len(p.labels)
        labels.append(_JOIN.join(reversed(names)))
    cols = tuple(c for p in parts for c in p.columns)
    return Grouping(_JOIN.join(cols), cols, inverse.astype(np.int64), tuple(labels))


def _thresholds(
    threshold: ThresholdSpec | Mapping[str, ThresholdSpec],
    threshold_by: Grouping | None,
    y: NDArray[np.int8],
    s: NDArray[np.float64],
) -> tuple[NDArray[np.float64], dict[str, float]]:
    if threshold_by is None:
        if isinstance(threshold, Mapping):
            raise MedgenValueError(
                "threshold is a mapping of groups to thresholds; name the column it refers to "
                "with threshold_by=<column>"
            )
        t = resolve_threshold(threshold, y, s, where="the whole population")
        return np.full(s.shape[0], t), {"all": t}
    per_row = np.empty(s.shape[0], dtype=np.float64)
    resolved: dict[str, float] = {}
    for g, label in enumerate(threshold_by.labels):
        rows = threshold_by.codes == g
        if isinstance(threshold, Mapping):
            if label not in threshold:
                raise MedgenValueError(
                    f"threshold has no entry for group {label!r} of column "
                    f"{threshold_by.name!r}; give one for each of {list(threshold_by.labels)}"
                )
            spec = threshold[label]
        else:
            spec = threshold
        t = resolve_threshold(spec, y[rows], s[rows], where=f"group {threshold_by.name}={label}")
        per_row[rows] = t
        resolved[f"{threshold_by.name}={label}"] = t
    return per_row, resolved


def _boot_key(
    s: NDArray[np.float64],
    exact_key: NDArray[np.int64],
    n_unique: int,
    thresholds: NDArray[np.float64],
    boot_bins: int,
) -> tuple[NDArray[np.int64], int, str]:
    """Score key of the bootstrap cells: exact if few distinct scores, else quantile bins."""
    if n_unique <= boot_bins:
        return exact_key, n_unique, "exact"
    q = np.quantile(s, np.linspace(0.0, 1.0, boot_bins + 1)[1:-1])
    edges = np.unique(np.concatenate([q, np.unique(thresholds), ECE_EDGES]))
    key = np.searchsorted(edges, s, side="right").astype(np.int64)
    return key, int(edges.shape[0]) + 1, f"binned ({edges.shape[0] + 1} score bins)"


def _frame(
    grouping_name: str, labels: Sequence[str], values: Mapping[str, NDArray[Any]]
) -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays(
        [[grouping_name] * len(labels), list(labels)], names=["attribute", "group"]
    )
    return pd.DataFrame(dict(values), index=index)


def audit(
    data: pd.DataFrame,
    *,
    y_true: str = "y_true",
    y_score: str | Sequence[str] = "y_score",
    sensitive: str | Sequence[str],
    threshold: ThresholdSpec | Mapping[str, ThresholdSpec] = 0.5,
    threshold_by: str | None = None,
    reference: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    intersections: bool = True,
    min_group_size: int = 30,
    p_adjust: str = "holm",
    tolerance: tuple[float, float] = (0.8, 1.25),
    boot_bins: int = 250,
    cluster: str | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> AuditReport:
    """Audit a classifier's predictions for every subgroup.

    Binary: ``y_score`` is one column. Multi-class (``K`` classes): ``y_score`` is a list of ``K``
    probability columns in class order, or a prefix ``p`` when the table has no column ``p`` but
    columns ``p_<class>`` (as ``Classifier.predict`` writes them for ``K > 2``; the default
    ``"y_score"`` finds them). A multi-class audit reports, per group, accuracy, balanced
    accuracy, macro AUC and FPR, the multi-class Brier score, the top-label ECE and, per class
    ``c``, ``prevalence[c]``, one-vs-rest ``auc[c]`` and the argmax decision's ``tpr[c]``,
    ``fpr[c]``, ``ppv[c]`` (see ``docs/audit.md``); decisions are the argmax, so ``threshold``
    and ``threshold_by`` do not apply.

    Args:
        data: one row per prediction, e.g. ``medgen.classify`` predictions joined with the manifest.
        y_true: column of true labels (binary: 0/1 or bool; multi-class: class indices 0..K-1 or
            the class names of the score columns).
        y_score: column of predicted probabilities of the positive class, in [0, 1]; or the
            per-class probability columns (multi-class, above).
        sensitive: column name(s); each is audited alone and (``intersections=True``) in every
            combination of two or more. Missing values form their own group ``"<missing>"``.
        threshold: decision threshold (predict positive when ``score >= threshold``): a number,
            ``"youden"``, ``"sensitivity:x"`` or ``"specificity:x"`` (chosen on the whole
            population, or per group with ``threshold_by``), or, with ``threshold_by``, a mapping
            group value -> number/rule.
        threshold_by: a sensitive column whose groups each get their own threshold (mitigation
            studies). ``None``: one threshold for everyone.
        reference: attribute -> reference group for disparities (default: the largest group).
        n_boot: bootstrap replicates for CIs and p-values (0 disables them).
        ci: CI coverage (0.95: 2.5th-97.5th percentile).
        intersections: also audit combinations of the sensitive columns.
        min_group_size: groups smaller than this are marked ``small_group`` and warned about.
        p_adjust: multiplicity adjustment of the disparity p-values: ``"holm"`` or ``"bh"``.
        tolerance: ``(low, high)`` band for the ratio to the reference group; outside it a
            disparity is flagged (Aequitas' 0.8-1.25 by default).
        boot_bins: above this many distinct scores the bootstrap runs on quantile score bins
            (point estimates always use the exact scores; see ``docs/audit.md``).
        cluster: a column of cluster ids (e.g. ``"subject_id"``): the bootstrap resamples whole
            clusters within each group, so several images of one person count as one draw.
            ``None``: rows are resampled independently.
        seed: bootstrap seed; ``None`` draws one, recorded in ``report.provenance["seed"]``.
        progress: show progress bars.

    Returns:
        An :class:`~medgen.audit.AuditReport`.

    Example:
        >>> import numpy as np, pandas as pd
        >>> from medgen.audit import audit
        >>> rng = np.random.default_rng(0)
        >>> df = pd.DataFrame({"y_true": rng.integers(0, 2, 400), "sex": rng.choice(["F", "M"], 400)})
        >>> df["y_score"] = np.clip(0.3 * df.y_true + rng.uniform(0, 0.7, 400), 0, 1)
        >>> rep = audit(df, sensitive="sex", n_boot=50, seed=0)
        >>> int(rep.group_table("sex")["n"].sum())
        400
        >>> bool(rep.overall["auc"].iloc[0] > 0.6)
        True

        Three classes (one probability column per class, as ``Classifier.predict`` writes them):

        >>> p = rng.dirichlet([1, 1, 1], 400)
        >>> mc = pd.DataFrame({"y_true": p.argmax(1), "sex": df.sex})
        >>> for k, c in enumerate(["none", "mild", "severe"]):
        ...     mc[f"y_score_{c}"] = p[:, k]
        >>> rep = audit(mc, sensitive="sex", n_boot=0)
        >>> rep.classes, float(rep.overall["accuracy"].iloc[0])
        (('none', 'mild', 'severe'), 1.0)
        >>> bool(rep.overall["macro_auc"].iloc[0] > 0.95)
        True
    """
    from medgen.audit._report import AuditReport

    if not isinstance(data, pd.DataFrame):
        raise MedgenValueError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    if len(data) == 0:
        raise MedgenValueError("data has no rows; there is nothing to audit")
    sens = [sensitive] if isinstance(sensitive, str) else list(sensitive)
    if not sens:
        raise MedgenValueError("sensitive must name at least one column, e.g. sensitive=['sex']")
    if len(set(sens)) != len(sens):
        raise MedgenValueError(f"sensitive lists a column twice: {sens}")
    score_columns = multiclass_score_columns(data, y_score)
    scored = [("y_score", y_score)] if score_columns is None else []
    for arg, col in [("y_true", y_true), *scored] + [("sensitive", c) for c in sens]:
        if col not in data.columns:
            raise _missing_column(data, col, arg)
    if threshold_by is not None and threshold_by not in data.columns:
        raise _missing_column(data, threshold_by, "threshold_by")
    if cluster is not None and cluster not in data.columns:
        raise _missing_column(data, cluster, "cluster")
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise MedgenValueError(f"n_boot must be an integer >= 0, not {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise MedgenValueError(f"ci must be in (0, 1), e.g. 0.95, not {ci!r}")
    if p_adjust not in P_ADJUST:
        raise MedgenValueError(f"p_adjust must be one of {P_ADJUST}, not {p_adjust!r}")
    lo_tol, hi_tol = tolerance
    if not 0.0 < lo_tol <= 1.0 <= hi_tol:
        raise MedgenValueError(
            f"tolerance must be (low, high) with 0 < low <= 1 <= high, not {tolerance!r}"
        )
    if boot_bins < 10:
        raise MedgenValueError(f"boot_bins must be at least 10, not {boot_bins!r}")
    if score_columns is not None:
        if threshold_by is not None or isinstance(threshold, Mapping) or threshold != 0.5:
            raise MedgenValueError(
                f"threshold={threshold!r} / threshold_by={threshold_by!r}: a multi-class audit "
                f"({len(score_columns)} score columns) decides by the most probable class "
                "(argmax), so thresholds do not apply; leave threshold and threshold_by unset, "
                "or audit one class against the rest as a binary score column"
            )
        return audit_multiclass(
            data,
            y_true=y_true,
            y_score=y_score,
            score_columns=score_columns,
            sensitive=sens,
            reference=reference,
            n_boot=n_boot,
            ci=ci,
            intersections=intersections,
            min_group_size=min_group_size,
            p_adjust=p_adjust,
            tolerance=tolerance,
            boot_bins=boot_bins,
            cluster=cluster,
            seed=seed,
            progress=progress,
        )
    assert isinstance(y_score, str)  # a list of columns is multi-class (above)

    y = _labels(data, y_true)
    s = _scores(data, y_score)
    n = int(y.shape[0])
    cluster_codes: NDArray[np.int64] | None = None
    if cluster is not None:
        missing = data[cluster].isna()
        if missing.any():
            raise MedgenValueError(
                f"cluster column {cluster!r} has {int(missing.sum())} missing values (e.g. rows "
                f"{list(data.index[missing][:5])}); fill them, e.g. with the image id"
            )
        cluster_codes = np.asarray(pd.factorize(data[cluster])[0], dtype=np.int64)

    singles = []
    for col in sens:
        codes, labels = _encode(data, col)
        singles.append(Grouping(col, (col,), codes, labels))
    groupings = list(singles)
    if intersections:
        for k in range(2, len(singles) + 1):
            groupings.extend(_intersect(c) for c in itertools.combinations(singles, k))

    by_grouping: Grouping | None = None
    if threshold_by is not None:
        by_grouping = next((g for g in singles if g.name == threshold_by), None)
        if by_grouping is None:
            codes, labels = _encode(data, threshold_by)
            by_grouping = Grouping(threshold_by, (threshold_by,), codes, labels)
    thr_row, thr_resolved = _thresholds(threshold, by_grouping, y, s)
    pred = s >= thr_row

    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    overall = Grouping(OVERALL[0], (), np.zeros(n, dtype=np.int64), (OVERALL[1],))
    all_groupings = [overall, *groupings]
    child_seeds = np.random.SeedSequence(seed).spawn(len(all_groupings))

    uniq, exact_key = np.unique(s, return_inverse=True)
    exact_key = exact_key.astype(np.int64)
    boot_key, boot_nkeys, boot_mode = _boot_key(
        s, exact_key, int(uniq.shape[0]), thr_row, boot_bins
    )
    exact_order = row_order(exact_key, y)
    boot_order = exact_order if boot_mode == "exact" else row_order(boot_key, y)

    msgs: list[str] = []
    if y.min() == y.max():
        msgs.append(f"y_true column {y_true!r} has only class {int(y[0])}: AUC is undefined")

    point: dict[str, dict[str, NDArray[np.float64]]] = {}
    reps: dict[str, dict[str, NDArray[np.float64]]] = {}
    frames = []
    for grouping, ss in zip(all_groupings, child_seeds, strict=True):
        cells = build_cells(
            grouping.codes, exact_key, int(uniq.shape[0]), y, s, pred, order=exact_order
        )
        est = cell_metrics(cells)
        point[grouping.name] = est
        values: dict[str, NDArray[Any]] = {
            "n": est["n"].astype(np.int64),
            "n_pos": est["n_pos"].astype(np.int64),
        }
        values.update({m: est[m] for m in METRICS})
        if n_boot > 0:
            bcells = (
                cells
                if boot_mode == "exact"
                else build_cells(grouping.codes, boot_key, boot_nkeys, y, s, pred, order=boot_order)
            )
            approx = est if boot_mode == "exact" else cell_metrics(bcells)
            r = bootstrap_metrics(
                bcells,
                n_boot=int(n_boot),
                rng=np.random.default_rng(ss),
                progress=progress,
                desc=f"bootstrap {grouping.name}",
                clusters=None
                if cluster_codes is None or bcells.row_cell is None
                else cluster_map(bcells.group, bcells.row_cell, cluster_codes),
            )
            # centre the binned bootstrap on the exact estimate (no-op in exact mode)
            r = {m: r[m] + (est[m] - approx[m]) for m in METRICS}
            reps[grouping.name] = r
            for m in METRICS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    values[f"{m}_low"], values[f"{m}_high"] = percentile_ci(r[m], ci)
        else:
            for m in METRICS:
                values[f"{m}_low"] = np.full(len(grouping.labels), np.nan)
                values[f"{m}_high"] = np.full(len(grouping.labels), np.nan)
        values["small_group"] = est["n"] < min_group_size
        frames.append(_frame(grouping.name, grouping.labels, values))

        for g, label in enumerate(grouping.labels):
            undefined = [m for m in METRICS if np.isnan(est[m][g])]
            where = f"group {label!r} of {grouping.name!r}" if grouping.columns else "overall"
            if undefined:
                msgs.append(
                    f"{where} (n={int(est['n'][g])}, positives={int(est['n_pos'][g])}): "
                    f"{', '.join(undefined)} undefined (NaN)"
                )
            if grouping.columns and est["n"][g] < min_group_size:
                msgs.append(
                    f"{where} has only {int(est['n'][g])} rows (< min_group_size="
                    f"{min_group_size}); its metrics are unreliable"
                )
    for msg in msgs:
        warnings.warn(msg, MetricWarning, stacklevel=2)

    table = pd.concat(frames)
    ordered = ["n", "n_pos", *METRICS]
    ordered += [f"{m}_{b}" for m in METRICS for b in ("low", "high")] + ["small_group"]
    table = table[ordered]
    overall_frame = table.loc[[OVERALL[0]]]
    by_group = table.drop(index=OVERALL[0], level="attribute")

    disparities = _disparities(
        groupings, point, reps, reference or {}, ci, p_adjust, tolerance, n_boot
    )
    summary = _summary(groupings, point, reps, ci)

    h = hashlib.sha256()
    h.update(y.tobytes())
    h.update(s.tobytes())
    for single in singles:
        h.update(single.codes.tobytes())
    provenance: dict[str, object] = {
        "rows": n,
        "positives": int(y.sum()),
        "y_true": y_true,
        "y_score": y_score,
        "sensitive": sens,
        "intersections": bool(intersections),
        "threshold": threshold if not isinstance(threshold, Mapping) else dict(threshold),
        "threshold_by": threshold_by,
        "thresholds": thr_resolved,
        "n_boot": int(n_boot),
        "ci": ci,
        "bootstrap": f"stratified by group, {boot_mode}"
        + (f", clusters of {cluster!r} resampled" if cluster is not None else ""),
        "cluster": cluster,
        "p_adjust": p_adjust,
        "tolerance": list(tolerance),
        "min_group_size": min_group_size,
        "seed": seed,
        "data_sha256": h.hexdigest(),
        "medgen_version": __version__,
        "numpy_version": np.__version__,
        "pandas_version": pd.__version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    logger.info("audited %d rows, %d attributes, seed %d", n, len(groupings), seed)
    return AuditReport(
        by_group=by_group,
        overall=overall_frame,
        disparities=disparities,
        summary=summary,
        thresholds=thr_resolved,
        provenance=provenance,
        warnings=msgs,
        rows=RowData(
            y=y, score=s, threshold=thr_row, groupings=tuple(groupings), cluster=cluster_codes
        ),
    )


def _disparities(
    groupings: Sequence[Grouping],
    point: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reps: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reference: Mapping[str, str],
    ci: float,
    p_adjust: str,
    tolerance: tuple[float, float],
    n_boot: int,
    metrics: Sequence[str] = DISPARITY_METRICS,
) -> pd.DataFrame:
    """Disparities of ``metrics`` (per group, against each attribute's reference group: the
    one given, else the largest) with bootstrap CIs, p-values, ratio flags; also the
    multi-class audit's table (its metrics)."""
    unknown = set(reference) - {g.name for g in groupings}
    if unknown:
        raise MedgenValueError(
            f"reference names unknown attributes {sorted(unknown)}; audited attributes are "
            f"{[g.name for g in groupings]}"
        )
    rows: list[dict[str, object]] = []
    for grouping in groupings:
        est = point[grouping.name]
        if grouping.name in reference:
            ref_label = str(reference[grouping.name])
            if ref_label not in grouping.labels:
                raise MedgenValueError(
                    f"reference[{grouping.name!r}]={ref_label!r} is not a group of that "
                    f"attribute; groups are {list(grouping.labels)}"
                )
            ref = grouping.labels.index(ref_label)
        else:
            ref = int(np.argmax(est["n"]))
        others = np.array([g for g in range(len(grouping.labels)) if g != ref], dtype=np.intp)
        for m in metrics:
            v = est[m][others]
            rv = est[m][ref]
            diff = v - rv
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(rv == 0, np.nan, v / rv)
            if n_boot > 0:
                d_reps = reps[grouping.name][m][:, others] - reps[grouping.name][m][:, [ref]]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    d_lo, d_hi = percentile_ci(d_reps, ci)
                p = bootstrap_pvalue(diff, d_reps)
            else:
                d_lo = d_hi = p = np.full(others.shape[0], np.nan)
            for i, g in enumerate(others):
                rows.append(
                    {
                        "attribute": grouping.name,
                        "group": grouping.labels[g],
                        "metric": m,
                        "reference_group": grouping.labels[ref],
                        "value": v[i],
                        "reference_value": rv,
                        "difference": diff[i],
                        "difference_low": d_lo[i],
                        "difference_high": d_hi[i],
                        "ratio": ratio[i],
                        "p_value": p[i],
                    }
                )
    columns = [
        "attribute",
        "group",
        "metric",
        "reference_group",
        "value",
        "reference_value",
        "difference",
        "difference_low",
        "difference_high",
        "ratio",
        "p_value",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["p_adjusted"] = adjust_pvalues(frame["p_value"].to_numpy(dtype=np.float64), p_adjust)
    lo, hi = tolerance
    ratio_v = frame["ratio"].to_numpy(dtype=np.float64)
    frame["flagged"] = ~np.isnan(ratio_v) & ((ratio_v < lo) | (ratio_v > hi))
    frame["significant"] = frame["p_adjusted"].to_numpy(dtype=np.float64) < 1.0 - ci
    return frame.set_index(["attribute", "group", "metric"])


def _gap(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """max - min over the last axis, ignoring NaN (NaN if fewer than 2 defined)."""
    ok = (~np.isnan(x)).sum(axis=-1) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = np.nanmax(x, axis=-1) - np.nanmin(x, axis=-1)
    return np.where(ok, g, np.nan)


def _binary_gaps(e: Mapping[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
    """The binary summary's gaps (max - min over groups) of estimates ``e``."""
    return {
        "auc_gap": _gap(e["auc"]),
        "equalized_odds_difference": np.fmax(_gap(e["tpr"]), _gap(e["fpr"])),
        "demographic_parity_difference": _gap(e["selection_rate"]),
        "ece_gap": _gap(e["ece"]),
        "fnr_gap": _gap(e["fnr"]),
    }


def _summary(
    groupings: Sequence[Grouping],
    point: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reps: Mapping[str, Mapping[str, NDArray[np.float64]]],
    ci: float,
    *,
    gaps: Callable[[Mapping[str, NDArray[np.float64]]], dict[str, NDArray[np.float64]]] = (
        _binary_gaps
    ),
    auc: str = "auc",
) -> pd.DataFrame:
    """One row per attribute: smallest and worst group (by ``auc``, the column
    ``worst_group_<auc>``) and each of ``gaps`` with its bootstrap CI; also the multi-class
    audit's summary (its gaps, by macro AUC)."""
    rows = []
    for grouping in groupings:
        est = point[grouping.name]
        values = est[auc]
        worst = int(np.nanargmin(values)) if np.any(~np.isnan(values)) else -1
        smallest = int(np.argmin(est["n"]))
        row: dict[str, object] = {
            "attribute": grouping.name,
            "n_groups": len(grouping.labels),
            "smallest_group": grouping.labels[smallest],
            "smallest_group_n": int(est["n"][smallest]),
            "worst_group": grouping.labels[worst] if worst >= 0 else None,
            f"worst_group_{auc}": values[worst] if worst >= 0 else np.nan,
        }
        pg = gaps(est)
        rg = gaps(reps[grouping.name]) if grouping.name in reps else None
        for k, v in pg.items():
            row[k] = float(v)
            if rg is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi = percentile_ci(rg[k][:, None], ci)
                row[f"{k}_low"], row[f"{k}_high"] = float(lo[0]), float(hi[0])
            else:
                row[f"{k}_low"] = row[f"{k}_high"] = np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("attribute")
