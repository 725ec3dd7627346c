"""Subject anatomy: smooth random deformations of the MNI152 tissue maps, with age effects.

The base anatomy is nilearn's MNI152 2009 template (2 mm) with its grey-matter (GM) and
white-matter (WM) probability maps and brain mask, all bundled with nilearn (no download). CSF is
the rest of the brain mask: ``csf = mask * (1 - gm - wm)`` clipped to ``[0, 1]``.

A subject is a *backward* mapping from its own space (the output grid, RAS mm) to template space:

    q = R(-theta) (p - c) / s + c + u(p)           # head size s, rotation theta about z, warp u
    q = v + (q - v) * (1 - g * exp(-|q - v|^2 / (2 * 20^2)))   # ventricle growth g with age

where ``u`` is a smooth displacement field (cubic interpolation of a coarse random control grid)
and ``v`` is the ventricle centre. Tissue maps are sampled at ``q`` (trilinear), then grey matter
is thinned by age (``atrophy``), the freed fraction becoming CSF.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medgen.simulate._config import AnatomyConfig

__all__ = ["AnatomyParams", "TissueMaps", "load_template", "output_grid", "sample_anatomy"]

#: Centre of the brain (MNI mm) on which output grids are centred.
BRAIN_CENTER_MM = np.array([0.0, -18.0, 8.0])
#: Centre of the lateral ventricles (MNI mm), around which they grow with age.
VENTRICLE_CENTER_MM = np.array([0.0, -8.0, 14.0])
VENTRICLE_SCALE_MM = 20.0


@dataclass(frozen=True)
class Template:
    """MNI152 tissue maps (X, Y, Z) in template voxels, and the voxel->mm affine."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray
    inv_affine: np.ndarray


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load (once per process) nilearn's MNI152 2 mm GM/WM probability maps and brain mask."""
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata(dtype=np.float32)
    gm = gm_img.get_fdata(dtype=np.float32)
    # smooth the binary mask edge slightly so the skull-stripped brain has a realistic boundary
    mask = ndimage.gaussian_filter(mask, 0.6)
    gm = np.clip(gm, 0, 1) * (mask > 0.05)
    wm = np.clip(wm, 0, 1) * (mask > 0.05)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    return Template(
        gm=np.ascontiguousarray(gm, dtype=np.float32),
        wm=np.ascontiguousarray(wm, dtype=np.float32),
        csf=np.ascontiguousarray(csf, dtype=np.float32),
        affine=affine,
        inv_affine=np.linalg.inv(affine),
    )


