"""Disease effects: white-matter hyperintense lesions with a mask, or regional atrophy.

Lesions are smooth spheres (logistic edge) centred on white matter (WM probability > 0.7),
confined to tissue by ``clip(2 * wm + 0.3 * gm, 0, 1)``. Their count, size and contrast grow with
the subject's severity; a *presentation* bias multiplies size and contrast by a factor < 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medgen.simulate._anatomy import VENTRICLE_CENTER_MM
from medgen.simulate._config import DiseaseConfig

__all__ = ["Lesion", "draw_lesions", "grade_of", "render_lesions", "scale_lesions"]


@dataclass(frozen=True)
class Lesion:
    """One lesion: centre (RAS mm, subject space) and radius (mm)."""

    center_mm: tuple[float, float, float]
    radius_mm: float


def draw_lesions(
    cfg: DiseaseConfig,
    severity: float,
    presentation: float,
    wm_points_mm: np.ndarray,
    rng: np.random.Generator,
    *,
    z_jitter_mm: float = 0.0,
) -> list[Lesion]:
    """Draw lesions for a subject of ``severity`` (0 = healthy: none).

    ``wm_points_mm`` (N, 3): candidate centres (points in white matter). ``presentation`` (0..1]
    scales the radius (``presentation`` is also applied to contrast at render time).
    ``z_jitter_mm`` moves centres through-plane (2D mode) so slices cut lesions off-centre.
    """
    if severity <= 0 or len(wm_points_mm) == 0:
        return []
    count = 1 + int(rng.poisson(severity * cfg.lesion_count))
    lo, hi = cfg.lesion_radius_mm
    out = []
    if cfg.lesion_location == "periventricular":
        d = np.linalg.norm(wm_points_mm - VENTRICLE_CENTER_MM, axis=1)
        w = np.exp(-d / 25.0)
        idx = rng.choice(len(wm_points_mm), size=count, p=w / w.sum())
    else:
        idx = rng.integers(0, len(wm_points_mm), size=count)
    for i in idx:
        r = (lo + (hi - lo) * severity) * rng.uniform(0.75, 1.25) * (0.5 + 0.5 * presentation)
        c = wm_points_mm[i].astype(np.float64).copy()
        c[2] += rng.uniform(-z_jitter_mm, z_jitter_mm) * min(1.0, r / max(z_jitter_mm, 1e-9))
        out.append(Lesion(center_mm=(float(c[0]), float(c[1]), float(c[2])), radius_mm=float(r)))
    return out


def render_lesions(
    points_mm: np.ndarray, lesions: list[Lesion], *, edge_mm: float, tissue: np.ndarray
) -> np.ndarray:
    """Lesion occupancy (0..1) at ``points_mm`` (..., 3), restricted by ``tissue`` (0..1)."""
    occ = np.zeros(points_mm.shape[:-1])
    for les in lesions:
        d = np.linalg.norm(points_mm - np.asarray(les.center_mm), axis=-1)
        occ = np.maximum(occ, 1.0 / (1.0 + np.exp((d - les.radius_mm) / edge_mm)))
    return occ * tissue


def scale_lesions(
    cfg: DiseaseConfig, lesions: list[Lesion], from_severity: float, to_severity: float
) -> list[Lesion]:
    """The same lesions at another severity: the same centres, radii scaled by the ratio of
    the radius range at the two severities (``lo + (hi - lo) * severity``); none at 0."""
    if to_severity <= 0:
        return []
    lo, hi = cfg.lesion_radius_mm
    factor = (lo + (hi - lo) * to_severity) / (lo + (hi - lo) * from_severity)
    return [Lesion(center_mm=les.center_mm, radius_mm=les.radius_mm * factor) for les in lesions]


def grade_of(cfg: DiseaseConfig, severity: np.ndarray) -> np.ndarray:
    """The graded disease label of each severity (``cfg.grades``; see :class:`DiseaseConfig`).

    Args:
        cfg: the disease config; ``cfg.grades`` must be set.
        severity: ``(N,)`` severities in [0, 1] (0 = healthy).

    Returns:
        ``(N,)`` object array of grade names: ``grades[0]`` at severity 0, else
        ``grades[1 + #(grade_thresholds <= severity)]``.

    Example:
        >>> cfg = DiseaseConfig(grades=("none", "mild", "severe"), grade_thresholds=(0.65,))
        >>> grade_of(cfg, np.array([0.0, 0.3, 0.65, 0.9])).tolist()
        ['none', 'mild', 'severe', 'severe']
    """
    names = np.asarray(cfg.grades, dtype=object)
    sev = np.asarray(severity, dtype=np.float64)
    idx = 1 + np.searchsorted(np.asarray(cfg.grade_thresholds, dtype=np.float64), sev, side="right")
    return np.where(sev > 0, names[np.minimum(idx, len(names) - 1)], names[0])
