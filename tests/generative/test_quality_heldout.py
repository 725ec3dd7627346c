"""The held-out set of ``benchmarks/restoration.py`` (the one definition the training script of
the pretrained models imports): slices, volumes, files, modality tags and the low-dose CT dose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BAND = (60, 130)


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("restoration")


def test_held_out_slices_tagged_with_modality(bench: ModuleType) -> None:
    slices = bench.test_images(BAND)
    names = [n for n, _, _ in slices]
    assert len(slices) == 15 and len(set(names)) == 15
    assert {"693_UNCR", "MR2_UNCR", "MR-SIEMENS"} <= set(names)
    shapes = {n: img.shape for n, _, img in slices}
    assert shapes["693_UNCR"] == (512, 512) and shapes["MR-SIEMENS"] == (484, 484)
    assert shapes["MR2_UNCR"] == (512, 512)  # 1024 x 1024 block-averaged by 2
    ct = [(n, img) for n, s, img in slices if bench.modality(s) == "ct"]
    assert [n for n, _ in ct] == ["CT_small", "693_UNCR"]
    for _, img in ct:  # HU: air far below 0, soft tissue around 0..100
        assert img.min() < -800 and ((img > -100) & (img < 100)).mean() > 0.05
    assert all(img.ndim == 2 and np.isfinite(img).all() for _, _, img in slices)


def test_held_out_volumes_outside_the_training_band(bench: ModuleType) -> None:
    vols = bench.test_volumes(BAND)
    assert [n for n, _, _ in vols] == ["anatomical", "mni_z24-55", "mni_z134-165"]
    assert all(v.ndim == 3 and v.shape[-1] % 4 == 0 for _, _, v in vols)
    mni = bench._mni()
    band = mni[..., BAND[0] : BAND[1]]
    for _, _, v in vols[1:]:  # no slice of a test volume is a training-band slice
        (x0, y0) = np.argwhere(mni.max(axis=2) > 0.05 * float(mni.max())).min(axis=0)
        crop = band[x0 : x0 + v.shape[0], y0 : y0 + v.shape[1]]
        for k in range(v.shape[-1]):
            assert not np.any(np.all(crop == v[..., k : k + 1], axis=(0, 1)))


def test_held_out_files_list_every_compression(bench: ModuleType) -> None:
    import data_store

    files = bench.held_out_files()
    assert all(p.is_file() for p in files)
    names = {p.name for p in files}
    store = Path(data_store.__file__).parent / "data"
    for prefix in ("693_", "MR2_", "MR-SIEMENS-"):
        variants = {p.name for p in store.glob(f"{prefix}*")}
        assert len(variants) >= 1 and variants <= names
    assert {"693_J2KR.dcm", "MR2_J2KI.dcm", "MR_small_RLE.dcm", "CT_small.dcm"} <= names
    assert {"example4d.nii.gz", "anatomical.nii"} <= names


def test_ct_dose_gives_the_noise_asked_for_in_soft_tissue(bench: ModuleType) -> None:
    from medgen.simulate import degrade

    img = next(img for n, _, img in bench.test_images(BAND) if n == "693_UNCR")
    sigma, photons = bench.ct_dose(img, 30.0, 10.0)
    noisy = np.asarray(
        degrade(img, noise="poisson_gaussian", sigma=sigma, photons=photons, seed=0).degraded
    )
    near_40 = (img > 20) & (img < 60)
    assert np.std((noisy - img)[near_40]) == pytest.approx(30.0, rel=0.05)
    with pytest.raises(SystemExit, match="--ct-noise-hu > --ct-electronic-hu"):
        bench.ct_dose(img, 10.0, 20.0)