def output_grid(
    cfg: AnatomyConfig, z_mm: float | None = None
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and voxel->RAS-mm affine of the output image.

    2D: ``(image_size, image_size)`` pixels over ``fov_mm`` at axial height ``z_mm``.
    3D: a cube of ``fov_mm`` at ``spacing_mm``. Grids are centred on :data:`BRAIN_CENTER_MM`.
    """
    if cfg.mode == "2d":
        n = cfg.image_size
        sp = cfg.fov_mm / n
        shape: tuple[int, ...] = (n, n)
        spacing = np.array([sp, sp, sp])
        centre = BRAIN_CENTER_MM.copy()
        centre[2] = 0.0 if z_mm is None else z_mm
        dims = np.array([n, n, 1])
    else:
        n = max(round(cfg.fov_mm / cfg.spacing_mm), 1)
        shape = (n, n, n)
        spacing = np.full(3, cfg.spacing_mm)
        centre = BRAIN_CENTER_MM.copy()
        dims = np.array([n, n, n])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    # voxel centre (dims-1)/2 maps to the centre
    affine[:3, 3] = centre - spacing * (dims - 1) / 2.0
    if cfg.mode == "2d":
        affine[2, 3] = centre[2]
    return shape, affine


@functools.lru_cache(maxsize=8)
def _spline_matrix(n: int, g: int) -> np.ndarray:
    """``(n, g)`` matrix of 1D cubic-spline upsampling from ``g`` to ``n`` points (ends aligned)."""
    return ndimage.zoom(np.eye(g), (n / g, 1.0), order=3, mode="nearest")


@dataclass
class AnatomyParams:
    """Per-subject anatomy parameters (drawn once, recorded in the sidecar on request)."""

    scale: float
    rotation_deg: float
    control_grid: np.ndarray  # (3, g, g, g) displacement in mm
    ventricle_growth: float
    atrophy: float

    @classmethod
    def draw(cls, cfg: AnatomyConfig, age: float, rng: np.random.Generator) -> AnatomyParams:
        g = cfg.deformation_grid
        decades = max(age - 20.0, 0.0) / 10.0
        return cls(
            scale=float(1.0 + cfg.scale_sd * rng.standard_normal()),
            rotation_deg=float(cfg.rotation_deg * rng.standard_normal()),
            control_grid=(cfg.deformation_mm * rng.standard_normal((3, g, g, g))).astype(
                np.float64
            ),
            ventricle_growth=float(min(cfg.ventricle_growth_per_decade * decades, 0.6)),
            atrophy=float(min(cfg.atrophy_per_decade * decades, 0.8)),
        )


@dataclass
class TissueMaps:
    """Tissue probabilities sampled on the output points, shape ``points.shape[:-1]``."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    region: np.ndarray | None  # weight of the disease atrophy region (0..1), when requested


def sample_anatomy(
    points_mm: np.ndarray,
    params: AnatomyParams,
    *,
    fov_mm: float,
    region_center_mm: np.ndarray | None = None,
    region_radius_mm: float = 25.0,
    region_loss: float = 0.0,
    regular_grid: bool = False,
) -> TissueMaps:
    """Sample the subject's tissue maps at ``points_mm`` (``(..., 3)`` RAS mm, subject space).

    ``region_loss`` (0..1) removes that fraction of grey matter inside a smooth sphere centred at
    ``region_center_mm`` (template space), on top of the age atrophy ``params.atrophy``.
    ``regular_grid``: ``points_mm`` is a full 3D output grid ``(X, Y, Z, 3)`` (faster warp).
    """
    tpl = load_template()
    shape = points_mm.shape[:-1]
    p = points_mm.reshape(-1, 3).astype(np.float64)
    c = BRAIN_CENTER_MM
    theta = np.deg2rad(-params.rotation_deg)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0, 0, 1.0]]
    )
    q = (p - c) @ rot.T / params.scale + c
    # smooth warp: control grid spans the field of view (a cube) around the brain centre
    # 2D stacks (n_z, X, Y) differ only by small z offsets: evaluate the smooth warp on the middle
    # sub-slice and share it (the warp varies over centimetres, the offsets are millimetres)
    # A 3D output grid is regular: upsample the control grid to it (cubic spline, end points
    # aligned with the grid corners), which is ~10x faster than interpolating at every point.
    g = params.control_grid.shape[1]
    share = not regular_grid and len(shape) == 3 and shape[0] <= 5
    p_warp = points_mm[shape[0] // 2].reshape(-1, 3) if share else p
    gi = (p_warp - (c - fov_mm / 2.0)) / fov_mm * (g - 1)
    for k in range(3):
        if regular_grid:
            u = np.einsum(
                "ia,jb,kc,abc->ijk",
                *(_spline_matrix(n, g) for n in shape),
                params.control_grid[k],
                optimize=True,
            ).ravel()
        else:
            u = ndimage.map_coordinates(
                params.control_grid[k], gi.T, order=3, mode="nearest", prefilter=True
            )
        q[:, k] += np.tile(u, shape[0]) if share else u
    if params.ventricle_growth > 0:
        d = q - VENTRICLE_CENTER_MM
        r2 = np.sum(d * d, axis=1, keepdims=True)
        q = VENTRICLE_CENTER_MM + d * (
            1.0 - params.ventricle_growth * np.exp(-r2 / (2 * VENTRICLE_SCALE_MM**2))
        )
    vox = np.c_[q, np.ones(len(q))] @ tpl.inv_affine.T
    coords = vox[:, :3].T
    gm = ndimage.map_coordinates(tpl.gm, coords, order=1, mode="constant", cval=0.0)
    wm = ndimage.map_coordinates(tpl.wm, coords, order=1, mode="constant", cval=0.0)
    csf = ndimage.map_coordinates(tpl.csf, coords, order=1, mode="constant", cval=0.0)
    loss = np.full(gm.shape, params.atrophy)
    region = None
    if region_center_mm is not None:
        dist = np.linalg.norm(q - np.asarray(region_center_mm, dtype=np.float64), axis=1)
        region = 1.0 / (1.0 + np.exp((dist - region_radius_mm) / 3.0))
        loss = 1.0 - (1.0 - loss) * (1.0 - region_loss * region)
    csf = csf + gm * loss
    gm = gm * (1.0 - loss)
    return TissueMaps(
        gm=gm.reshape(shape),
        wm=wm.reshape(shape),
        csf=csf.reshape(shape),
        region=None if region is None else region.reshape(shape),
    )


def grid_points(shape: tuple[int, ...], affine: np.ndarray, z_offsets_mm: np.ndarray) -> np.ndarray:
    """World points of the output grid: ``(n_z, X, Y, 3)`` for 2D (one per z offset), or
    ``(X, Y, Z, 3)`` for 3D (``z_offsets_mm`` ignored)."""
    if len(shape) == 2:
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        vox = np.stack([ii, jj, np.zeros_like(ii), np.ones_like(ii)], axis=-1).astype(np.float64)
        world = vox @ affine.T
        pts = np.repeat(world[None, ..., :3], len(z_offsets_mm), axis=0)
        pts[..., 2] += np.asarray(z_offsets_mm)[:, None, None]
        return pts
    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    vox = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).astype(np.float64)
    return (vox @ affine.T)[..., :3]
