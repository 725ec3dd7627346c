"""medgen.io.load on real bundled files: voxels and world coordinates against pydicom and nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medgen.errors import DicomError, ImageReadError, MedgenFileNotFoundError
from medgen.io import load, save

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _dicom_world(ds: pydicom.Dataset, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """RAS world mm of column i / row j of a single-frame slice, straight from the DICOM standard."""
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = ipp[:, None] + np.outer(iop[:3], i * dc) + np.outer(iop[3:], j * dr)
    return lps * np.array([-1.0, -1.0, 1.0])[:, None]


def _voxel_world(img: torch.Tensor, i: np.ndarray, j: np.ndarray, k: np.ndarray) -> np.ndarray:
    aff = np.asarray(img.affine, dtype=np.float64)
    return aff[:3, :3] @ np.stack([i, j, k]).astype(float) + aff[:3, 3:4]


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])
def test_single_dicom_voxels_and_world_match_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    img = load(path)
    assert img.dtype == torch.float32
    assert tuple(img.shape) == (1, ds.Columns, ds.Rows, 1)
    expected = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    # voxel (x=column, y=row) == pixel_array[row, column]
    np.testing.assert_allclose(img[0, :, :, 0].numpy(), expected.T, rtol=0, atol=1e-3)
    jj, ii = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    i, j = ii.ravel(), jj.ravel()
    np.testing.assert_allclose(
        _voxel_world(img, i, j, np.zeros_like(i)), _dicom_world(ds, i, j), atol=1e-6
    )
    assert img.affine.dtype == torch.float64 and tuple(img.affine.shape) == (4, 4)
    assert img.meta["format"] == "dicom"
    assert img.meta["Modality"] == ds.Modality
    assert img.meta["spacing"][:2] == (float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]))


@pytest.mark.parametrize(
    "name",
    [
        "anatomical.nii",
        "example4d.nii.gz",
        "example_nifti2.nii.gz",
        "standard.nii.gz",
        "functional.nii",
    ],
)
def test_nifti_voxels_and_affine_match_nibabel(name: str) -> None:
    path = NIB_DATA / name
    ref = nib.load(path)
    data = ref.get_fdata()
    img = load(path)
    assert img.meta["format"] == "nifti"
    assert img.dtype == torch.float32
    if data.ndim == 3:
        assert tuple(img.shape) == (1, *data.shape)
        np.testing.assert_allclose(img[0].numpy(), data, rtol=1e-6, atol=1e-5)
    else:
        assert tuple(img.shape) == (data.shape[3], *data.shape[:3])
        np.testing.assert_allclose(np.moveaxis(img.numpy(), 0, -1), data, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(img.affine.numpy(), ref.affine, atol=1e-9)
    # world of every 7th voxel: nibabel's apply_affine vs the MetaTensor affine
    ijk = np.stack(
        np.meshgrid(*[np.arange(0, s, 7) for s in data.shape[:3]], indexing="ij"), -1
    ).reshape(-1, 3)
    np.testing.assert_allclose(
        _voxel_world(img, *ijk.T).T, nib.affines.apply_affine(ref.affine, ijk), atol=1e-6
    )
    np.testing.assert_allclose(img.meta["spacing"], ref.header.get_zooms()[:3], rtol=1e-5)


def test_nifti_round_trip_keeps_values_geometry_and_synthetic_mark(tmp_path: Path) -> None:
    img = load(NIB_DATA / "example4d.nii.gz")
    out = save(img, tmp_path / "copy.nii.gz", synthetic=True, derivation_description="test copy")
    back = load(out)
    assert torch.equal(back.as_tensor(), img.as_tensor())
    np.testing.assert_allclose(back.affine.numpy(), img.affine.numpy(), atol=1e-6)
    assert back.meta["synthetic"] is True and "test copy" in back.meta["descrip"]
    assert load(NIB_DATA / "example4d.nii.gz").meta["synthetic"] is False
    assert not [p for p in tmp_path.iterdir() if p.name != "copy.nii.gz"], (
        "temporary file left behind"
    )


def test_save_array_with_affine_and_dicom_to_nifti(tmp_path: Path) -> None:
    mr = load(get_testdata_file("MR_small.dcm"))
    back = load(save(mr, tmp_path / "mr.nii"))
    assert torch.equal(back.as_tensor(), mr.as_tensor())
    np.testing.assert_allclose(back.affine.numpy(), mr.affine.numpy(), atol=1e-6)
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    aff = np.diag([0.5, 2.0, 3.0, 1.0])
    aff[:3, 3] = [10, -20, 5]
    back = load(save(arr, tmp_path / "a.nii.gz", affine=aff))
    np.testing.assert_array_equal(back.numpy(), arr)
    np.testing.assert_allclose(back.affine.numpy(), aff)
    assert back.meta["spacing"] == (0.5, 2.0, 3.0)


def test_missing_path_names_file(tmp_path: Path) -> None:
    with pytest.raises(MedgenFileNotFoundError, match=r"nope\.nii\.gz does not exist") as err:
        load(tmp_path / "nope.nii.gz")
    assert isinstance(err.value, FileNotFoundError)


def test_unsupported_suffix(tmp_path: Path) -> None:
    p = tmp_path / "photo.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ImageReadError, match=r"photo\.png: unsupported file type '\.png'.*NIfTI"):
        load(p)


def test_empty_and_random_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(DicomError, match=r"empty\.dcm: the file is empty"):
        load(empty)
    rnd = tmp_path / "random.dcm"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DicomError, match=r"random\.dcm") as err:
        load(rnd)
    assert isinstance(err.value, ValueError)
    nii = tmp_path / "empty.nii.gz"
    nii.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz: the file is empty"):
        load(nii)


def test_2d_nifti_loads_channel_first_with_4x4_affine(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    aff = np.diag([0.5, 0.25, 1.0, 1.0])
    nib.save(nib.Nifti1Image(arr, aff), tmp_path / "flat.nii.gz")
    img = load(tmp_path / "flat.nii.gz")
    assert tuple(img.shape) == (1, 3, 4) and tuple(img.affine.shape) == (4, 4)
    np.testing.assert_array_equal(img[0].numpy(), arr)
    assert img.meta["spacing"] == (0.5, 0.25)


def test_scaled_nifti_applies_slope_and_intercept(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    ni = nib.Nifti1Image(arr, np.eye(4))
    ni.header.set_slope_inter(0.5, -3.0)
    nib.save(ni, tmp_path / "s.nii")
    np.testing.assert_allclose(load(tmp_path / "s.nii")[0].numpy(), arr * 0.5 - 3.0)


def test_corrupt_gzip_nifti_names_file(tmp_path: Path) -> None:
    good = (NIB_DATA / "example4d.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        ImageReadError, match=r"cut\.nii\.gz: the gzip stream is corrupt or truncated"
    ):
        load(bad)


def test_metatensor_works_with_monai_transforms() -> None:
    from monai.transforms import Orientation, Spacing

    img = load(get_testdata_file("CT_small.dcm"))
    # DICOM voxels run towards L and P: MONAI reads that from the RAS affine ...
    assert Orientation(axcodes="LPS")(img).affine.numpy() == pytest.approx(img.affine.numpy())
    ras = Orientation(axcodes="RAS")(img)
    # ... and reorienting to RAS flips x and y, keeping each voxel's world position
    assert np.all(np.diag(ras.affine.numpy())[:3] > 0)
    np.testing.assert_array_equal(ras[0, :, :, 0].numpy(), img[0, :, :, 0].numpy()[::-1, ::-1])
    world = img.affine.numpy() @ [5, 9, 0, 1]
    ijk = np.rint(np.linalg.solve(ras.affine.numpy(), world)).astype(int)
    assert ras[0, ijk[0], ijk[1], ijk[2]] == img[0, 5, 9, 0]
    resampled = Spacing(pixdim=(1.0, 1.0, 5.0))(img)
    assert resampled.shape[1] == pytest.approx(128 * 0.661468, abs=1)


def test_import_medgen_io_stays_light() -> None:
    """``import medgen.io`` and the scan command's module must not pull in torch or MONAI."""
    import subprocess
    import sys

    code = (
        "import sys, medgen.io, medgen.io._cli; "
        "print(sorted(m for m in ('torch', 'monai', 'pandas', 'pydicom', 'nibabel') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert out.stdout.strip() == "[]"
