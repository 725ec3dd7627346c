"""Multi-class audits: one-vs-rest metrics per class, macro averages and top-label calibration.

A ``K``-class prediction table (``y_true`` a class index or label, one probability column per
class) is audited through ``K + 1`` *binary views* of the same rows, each computed with the binary
cell machinery of :mod:`medgen.audit._metrics`:

* view ``k`` (one-vs-rest for class ``k``): label ``y == k``, score ``P[:, k]``, decision
  ``argmax P == k``. Its AUC is the one-vs-rest AUC of class ``k``
  (``sklearn.metrics.roc_auc_score(y == k, P[:, k])``), its TPR / FPR / PPV the one-vs-rest rates
  of the argmax decision (``sklearn.metrics.confusion_matrix`` of ``y`` and ``argmax P``);
* the top-label view: label ``argmax P == y``, score ``max P``. Its prevalence is the accuracy,
  its ECE the top-label (confidence) ECE (Guo et al. 2017) with the 10 equal-width bins of
  :data:`~medgen.audit._metrics.ECE_EDGES`.

The bootstrap resamples rows (or clusters) within each group once per replicate and maps the same
draw into every view, so a replicate's macro AUC averages per-class AUCs of one resample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from tqdm.auto import tqdm

from medgen._version import __version__
from medgen.audit._bootstrap import ClusterMap, cluster_map, multinomial_counts, percentile_ci
from medgen.audit._metrics import Cells, cell_metrics, ece_bins, make_cells
from medgen.errors import MedgenValueError, MetricWarning

if TYPE_CHECKING:
    from medgen.audit._audit import Grouping
    from medgen.audit._report import AuditReport

__all__ = [
    "CLASS_METRICS",
    "MACRO_METRICS",
    "class_metric",
    "multiclass_metric_names",
    "multiclass_score_columns",
]

#: Metrics of the whole K-class decision, per group.
MACRO_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "macro_auc",
    "macro_fpr",
    "brier",
    "ece",
)
#: One-vs-rest metrics reported for every class ``c`` as ``"<metric>[c]"``.
CLASS_METRICS: tuple[str, ...] = ("prevalence", "auc", "tpr", "fpr", "ppv")


def class_metric(metric: str, cls: str) -> str:
    """Column name of a one-vs-rest metric of one class: ``class_metric("auc", "mild")`` is
    ``"auc[mild]"`` (brackets, so a class named ``low`` cannot collide with ``auc_low``)."""
    return f"{metric}[{cls}]"


def multiclass_metric_names(classes: Sequence[str]) -> tuple[str, ...]:
    """The metric columns of a multi-class audit, in report order.

    Example:
        >>> multiclass_metric_names(["none", "mild", "severe"])[:8]
        ('accuracy', 'balanced_accuracy', 'macro_auc', 'macro_fpr', 'brier', 'ece', 'prevalence[none]', 'prevalence[mild]')
    """
    per_class = tuple(class_metric(m, c) for m in CLASS_METRICS for c in classes)
    return (*MACRO_METRICS, *per_class)


def multiclass_score_columns(data: pd.DataFrame, y_score: str | Sequence[str]) -> list[str] | None:
    """The per-class score columns, or ``None`` for a binary audit.

    ``y_score`` given as a list names the columns (in class order). A string names the binary
    score column; when no column has that name but at least three are called ``<y_score>_<class>``
    (what :meth:`medgen.classify.Classifier.predict` writes for ``K > 2``), those are used.
    """
    if not isinstance(y_score, str):
        cols = list(y_score)
        if len(cols) < 2:
            raise MedgenValueError(
                f"y_score={cols!r}: a multi-class audit needs one probability column per class "
                "(at least 2); pass a single column name for a binary audit"
            )
        if len(set(cols)) != len(cols):
            raise MedgenValueError(f"y_score lists a column twice: {cols}")
        return cols
    if y_score in data.columns:
        return None
    prefix = f"{y_score}_"
    cols = [str(c) for c in data.columns if str(c).startswith(prefix) and len(str(c)) > len(prefix)]
    return cols if len(cols) >= 3 else None


def _class_names(cols: Sequence[str], y_score: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(y_score, str):
        names = [c[len(y_score) + 1 :] for c in cols]
    else:
        texts = [str(c) for c in cols]
        common = 0
        while all(len(t) > common and t[common] == texts[0][common] for t in texts):
            common += 1
        cut = texts[0].rfind("_", 0, common) + 1  # the shared prefix up to its last "_"
        names = [str(c)[cut:] or str(c) for c in cols]
        if len(set(names)) != len(names):
            names = [str(c) for c in cols]
    return tuple(names)


def _probabilities(data: pd.DataFrame, cols: Sequence[str]) -> NDArray[np.float64]:
    for c in cols:
        col = data[c]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise MedgenValueError(
                f"y_score column {c!r} must hold numeric probabilities, not dtype {col.dtype}"
            )
    p = data[list(cols)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(p)
    if bad.any():
        rows = list(data.index[bad.any(axis=1)][:5])
        raise MedgenValueError(
            f"y_score columns {list(cols)} have {int(bad.sum())} missing or infinite values (e.g. "
            f"rows {rows}); drop those rows or fix the predictions"
        )
    if p.min() < 0.0 or p.max() > 1.0:
        raise MedgenValueError(
            f"y_score columns {list(cols)} must hold probabilities in [0, 1] but range over "
            f"[{p.min():.6g}, {p.max():.6g}]; if these are logits apply a softmax first "
            "(scipy.special.softmax(logits, axis=1))"
        )
    off = np.abs(p.sum(axis=1) - 1.0)
    if off.max() > 1e-3:
        rows = list(data.index[off > 1e-3][:5])
        raise MedgenValueError(
            f"y_score columns {list(cols)} must sum to 1 in every row (one probability per "
            f"class) but {int((off > 1e-3).sum())} rows do not (e.g. rows {rows}); pass every "
            "class's column, or normalise the scores"
        )
    return p


def _class_labels(data: pd.DataFrame, column: str, classes: Sequence[str]) -> NDArray[np.int64]:
    """``y_true`` as class indices 0..K-1: class indices already, or the class names."""
    col = data[column]
    if col.isna().any():
        rows = list(col.index[col.isna()][:5])
        raise MedgenValueError(
            f"y_true column {column!r} has {int(col.isna().sum())} missing values (e.g. rows "
            f"{rows}); drop or label those rows before auditing"
        )
    k = len(classes)
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        v = col.to_numpy(dtype=np.float64)
        if np.all(v == np.round(v)) and v.min() >= 0 and v.max() < k:
            as_names = [str(int(x)) for x in np.unique(v)]
            if list(classes) != [str(i) for i in range(k)] and set(as_names) <= set(classes):
                raise MedgenValueError(
                    f"y_true column {column!r} is ambiguous: its values {as_names} are both class "
                    f"indices (0..{k - 1}) and class names of the score columns {list(classes)}; "
                    "give class indices as Classifier.predict writes them, e.g. "
                    f"data[{column!r}] = data[{column!r}].astype(str).map("
                    f"{{c: i for i, c in enumerate({list(classes)!r})}})"
                )
            return np.asarray(v, dtype=np.int64)
    text = col.map(lambda x: str(x.item() if isinstance(x, np.generic) else x))
    lookup = {c: i for i, c in enumerate(classes)}
    mapped = text.map(lookup)
    if mapped.isna().any():
        shown = ", ".join(repr(s) for s in pd.unique(text[mapped.isna()])[:6])
        raise MedgenValueError(
            f"y_true column {column!r} must hold class indices 0..{k - 1} or the class names "
            f"{list(classes)} of the score columns; found {shown}"
        )
    return np.asarray(mapped.to_numpy(dtype=np.int64), dtype=np.int64)


def view_cells(
    group: NDArray[np.int64],
    key: NDArray[np.int64],
    n_keys: int,
    y: NDArray[np.int8],
    score: NDArray[np.float64],
    pred: NDArray[np.bool_],
) -> Cells:
    """Cells of one binary view, sorted by ``(group, key, decision, y)``.

    Unlike the binary audit's cells (:func:`~medgen.audit._metrics.build_cells`), the decision
    (``argmax == k``) is not a function of the score of class ``k``: rows tied on that score may be
    decided differently, so the decision is part of the cell. Tie blocks stay ``(group, key)``,
    so AUC ties still get half credit; :func:`~medgen.audit._metrics.cell_metrics` only needs the
    decision constant within a cell.
    """
    pr = pred.astype(np.int64)
    code = ((group.astype(np.int64) * np.int64(n_keys) + key) * 2 + pr) * 2 + y
    uniq, first, inverse, counts = np.unique(
        code, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = np.asarray(inverse, dtype=np.intp).reshape(-1)
    resid = score - y
    cells = make_cells(
        group=uniq // (4 * n_keys),
        key=(uniq // 4) % n_keys,
        y=(uniq % 2).astype(np.float64),
        count=counts.astype(np.float64),
        s_sum=np.asarray(np.bincount(inverse, weights=score, minlength=uniq.shape[0]), np.float64),
        sq_sum=np.asarray(
            np.bincount(inverse, weights=resid * resid, minlength=uniq.shape[0]), np.float64
        ),
        pred=((uniq // 2) % 2).astype(np.float64),
        ece=ece_bins(score[first]),
    )
    return dataclasses.replace(cells, row_cell=inverse)


def _draw_picks(rng: np.random.Generator, bounds: NDArray[np.intp], size: int) -> NDArray[Any]:
    """``(size, S)`` stratified draws of the units (rows or clusters) of each group."""
    picks = np.empty((size, int(bounds[-1])), dtype=np.float64)
    for g in range(bounds.shape[0] - 1):
        s_g = int(bounds[g + 1] - bounds[g])
        picks[:, bounds[g] : bounds[g + 1]] = multinomial_counts(
            rng, s_g, np.full(s_g, 1.0 / s_g), size
        )
    return picks


def _combine(
    views: Sequence[Mapping[str, NDArray[np.float64]]], classes: Sequence[str]
) -> dict[str, NDArray[np.float64]]:
    """Multi-class metrics from the per-class views and the top-label view (last)."""
    per, top = views[:-1], views[-1]
    out: dict[str, NDArray[np.float64]] = {"n": top["n"]}
    for c, v in zip(classes, per, strict=True):
        out[class_metric("n", c)] = v["n_pos"]
    auc = np.stack([v["auc"] for v in per])
    tpr = np.stack([v["tpr"] for v in per])
    fpr = np.stack([v["fpr"] for v in per])
    out["accuracy"] = top["prevalence"]
    out["balanced_accuracy"] = tpr.mean(axis=0)  # NaN when a class is absent
    out["macro_auc"] = auc.mean(axis=0)
    out["macro_fpr"] = fpr.mean(axis=0)
    out["brier"] = np.sum(np.stack([v["brier"] for v in per]), axis=0)
    out["ece"] = top["ece"]
    for m in CLASS_METRICS:
        for c, v in zip(classes, per, strict=True):
            out[class_metric(m, c)] = v[m]
    return out


def _group_metrics(
    grouping: Grouping,
    views: Sequence[tuple[Any, ...]],
    classes: Sequence[str],
    *,
    n_boot: int,
    rng: np.random.Generator,
    cluster_codes: NDArray[np.int64] | None,
    progress: bool,
    max_elements: int = 4_000_000,
) -> tuple[dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]] | None]:
    """Point estimates and (``n_boot > 0``) bootstrap replicates of one grouping.

    ``views`` are ``(y, score, decision, exact key, n exact keys, boot key, n boot keys)``. With
    binned boot keys the replicates of each view are shifted by (exact - binned estimate), as in
    the binary audit, so the intervals are centred on the exact estimates.
    """
    cells = [view_cells(grouping.codes, v[3], v[4], v[0], v[1], v[2]) for v in views]
    exact = [cell_metrics(c) for c in cells]
    est = _combine(exact, classes)
    if n_boot == 0:
        return est, None
    bcells = [
        c if v[5] is v[3] else view_cells(grouping.codes, v[5], v[6], v[0], v[1], v[2])
        for c, v in zip(cells, views, strict=True)
    ]
    shift: list[dict[str, NDArray[np.float64]] | None] = []
    for b, c, e in zip(bcells, cells, exact, strict=True):
        if b is c:
            shift.append(None)
        else:
            approx = cell_metrics(b)
            shift.append({m: e[m] - approx[m] for m in e})
    n = grouping.codes.shape[0]
    units = cluster_codes if cluster_codes is not None else np.arange(n, dtype=np.int64)
    maps: list[ClusterMap] = []
    for c in bcells:
        assert c.row_cell is not None  # view_cells always sets it
        maps.append(cluster_map(c.group, c.row_cell, units))
    bounds = maps[0].bounds  # units sorted by (group, unit): the same for every view
    width = max(int(bounds[-1]), max(c.n_cells for c in bcells), 1)
    batch = max(1, min(n_boot, max_elements // width))
    chunks = []
    for b0 in tqdm(
        range(0, n_boot, batch),
        desc=f"bootstrap {grouping.name}",
        disable=not progress,
        leave=False,
    ):
        nb = min(batch, n_boot - b0)
        picks = _draw_picks(rng, bounds, nb)
        vm = []
        for c, cm, sh in zip(bcells, maps, shift, strict=True):
            r = cell_metrics(c, np.asarray((cm.matrix.T @ picks.T).T, dtype=np.float64))
            vm.append(r if sh is None else {m: r[m] + sh[m] for m in r})
        chunks.append(_combine(vm, classes))
    reps = {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}
    return est, reps


def _undefined_reason(
    est: Mapping[str, NDArray[np.float64]], g: int, classes: Sequence[str]
) -> str | None:
    """Why metrics of group ``g`` are NaN (absent classes, nobody predicted a class), or None."""
    absent = [c for c in classes if est[class_metric("n", c)][g] == 0]
    everyone = [c for c in classes if est[class_metric("n", c)][g] == est["n"][g]]
    parts = []
    if absent:
        parts.append(
            f"class(es) {absent} absent: their auc and tpr and the macro averages macro_auc and "
            "balanced_accuracy are undefined (NaN)"
        )
    if everyone:
        parts.append(
            f"only class {everyone} present: its fpr, every auc and macro_fpr are undefined (NaN)"
        )
    names = multiclass_metric_names(classes)
    rest = [m for m in names if np.isnan(est[m][g])]
    explained = set()
    for c in absent:
        explained |= {class_metric(m, c) for m in ("auc", "tpr")}
        explained |= {"macro_auc", "balanced_accuracy"}
    for c in everyone:
        explained |= {class_metric("auc", k) for k in classes}
        explained |= {class_metric("fpr", c), "macro_auc", "macro_fpr"}
    unpredicted = [c for c in classes if np.isnan(est[class_metric("ppv", c)][g])]
    if unpredicted:
        parts.append(
            f"no row predicted as class(es) {unpredicted} (argmax): their ppv is undefined (NaN)"
        )
        explained |= {class_metric("ppv", c) for c in unpredicted}
    other = [m for m in rest if m not in explained]
    if other:
        parts.append(f"{', '.join(other)} undefined (NaN: zero denominator)")
    return "; ".join(parts) if parts else None


def audit_multiclass(
    data: pd.DataFrame,
    *,
    y_true: str,
    y_score: str | Sequence[str],
    score_columns: Sequence[str],
    sensitive: Sequence[str],
    reference: Mapping[str, str] | None,
    n_boot: int,
    ci: float,
    intersections: bool,
    min_group_size: int,
    p_adjust: str,
    tolerance: tuple[float, float],
    boot_bins: int,
    cluster: str | None,
    seed: int | None,
    progress: bool,
) -> AuditReport:
    """The multi-class branch of :func:`medgen.audit.audit` (arguments validated there)."""
    from medgen.audit._audit import (
        OVERALL,
        Grouping,
        _boot_key,
        _encode,
        _frame,
        _intersect,
        _missing_column,
    )
    from medgen.audit._report import AuditReport

    for c in score_columns:
        if c not in data.columns:
            raise _missing_column(data, c, "y_score")
    classes = _class_names(score_columns, y_score)
    p = _probabilities(data, score_columns)
    y = _class_labels(data, y_true, classes)
    n, k = p.shape
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
    for col in sensitive:
        codes, labels = _encode(data, col)
        singles.append(Grouping(col, (col,), codes, labels))
    groupings = list(singles)
    if intersections:
        for r in range(2, len(singles) + 1):
            groupings.extend(_intersect(c) for c in itertools.combinations(singles, r))
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]
    overall = Grouping(OVERALL[0], (), np.zeros(n, dtype=np.int64), (OVERALL[1],))
    all_groupings = [overall, *groupings]
    child_seeds = np.random.SeedSequence(seed).spawn(len(all_groupings))

    # the K one-vs-rest views and the top-label view: (y, score, decision, key, n_keys)
    y_pred = p.argmax(axis=1)
    views = []
    modes: set[str] = set()
    for yv, sv, pv in [
        *(((y == j).astype(np.int8), p[:, j], y_pred == j) for j in range(k)),
        ((y_pred == y).astype(np.int8), p.max(axis=1), np.zeros(n, dtype=bool)),
    ]:
        sv = np.ascontiguousarray(sv)
        uniq, key = np.unique(sv, return_inverse=True)
        key = key.astype(np.int64).reshape(-1)
        bkey, bn, mode = _boot_key(sv, key, int(uniq.shape[0]), np.empty(0), boot_bins)
        modes.add(mode.split(" (")[0])
        views.append((yv, sv, pv, key, int(uniq.shape[0]), bkey, bn))

    names = multiclass_metric_names(classes)
    counts = ["n", *(class_metric("n", c) for c in classes)]
    msgs: list[str] = []
    present = np.bincount(y, minlength=k)
    for j, c in enumerate(classes):
        if present[j] == 0:
            msgs.append(
                f"class {c!r} (score column {score_columns[j]!r}) is absent from y_true "
                f"{y_true!r}: its one-vs-rest auc and tpr, macro_auc and balanced_accuracy are "
                "undefined (NaN)"
            )
    point: dict[str, dict[str, NDArray[np.float64]]] = {}
    reps: dict[str, dict[str, NDArray[np.float64]]] = {}
    frames = []
    for grouping, ss in zip(all_groupings, child_seeds, strict=True):
        est, rep = _group_metrics(
            grouping,
            views,
            classes,
            n_boot=int(n_boot),
            rng=np.random.default_rng(ss),
            cluster_codes=cluster_codes,
            progress=progress,
        )
        point[grouping.name] = est
        values: dict[str, NDArray[Any]] = {c: est[c].astype(np.int64) for c in counts}
        values.update({m: est[m] for m in names})
        for m in names:
            if rep is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    values[f"{m}_low"], values[f"{m}_high"] = percentile_ci(rep[m], ci)
            else:
                values[f"{m}_low"] = values[f"{m}_high"] = np.full(len(grouping.labels), np.nan)
        if rep is not None:
            reps[grouping.name] = rep
        values["small_group"] = est["n"] < min_group_size
        frames.append(_frame(grouping.name, grouping.labels, values))
        for g, label in enumerate(grouping.labels):
            where = f"group {label!r} of {grouping.name!r}" if grouping.columns else "overall"
            reason = _undefined_reason(est, g, classes)
            if reason is not None:
                msgs.append(f"{where} (n={int(est['n'][g])}): {reason}")
            if grouping.columns and est["n"][g] < min_group_size:
                msgs.append(
                    f"{where} has only {int(est['n'][g])} rows (< min_group_size="
                    f"{min_group_size}); its metrics are unreliable"
                )
    for msg in msgs:
        warnings.warn(msg, MetricWarning, stacklevel=3)

    table = pd.concat(frames)
    ordered = [*counts, *names, *(f"{m}_{b}" for m in names for b in ("low", "high"))]
    table = table[[*ordered, "small_group"]]
    overall_frame = table.loc[[OVERALL[0]]]
    by_group = table.drop(index=OVERALL[0], level="attribute")
    disparity_metrics = tuple(m for m in names if not m.startswith("prevalence["))
    disparities = disparity_table(
        groupings,
        point,
        reps,
        reference or {},
        ci=ci,
        p_adjust=p_adjust,
        tolerance=tolerance,
        n_boot=int(n_boot),
        metrics=disparity_metrics,
    )
    summary = _summary(groupings, point, reps, ci, classes)

    h = hashlib.sha256()
    h.update(y.tobytes())
    h.update(p.tobytes())
    for single in singles:
        h.update(single.codes.tobytes())
    provenance: dict[str, object] = {
        "rows": n,
        "classes": list(classes),
        "class_counts": {c: int(present[j]) for j, c in enumerate(classes)},
        "y_true": y_true,
        "y_score": list(score_columns),
        "sensitive": list(sensitive),
        "intersections": bool(intersections),
        "decision": "argmax of the class probabilities",
        "n_boot": int(n_boot),
        "ci": ci,
        "bootstrap": "stratified by group, one draw of rows shared by all classes, "
        + ("binned" if "binned" in modes else "exact")
        + (f" score cells (at most {boot_bins} bins per class)" if "binned" in modes else " cells")
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
    return AuditReport(
        by_group=by_group,
        overall=overall_frame,
        disparities=disparities,
        summary=summary,
        thresholds={"all": float("nan")},
        provenance=provenance,
        warnings=msgs,
        rows=None,
        metrics=names,
        classes=tuple(classes),
    )


def disparity_table(
    groupings: Sequence[Grouping],
    point: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reps: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reference: Mapping[str, str],
    *,
    ci: float,
    p_adjust: str,
    tolerance: tuple[float, float],
    n_boot: int,
    metrics: Sequence[str],
) -> pd.DataFrame:
    """Disparities of ``metrics`` against each attribute's reference group (largest by default);
    the same table as the binary audit's."""
    from medgen.audit._audit import _disparities

    return _disparities(
        groupings, point, reps, reference, ci, p_adjust, tolerance, n_boot, metrics=metrics
    )


