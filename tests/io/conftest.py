"""Fixtures of the io tests: DICOM series written from pydicom's MR_small test file."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

#: ``write_series(folder, positions_mm, *, iop, origin, instance_numbers, seed, series_uid, slopes)``
WriteSeries = Callable[..., list[Path]]


def _write_series(
    folder: Path,
    positions_mm: list[float],
    *,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-20.0, 15.0, 7.5),
    instance_numbers: list[int] | None = None,
    seed: int = 0,
    series_uid: str | None = None,
    slopes: list[float] | None = None,
) -> list[Path]:
    """Write MR_small-based slices at ``positions_mm`` along the normal, with shuffled file names.

    Slice s gets pixel values ``MR_small + 100 * s`` so its identity survives any reordering.
    """
    rng = np.random.default_rng(seed)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    px = base.pixel_array.astype(np.int16)
    iop_a = np.asarray(iop, float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    uid = series_uid or generate_uid()
    numbers = instance_numbers or list(rng.permutation(len(positions_mm)) + 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, pos in enumerate(positions_mm):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = uid
        ds.InstanceNumber = int(numbers[s])
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop_a]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + pos * normal]
        ds.RescaleSlope = slopes[s] if slopes else 1
        ds.RescaleIntercept = -5 if slopes else 0
        ds.PixelData = (px + 100 * s).astype(np.int16).tobytes()
        p = folder / f"{rng.integers(1e9):09d}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def write_series() -> WriteSeries:
    """:func:`_write_series`: DICOM slices at positions along the normal, shuffled file names."""
    return _write_series
