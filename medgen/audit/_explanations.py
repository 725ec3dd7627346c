"""``explanations(classifier, cohort)``: where does the model look, for whom?

For every image with a non-empty lesion mask the classifier's explanation map
(:meth:`medgen.classify.Classifier.explain`) is scored against the mask:

* **pointing game** (Zhang et al., ECCV 2016 / IJCV 2018): 1 when the map's maximum lies in the
  mask (within ``tolerance`` pixels), else 0; when several pixels share the maximum, the fraction
  of them inside (the expected hit with ties broken at random, so a flat map scores the mask's
  area fraction);
* **energy inside the mask** (the energy-based pointing game of Wang et al., CVPR-W 2020,
  Score-CAM): ``sum(map+ * mask) / sum(map+)`` of the positive part of the map;
* the same two for a **random-map baseline**: seeded, smooth random fields (Gaussian noise
  smoothed on the torus, so every pixel is exchangeable and both scores have expectation equal
  to the mask's area fraction, the value of a uniform map), and the *gain* of the model over it.

Per subgroup the means come with stratified bootstrap CIs (:mod:`medgen.audit._bootstrap`), and
every group is tested against a reference group with the audit's bootstrap test and Holm
adjustment (:mod:`medgen.audit._disparity`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from medgen._internal.report import atomic_write_text, fmt, fmt_ci, html_table, render_html
from medgen._version import __version__
from medgen.audit._bootstrap import cluster_map, draw_counts, percentile_ci
from medgen.audit._disparity import P_ADJUST, adjust_pvalues, bootstrap_pvalue
from medgen.errors import MedgenValueError, MetricWarning

if TYPE_CHECKING:
    from medgen.classify._model import Classifier

log = logging.getLogger(__name__)

__all__ = [
    "EXPLANATION_METRICS",
    "ExplanationAudit",
    "energy_fraction",
    "explanations",
    "pointing_hit",
    "random_maps",
    "score_explanation",
]

#: Per-image scores, summarised per group (``*_random``: the random-map baseline; ``*_gain``:
#: model minus baseline, per image; ``area_fraction``: the uniform map's expected value;
#: ``flat_map``: 1 when the map is constant, no evidence anywhere, so it scores chance).
EXPLANATION_METRICS: tuple[str, ...] = (
    "pointing",
    "pointing_random",
    "pointing_gain",
    "energy",
    "energy_random",
    "energy_gain",
    "area_fraction",
    "flat_map",
)
#: Metrics compared between groups in ``ExplanationAudit.tests``.
TESTED_METRICS: tuple[str, ...] = ("pointing", "energy", "pointing_gain", "energy_gain", "flat_map")
#: Metrics whose by-group ``p_value`` tests ``value == 0`` (the model is no better than chance).
_GAIN_METRICS = ("pointing_gain", "energy_gain")
_OVERALL = ("overall", "all")
_MISSING = "<missing>"


# ---------------------------------------------------------------- per-image scores
def _as_array(x: Any, what: str) -> NDArray[np.float64]:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise MedgenValueError(f"{what} holds NaN or infinite values")
    return a


def _check_pair(saliency: Any, mask: Any) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    sal = _as_array(saliency, "saliency map").squeeze()
    msk = _as_array(mask, "mask").squeeze() > 0
    if sal.shape != msk.shape:
        raise MedgenValueError(
            f"saliency map shape {sal.shape} and mask shape {msk.shape} differ (after removing "
            "singleton axes); compute the map at the mask's grid (Classifier.explain returns maps "
            "at the image's shape)"
        )
    return sal, msk


def pointing_hit(saliency: Any, mask: Any, *, tolerance: float = 0.0) -> float:
    """Pointing-game hit of one map: is its maximum inside the mask?

    Args:
        saliency: map, any shape (singleton axes ignored), larger = more relevant.
        mask: lesion mask of the same shape (non-zero = lesion).
        tolerance: a maximum within this many pixels (Euclidean) of the mask counts as a hit
            (Zhang et al. use 15 px at 224 px).

    Returns:
        The fraction of the map's maximal pixels that hit: 1.0 or 0.0 for a unique maximum; for a
        flat map the mask's (dilated) area fraction. NaN for an empty mask.
    """
    sal, msk = _check_pair(saliency, mask)
    if not msk.any():
        return float("nan")
    if tolerance > 0:
        from scipy.ndimage import distance_transform_edt

        msk = distance_transform_edt(~msk) <= tolerance
    hi, lo = float(sal.max()), float(sal.min())
    top = sal >= hi - 1e-6 * max(hi - lo, 1e-12)
    return float(msk[top].mean())


def energy_fraction(saliency: Any, mask: Any) -> float:
    """Fraction of a map's energy inside the mask: ``sum(max(s, 0) * mask) / sum(max(s, 0))``.

    Args:
        saliency: map, any shape (singleton axes ignored).
        mask: lesion mask of the same shape (non-zero = lesion).

    Returns:
        A value in [0, 1]; a constant map (no evidence anywhere, e.g. GradCAM's all-zero map)
        counts as a uniform map: the mask's area fraction, as in :func:`pointing_hit`. NaN for an
        empty mask or a varying map without positive values.
    """
    sal, msk = _check_pair(saliency, mask)
    if not msk.any():
        return float("nan")
    if float(sal.max()) == float(sal.min()):
        return float(msk.mean())
    pos = np.clip(sal, 0.0, None)
    total = float(pos.sum())
    if total <= 0.0:
        return float("nan")
    return float(pos[msk].sum() / total)


def random_maps(
    shape: Sequence[int], n: int, *, rng: np.random.Generator, sigma: float
) -> NDArray[np.float64]:
    """Smooth random maps: white Gaussian noise smoothed with a Gaussian of ``sigma`` pixels with
    periodic boundaries (a stationary field on the torus), min-max scaled to [0, 1] per map.

    Args:
        shape: spatial shape of one map.
        n: number of maps.
        rng: the random generator (seeded by the caller).
        sigma: smoothing in pixels (0: white noise).

    Returns:
        ``(n, *shape)`` array.
    """
    from scipy.ndimage import gaussian_filter

    noise = rng.standard_normal((n, *shape))
    if sigma > 0:
        noise = gaussian_filter(noise, sigma=(0.0, *[sigma] * len(shape)), mode="wrap")
    flat = noise.reshape(n, -1)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return np.asarray(((flat - lo) / np.maximum(hi - lo, 1e-12)).reshape(n, *shape))


def score_explanation(
    saliency: Any,
    mask: Any,
    *,
    tolerance: float = 0.0,
    n_random: int = 16,
    sigma: float | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """Score one explanation map against one lesion mask.

    Args:
        saliency: map of the image (e.g. one item of ``Classifier.explain``).
        mask: the lesion mask on the same grid.
        tolerance: pointing-game tolerance in pixels (:func:`pointing_hit`).
        n_random: random baseline maps averaged (0: no random baseline, its scores NaN).
        sigma: smoothing of the random maps in pixels (default: 1/16 of the shortest side, at
            least 1).
        rng: generator of the random maps (default: seeded with 0).

    Returns:
        ``pointing``, ``energy``, ``pointing_random``, ``energy_random``, ``pointing_gain``,
        ``energy_gain`` (model minus baseline), ``area_fraction``, ``mask_voxels`` and
        ``flat_map`` (1.0 when the map is constant: no evidence anywhere).

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((8, 8)); mask[2:4, 2:4] = 1
        >>> s = np.zeros((8, 8)); s[3, 3] = 1.0
        >>> r = score_explanation(s, mask, n_random=4)
        >>> r["pointing"], r["energy"], r["area_fraction"]
        (1.0, 1.0, 0.0625)
    """
    sal, msk = _check_pair(saliency, mask)
    out = {
        "pointing": pointing_hit(sal, msk, tolerance=tolerance),
        "energy": energy_fraction(sal, msk),
        "area_fraction": float(msk.mean()),
        "mask_voxels": float(msk.sum()),
        "flat_map": float(float(sal.max()) == float(sal.min())),
    }
    if n_random > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        s = max(1.0, min(sal.shape) / 16.0) if sigma is None else float(sigma)
        maps = random_maps(sal.shape, n_random, rng=rng, sigma=s)
        out["pointing_random"] = float(
            np.mean([pointing_hit(m, msk, tolerance=tolerance) for m in maps])
        )
        out["energy_random"] = float(np.nanmean([energy_fraction(m, msk) for m in maps]))
    else:
        out["pointing_random"] = out["energy_random"] = float("nan")
    out["pointing_gain"] = out["pointing"] - out["pointing_random"]
    out["energy_gain"] = out["energy"] - out["energy_random"]
    return out


# ---------------------------------------------------------------- result
@dataclass
class ExplanationAudit:
    """The result of :func:`medgen.audit.explanations`.

    Attributes:
        per_image: one row per scored image (non-empty mask): ``image_id``, ``subject_id``, the
            ``by`` columns, ``class_idx`` (class explained), ``y_score`` (its probability),
            ``mask_voxels``, ``area_fraction`` and every metric of :data:`EXPLANATION_METRICS`.
        by_group: index ``(attribute, group, metric)`` (attribute ``"overall"``, group ``"all"``
            for everyone): ``n`` images, ``value`` (mean over images), ``low``/``high`` (bootstrap
            percentile CI), ``p_value`` (gain metrics only: two-sided bootstrap test of
            ``gain == 0``, i.e. no better than random maps), ``small_group``.
        tests: index ``(attribute, group, metric)``: each group against the attribute's reference
            group (the largest unless ``reference=``) for :data:`TESTED_METRICS`:
            ``reference_group``, ``value``, ``reference_value``, ``difference`` with its CI,
            ``p_value`` (bootstrap), ``p_adjusted`` (over the whole table) and ``significant``.
        skipped: images not scored, with ``reason`` (empty mask: no lesion to point at; no mask
            file).
        provenance: method, model, split, resamples, seed, versions.
        warnings: messages about small groups and single-group attributes.
    """

    per_image: pd.DataFrame
    by_group: pd.DataFrame
    tests: pd.DataFrame
    skipped: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list, repr=False)

    def group_table(self, attribute: str) -> pd.DataFrame:
        """One attribute's groups as rows and metrics as columns (``value``), plus ``n``."""
        if attribute not in self.by_group.index.get_level_values("attribute"):
            raise MedgenValueError(
                f"attribute {attribute!r} is not in this audit; attributes are "
                f"{sorted(set(self.by_group.index.get_level_values('attribute')))}"
            )
        sub = self.by_group.xs(attribute, level="attribute")
        wide = sub["value"].unstack("metric")[list(EXPLANATION_METRICS)]
        wide.insert(0, "n", sub["n"].groupby(level="group").first())
        return wide

    def html_section(self, *, images: bool = True) -> dict[str, Any]:
        """The report section ``{"title", "note", "table", "images"}`` (for ``render_html``)."""
        header = [
            "attribute",
            "group",
            "n",
            "pointing [CI]",
            "random",
            "energy in mask [CI]",
            "random",
            "area fraction",
            "flat maps",
        ]
        rows = []
        for (attr, group), sub in self.by_group.groupby(level=["attribute", "group"], sort=False):
            s = sub.droplevel(["attribute", "group"])

            def val(m: str, c: str = "value", s: pd.DataFrame = s) -> float:
                return float(s.loc[m, c])  # type: ignore[arg-type]

            def cell(m: str) -> str:
                return fmt_ci(val(m), val(m, "low"), val(m, "high"))

            rows.append(
                (
                    [
                        str(attr),
                        str(group),
                        str(int(s["n"].iloc[0])),
                        cell("pointing"),
                        fmt(val("pointing_random")),
                        cell("energy"),
                        fmt(val("energy_random")),
                        fmt(val("area_fraction"), 4),
                        fmt(val("flat_map"), 2),
                    ],
                    "small" if bool(s["small_group"].iloc[0]) else "",
                )
            )
        table = html_table(header, rows)
        t_header = ["attribute", "group", "metric", "reference", "difference [CI]", "p", "p adj."]
        t_rows = []
        for key, r in self.tests.iterrows():
            attr, group, metric = (str(v) for v in cast(tuple[Any, ...], key))
            t_rows.append(
                (
                    [
                        str(attr),
                        str(group),
                        str(metric),
                        str(r["reference_group"]),
                        fmt_ci(r["difference"], r["difference_low"], r["difference_high"]),
                        fmt(r["p_value"], 4),
                        fmt(r["p_adjusted"], 4),
                    ],
                    "significant" if bool(r["significant"]) else "",
                )
            )
        if t_rows:
            table += "<h3>Differences between groups</h3>" + html_table(t_header, t_rows)
        p = self.provenance
        note = (
            f"{len(self.per_image)} images with a lesion mask scored ({len(self.skipped)} skipped: "
            f"no lesion), {p.get('method')} maps of model {p.get('model')!r}. Pointing: the map's "
            "maximum lies in the lesion; energy: share of the map inside the lesion; random: "
            f"smooth random maps ({p.get('n_random')} per image); both equal the lesion's area "
            "fraction by chance; flat maps (no evidence anywhere) score chance. "
            f"{p.get('n_boot')} bootstrap resamples, {p.get('ci', 0.95):.0%} CIs; red rows: "
            "adjusted p below the CI's alpha."
        )
        return {
            "title": "Where does the model look, for whom?",
            "note": note,
            "table": table,
            "images": list(self.figures) if images else [],
        }

    def to_html(self, path: str | os.PathLike[str] | None = None, *, images: bool = True) -> str:
        """One self-contained HTML page: the section "Where does the model look, for whom?" (the
        per-group table, the between-group tests and overlay figures) and provenance."""
        p = self.provenance
        text = render_html(
            title="medgen explanation audit",
            subtitle=f"model {p.get('model')!r}, method {p.get('method')}, split {p.get('split')}",
            warnings=list(self.warnings),
            sections=[self.html_section(images=images)],
            provenance=p,
        )
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``explanations_per_image.csv``, ``explanations_by_group.csv``,
        ``explanations_tests.csv``, ``explanations_skipped.csv`` and
        ``explanations_provenance.json`` into ``directory`` (created if needed; each file written
        atomically)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = [
            atomic_write_text(
                out / "explanations_per_image.csv", self.per_image.to_csv(index=False)
            ),
            atomic_write_text(out / "explanations_by_group.csv", self.by_group.to_csv()),
            atomic_write_text(out / "explanations_tests.csv", self.tests.to_csv()),
            atomic_write_text(out / "explanations_skipped.csv", self.skipped.to_csv(index=False)),
        ]
        prov = dict(self.provenance, warnings=self.warnings)
        written.append(
            atomic_write_text(
                out / "explanations_provenance.json", json.dumps(prov, indent=2, default=str)
            )
        )
        return written

    def _repr_html_(self) -> str:
        return "<h4>Where does the model look, for whom?</h4>" + self.by_group.to_html(
            float_format=lambda v: f"{v:.3f}"
        )


# ---------------------------------------------------------------- bootstrap
def _group_means(
    values: NDArray[np.float64], codes: NDArray[np.int64], n_groups: int
) -> NDArray[np.float64]:
    """``(G, M)`` NaN-ignoring means of ``values`` ``(N, M)`` per group."""
    ok = ~np.isnan(values)
    v0 = np.where(ok, values, 0.0)
    num = np.zeros((n_groups, values.shape[1]))
    den = np.zeros((n_groups, values.shape[1]))
    np.add.at(num, codes, v0)
    np.add.at(den, codes, ok.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _boot_means(
    values: NDArray[np.float64],
    codes: NDArray[np.int64],
    n_groups: int,
    *,
    n_boot: int,
    rng: np.random.Generator,
    cluster: NDArray[np.int64] | None,
    max_elements: int = 4_000_000,
) -> NDArray[np.float64]:
    """``(B, G, M)`` stratified bootstrap replicates of the group means (each image is a cell of
    count 1, so :func:`~medgen.audit._bootstrap.draw_counts` draws the audit's bootstrap)."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    v = values[order]
    ok = (~np.isnan(v)).astype(np.float64)
    v0 = np.where(ok > 0, v, 0.0)
    bounds = np.searchsorted(c, np.arange(n_groups + 1)).astype(np.intp)
    count = np.ones(c.shape[0], dtype=np.float64)
    clusters = None
    if cluster is not None:
        clusters = cluster_map(c, np.arange(c.shape[0], dtype=np.intp), cluster[order])
    n = max(c.shape[0], 1)
    batch = max(1, min(n_boot, max_elements // n))
    out = np.empty((n_boot, n_groups, values.shape[1]))
    for b0 in range(0, n_boot, batch):
        nb = min(batch, n_boot - b0)
        draws = draw_counts(rng, count, bounds, nb, clusters)
        for g in range(n_groups):
            d = draws[:, bounds[g] : bounds[g + 1]]
            num = d @ v0[bounds[g] : bounds[g + 1]]
            den = d @ ok[bounds[g] : bounds[g + 1]]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[b0 : b0 + nb, g] = np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)
    return out


def _encode(values: pd.Series) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append(_MISSING)
    return codes, tuple(labels)


def _summaries(
    table: pd.DataFrame,
    by: Sequence[str],
    *,
    n_boot: int,
    ci: float,
    rng: np.random.Generator,
    cluster: str | None,
    reference: Mapping[str, str],
    p_adjust: str,
    min_group_size: int,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    metrics = list(EXPLANATION_METRICS)
    values = table[metrics].to_numpy(dtype=np.float64)
    clu = None
    if cluster is not None:
        clu = np.asarray(pd.factorize(table[cluster].astype(str))[0], dtype=np.int64)
    rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    groupings: list[tuple[str, NDArray[np.int64], tuple[str, ...]]] = [
        (_OVERALL[0], np.zeros(len(table), dtype=np.int64), (_OVERALL[1],))
    ]
    for col in by:
        codes, labels = _encode(table[col])
        groupings.append((col, codes, labels))
    tested = [metrics.index(m) for m in TESTED_METRICS]
    for name, codes, labels in groupings:
        g_n = np.bincount(codes, minlength=len(labels))
        est = _group_means(values, codes, len(labels))
        if n_boot > 0 and len(table) > 0:
            reps = _boot_means(values, codes, len(labels), n_boot=n_boot, rng=rng, cluster=clu)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = percentile_ci(reps, ci)
        else:
            reps = np.full((0, len(labels), len(metrics)), np.nan)
            lo = hi = np.full(est.shape, np.nan)
        for g, label in enumerate(labels):
            small = bool(g_n[g] < min_group_size) and name != _OVERALL[0]
            if small:
                notes.append(
                    f"{name}={label}: {int(g_n[g])} images with a lesion (fewer than "
                    f"{min_group_size}); its estimates are unreliable"
                )
            for j, m in enumerate(metrics):
                p = np.nan
                if m in _GAIN_METRICS and reps.shape[0] > 0:
                    p = float(bootstrap_pvalue(est[g : g + 1, j], reps[:, g : g + 1, j])[0])
                rows.append(
                    {
                        "attribute": name,
                        "group": label,
                        "metric": m,
                        "n": int(g_n[g]),
                        "value": est[g, j],
                        "low": lo[g, j],
                        "high": hi[g, j],
                        "p_value": p,
                        "small_group": small,
                    }
                )
        if name == _OVERALL[0]:
            continue
        if len(labels) < 2:
            notes.append(
                f"{name}: all scored images are in one group ({labels[0]!r}); nothing to compare"
            )
            continue
        if name in reference:
            if str(reference[name]) not in labels:
                raise MedgenValueError(
                    f"reference[{name!r}]={reference[name]!r} is not a group of that attribute "
                    f"among the scored images; groups are {list(labels)}"
                )
            ref = labels.index(str(reference[name]))
        else:
            ref = int(np.argmax(g_n))
        for g, label in enumerate(labels):
            if g == ref:
                continue
            for j in tested:
                diff = est[g, j] - est[ref, j]
                if reps.shape[0] > 0:
                    d_reps = reps[:, g, j] - reps[:, ref, j]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        d_lo, d_hi = percentile_ci(d_reps[:, None], ci)
                    pv = float(bootstrap_pvalue(np.array([diff]), d_reps[:, None])[0])
                    dl, dh = float(d_lo[0]), float(d_hi[0])
                else:
                    dl = dh = pv = float("nan")
                test_rows.append(
                    {
                        "attribute": name,
                        "group": label,
                        "metric": metrics[j],
                        "reference_group": labels[ref],
                        "value": est[g, j],
                        "reference_value": est[ref, j],
                        "difference": diff,
                        "difference_low": dl,
                        "difference_high": dh,
                        "p_value": pv,
                    }
                )
    by_group = pd.DataFrame(rows).set_index(["attribute", "group", "metric"])
    t_cols = [
        "attribute",
        "group",
        "metric",
        "reference_group",
        "value",
        "reference_value",
        "difference",
        "difference_low",
        "difference_high",
        "p_value",
    ]
    tests = pd.DataFrame(test_rows, columns=t_cols)
    tests["p_adjusted"] = adjust_pvalues(tests["p_value"].to_numpy(dtype=np.float64), p_adjust)
    tests["significant"] = tests["p_adjusted"].to_numpy(dtype=np.float64) < 1.0 - ci
    return by_group, tests.set_index(["attribute", "group", "metric"]), notes


# ---------------------------------------------------------------- images
def _spatial(img: Any, spatial_dims: int) -> Any:
    """Channel-first image with a singleton slice axis squeezed for 2D models."""
    if spatial_dims == 2 and img.ndim == 4 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


def _affine(img: Any) -> NDArray[np.float64]:
    aff = getattr(img, "affine", None)
    if aff is None:
        return np.eye(4)
    return np.asarray(aff.detach().cpu().numpy() if hasattr(aff, "detach") else aff, np.float64)


def _check_geometry(
    image: Any, mask: Any, image_path: str, mask_path: str, mask_column: str
) -> None:
    i_shape, m_shape = tuple(image.shape[1:]), tuple(mask.shape[1:])
    i_aff, m_aff = _affine(image), _affine(mask)
    same_aff = i_aff.shape == m_aff.shape and np.allclose(i_aff, m_aff, atol=1e-3, rtol=0)
    if i_shape != m_shape or not same_aff or mask.shape[0] != 1:
        with np.printoptions(precision=3, suppress=True):
            raise MedgenValueError(
                f"mask {mask_path!r} (column {mask_column!r}) does not match the geometry of "
                f"image {image_path!r}: mask shape {tuple(mask.shape)} vs image shape "
                f"{tuple(image.shape)} (channel first), mask affine {m_aff.tolist()} vs image "
                f"affine {i_aff.tolist()}. Masks must be single-channel and on the image's voxel "
                "grid: resample them onto their images (nearest neighbour) or fix the column."
            )


def _figure(image: Any, sal: Any, mask: Any, title: str) -> str:
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png
    from medgen.classify._explain import overlay

    img = np.asarray(image, dtype=np.float64)[0]
    s = np.asarray(sal, dtype=np.float64)[0]
    m = np.asarray(mask, dtype=np.float64)[0] > 0
    if img.ndim == 3:  # 3D: the slice with the most lesion
        z = int(np.argmax(m.sum(axis=(0, 1))))
        img, s, m = img[..., z], s[..., z], m[..., z]
    fig = Figure(figsize=(2.4, 2.6), layout="constrained")
    ax = fig.subplots()
    ax.imshow(overlay(img, s).transpose(1, 0, 2), origin="lower")
    if m.any():
        ax.contour(m.T.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()
    return figure_png(fig)


def _class_for(clf: Classifier, value: Any) -> int:
    """The class index explained for a diseased image: ``classes[1]`` when binary, else the
    image's own label class (or, unknown, the last class)."""
    from medgen.classify._model import _label_key

    classes = clf.classes
    if len(classes) == 2:
        return 1
    lookup = {_label_key(c): i for i, c in enumerate(classes)}
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return len(classes) - 1
    return lookup.get(_label_key(value), len(classes) - 1)


# ---------------------------------------------------------------- entry point
def explanations(
    classifier: Classifier | str | os.PathLike[str],
    cohort: Any,
    mask_column: str = "mask_path",
    *,
    method: str = "auto",
    by: str | Sequence[str] = ("sex",),
    split: str | Sequence[str] | None = "test",
    class_idx: int | None = None,
    target_layer: str | None = None,
    mask_size: int | None = None,
    tolerance: float = 0.0,
    n_random: int = 16,
    random_sigma: float | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    p_adjust: str = "holm",
    reference: Mapping[str, str] | None = None,
    cluster: str | None = None,
    min_group_size: int = 10,
    n_figures: int = 3,
    batch_size: int = 16,
    seed: int | None = None,
    progress: bool = False,
) -> ExplanationAudit:
    """Audit where a classifier looks, per subgroup, against ground-truth lesion masks.

    Every image of ``split`` whose mask (``mask_column``) is non-empty is explained
    (``Classifier.explain``: GradCAM for CNNs, attention rollout for ViTs with ``"auto"``) and
    scored: pointing-game hit, energy inside the mask, the same for smooth random maps, and the
    gains over them (:func:`score_explanation`). Images without lesion are listed in
    ``skipped``. Means per group of each ``by`` column come with stratified bootstrap CIs; each
    group is compared with a reference group (bootstrap test, Holm-adjusted).

    Args:
        classifier: a :class:`~medgen.classify.Classifier` or the folder of a saved one.
        cohort: a :class:`medgen.Cohort` or a manifest path (e.g. the simulator's).
        mask_column: column of lesion-mask paths, each on its image's voxel grid.
        method: ``"auto"``, ``"gradcam"``, ``"rollout"`` or ``"occlusion"``
            (:func:`medgen.classify.explain`).
        by: column(s) whose groups are compared (each alone; missing values form
            ``"<missing>"``).
        split: only rows of this split (or splits); ``None``: all rows.
        class_idx: class to explain; ``None``: ``classes[1]`` for a binary model, else each
            image's own label class.
        target_layer: GradCAM layer (default: the registry's for a CNN, the last block's for a
            ViT); an earlier layer gives finer maps.
        mask_size: occlusion patch size in pixels (default: 1/8 of the side).
        tolerance: pointing-game tolerance in pixels.
        n_random: random maps per image for the baseline (0: none).
        random_sigma: their smoothing in pixels (default: 1/16 of the shortest side, >= 1).
        n_boot: bootstrap resamples (0: no CIs or tests).
        ci: CI coverage.
        p_adjust: ``"holm"`` or ``"bh"`` over the tests table.
        reference: attribute -> reference group (default: the group with most scored images).
        cluster: column of cluster ids (e.g. ``"subject_id"``) resampled as wholes.
        min_group_size: groups with fewer scored images are marked ``small_group`` and warned.
        n_figures: overlay figures per group of the first ``by`` column in the HTML.
        batch_size: images explained per call.
        seed: seed of the random maps and the bootstrap; ``None`` draws one (recorded).
        progress: show a progress bar.

    Returns:
        An :class:`ExplanationAudit` (``per_image``, ``by_group``, ``tests``, ``skipped``,
        ``to_html``, ``to_csv``).

    Raises:
        MedgenValueError: a missing column, no scored images, bad options, or a mask whose shape
            or affine differs from its image's (the message names the file and both geometries).
    """
    import torch
    from tqdm.auto import tqdm

    import medgen.io
    from medgen.classify._data import as_cohort
    from medgen.classify._explain import EXPLAIN_METHODS, default_method
    from medgen.classify._model import Classifier

    clf = classifier if isinstance(classifier, Classifier) else Classifier.load(Path(classifier))
    co = as_cohort(cohort)
    df = co.df
    by_cols = [by] if isinstance(by, str) else list(by)
    for arg, cols in (("mask_column", [mask_column]), ("by", by_cols)):
        for c in cols:
            if c not in df.columns:
                raise MedgenValueError(
                    f"{arg}={c!r}: no such column in the cohort; columns are {list(df.columns)}"
                )
    if cluster is not None and cluster not in df.columns:
        raise MedgenValueError(f"cluster={cluster!r}: no such column in the cohort")
    if method not in EXPLAIN_METHODS:
        from medgen._internal.suggest import did_you_mean

        raise MedgenValueError(
            f"Unknown explain method {method!r}.{did_you_mean(method, EXPLAIN_METHODS)} Choose "
            f"one of {', '.join(EXPLAIN_METHODS)}."
        )
    if not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise MedgenValueError(f"n_boot must be an integer >= 0, not {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise MedgenValueError(f"ci must be in (0, 1), e.g. 0.95, not {ci!r}")
    if p_adjust not in P_ADJUST:
        raise MedgenValueError(f"p_adjust must be one of {P_ADJUST}, not {p_adjust!r}")
    if n_random < 0 or tolerance < 0 or batch_size < 1:
        raise MedgenValueError(
            f"n_random and tolerance must be >= 0 and batch_size >= 1 (got {n_random}, "
            f"{tolerance}, {batch_size})"
        )
    if split is not None:
        splits = [split] if isinstance(split, str) else list(split)
        df = df[df["split"].astype(str).isin(splits)]
        if df.empty:
            raise MedgenValueError(
                f"no rows with split in {splits}; splits present: "
                f"{sorted(co.df['split'].astype(str).unique())}"
            )
    df = df.reset_index(drop=True)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))  # type: ignore[operator]
    used_method = default_method(clf) if method == "auto" else method
    sd = int(clf.config["spatial_dims"])
    target = clf.target
    keep_cols = list(dict.fromkeys(["image_id", "subject_id", *by_cols]))
    if cluster is not None and cluster not in keep_cols:
        keep_cols.append(cluster)

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    figures: list[dict[str, str]] = []
    fig_count: dict[str, int] = {}
    first = by_cols[0] if by_cols else None
    pending: list[tuple[int, Any, Any]] = []

    def flush() -> None:
        if not pending:
            return
        imgs = torch.stack([torch.as_tensor(p[1]).float() for p in pending])
        ks = [
            int(class_idx)
            if class_idx is not None
            else _class_for(clf, df.at[p[0], target] if target in df.columns else None)
            for p in pending
        ]
        maps = clf.explain(
            imgs,
            method=used_method,
            class_idx=ks,
            target_layer=target_layer,
            mask_size=mask_size,
        ).numpy()
        probs = clf(imgs).numpy()
        for (i, img, msk), sal, k, pr in zip(pending, maps, ks, probs, strict=True):
            rng = np.random.default_rng([seed, i])
            sc = score_explanation(
                sal, msk, tolerance=tolerance, n_random=n_random, sigma=random_sigma, rng=rng
            )
            row = {c: df.at[i, c] for c in keep_cols}
            row.update({"class_idx": k, "y_score": float(pr[k]), **sc})
            records.append(row)
            grp = str(df.at[i, first]) if first is not None else "all"
            iid = str(df.at[i, "image_id"])
            if fig_count.get(grp, 0) < n_figures and sd in (2, 3):
                fig_count[grp] = fig_count.get(grp, 0) + 1
                title = (
                    f"{first}={grp} {iid}\nhit {sc['pointing']:.2f}, energy {sc['energy']:.3f}"
                    if first is not None
                    else iid
                )
                figures.append({"alt": title, "data": _figure(img, sal, msk, title)})
        pending.clear()

    for i in tqdm(range(len(df)), desc="explanations", disable=not progress, leave=False):
        mval: Any = df.at[i, mask_column]
        if pd.isna(mval) or str(mval) == "":
            skipped.append({"image_id": df.at[i, "image_id"], "reason": "no mask"})
            continue
        mpath = str(mval)
        mask = _spatial(medgen.io.load(mpath), sd)
        if not bool((np.asarray(mask) > 0).any()):
            skipped.append({"image_id": df.at[i, "image_id"], "reason": "empty mask (no lesion)"})
            continue
        ipath = str(df.at[i, "image_path"])
        image = _spatial(medgen.io.load(ipath), sd)
        _check_geometry(image, mask, ipath, mpath, mask_column)
        arr = np.asarray(image.as_tensor() if hasattr(image, "as_tensor") else image)
        marr = np.asarray(mask.as_tensor() if hasattr(mask, "as_tensor") else mask)
        if pending and pending[0][1].shape != arr.shape:
            flush()
        pending.append((i, arr, marr))
        if len(pending) >= batch_size:
            flush()
    flush()
    skipped_df = pd.DataFrame(skipped, columns=["image_id", "reason"])
    if not records:
        raise MedgenValueError(
            f"no image of split {split!r} has a non-empty mask in column {mask_column!r} "
            f"({len(skipped_df)} skipped); the explanation audit needs lesion masks of diseased "
            "images"
        )
    per_image = pd.DataFrame(records)
    rng = np.random.default_rng(seed)
    by_group, tests, notes = _summaries(
        per_image,
        by_cols,
        n_boot=int(n_boot),
        ci=ci,
        rng=rng,
        cluster=cluster,
        reference=dict(reference or {}),
        p_adjust=p_adjust,
        min_group_size=min_group_size,
    )
    for n in notes:
        warnings.warn(n, MetricWarning, stacklevel=2)
    provenance = {
        "model": clf.config.get("model"),
        "method": used_method,
        "mask_column": mask_column,
        "split": split,
        "by": by_cols,
        "class_idx": class_idx,
        "target_layer": target_layer,
        "mask_size": mask_size,
        "tolerance": tolerance,
        "n_random": n_random,
        "random_sigma": random_sigma,
        "n_boot": int(n_boot),
        "ci": ci,
        "p_adjust": p_adjust,
        "cluster": cluster,
        "seed": seed,
        "n_scored": len(per_image),
        "n_skipped": len(skipped_df),
        "medgen": __version__,
    }
    log.info(
        "explanations: %d images scored, %d skipped, method %s",
        len(per_image),
        len(skipped_df),
        used_method,
    )
    return ExplanationAudit(
        per_image=per_image,
        by_group=by_group,
        tests=tests,
        skipped=skipped_df,
        provenance=provenance,
        warnings=notes,
        figures=figures,
    )