#: Gaps (max - min over groups) in the multi-class summary, besides the per-class ones.
SUMMARY_GAPS: tuple[str, ...] = ("macro_auc", "accuracy", "balanced_accuracy", "ece")


def summary_gap_names(classes: Sequence[str]) -> list[str]:
    """Gap columns of the multi-class summary, in order."""
    out = [f"{m}_gap" for m in SUMMARY_GAPS]
    for c in classes:
        out += [f"auc_gap[{c}]", f"equalized_odds_difference[{c}]"]
    return out


def _summary(
    groupings: Sequence[Grouping],
    point: Mapping[str, Mapping[str, NDArray[np.float64]]],
    reps: Mapping[str, Mapping[str, NDArray[np.float64]]],
    ci: float,
    classes: Sequence[str],
) -> pd.DataFrame:
    from medgen.audit._audit import _gap
    from medgen.audit._audit import _summary as summary_table

    def gaps(e: Mapping[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
        out = {f"{m}_gap": _gap(e[m]) for m in SUMMARY_GAPS}
        for c in classes:
            out[f"auc_gap[{c}]"] = _gap(e[class_metric("auc", c)])
            out[f"equalized_odds_difference[{c}]"] = np.fmax(
                _gap(e[class_metric("tpr", c)]), _gap(e[class_metric("fpr", c)])
            )
        return out

    return summary_table(groupings, point, reps, ci, gaps=gaps, auc="macro_auc")
