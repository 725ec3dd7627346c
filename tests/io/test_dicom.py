"""DICOM series, multi-frame and compressed files through medgen.io.load; MONAI's defects pinned."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medgen.errors import (
    DicomError,
    MultipleSeriesError,
    SeriesGeometryError,
    SeriesGeometryWarning,
)
from medgen.io import load

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run anterior->posterior, columns head->feet
# an oblique orientation: rotate the axial rows/cols 30 degrees about x then 20 about z
_a, _b = np.deg2rad(30), np.deg2rad(20)
_rz = np.array([[np.cos(_b), -np.sin(_b), 0], [np.sin(_b), np.cos(_b), 0], [0, 0, 1]])
_rx = np.array([[1, 0, 0], [0, np.cos(_a), -np.sin(_a)], [0, np.sin(_a), np.cos(_a)]])
OBLIQUE = tuple(np.concatenate([_rz @ _rx @ [1, 0, 0], _rz @ _rx @ [0, 1, 0]]).round(8))


def _expected_world(path: Path, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """RAS mm (3, N) of columns i / rows j of the slice in ``path``, from its own header."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = ipp[:, None] + np.outer(iop[:3], dc * i) + np.outer(iop[3:], dr * j)
    return lps * np.array([-1.0, -1.0, 1.0])[:, None]


@pytest.mark.parametrize(
    "iop", [(1, 0, 0, 0, 1, 0), SAGITTAL, OBLIQUE], ids=["axial", "sagittal", "oblique"]
)
def test_series_sorted_by_position_not_instance_number(
    tmp_path: Path, iop: tuple[float, ...], write_series: Callable[..., list[Path]]
) -> None:
    positions = [12.0, 0.0, 9.0, 3.0, 6.0, 15.0]  # file s at positions[s]; InstanceNumbers shuffled
    paths = write_series(tmp_path / "s", positions, iop=iop)
    img = load(tmp_path / "s")
    assert tuple(img.shape) == (1, 64, 64, 6)
    order = np.argsort(positions)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.T.astype(np.float32)
    for k, s in enumerate(order):
        np.testing.assert_array_equal(img[0, :, :, k].numpy(), base + 100 * s)
        # world coordinates of every voxel of slice k against the file's own header
        i, j = (a.ravel() for a in np.meshgrid(np.arange(64), np.arange(64), indexing="ij"))
        vox = np.stack([i, j, np.full_like(i, k), np.ones_like(i)]).astype(float)
        world = (img.affine.numpy() @ vox)[:3]
        np.testing.assert_allclose(world, _expected_world(paths[s], i, j), atol=1e-4)
    assert img.meta["spacing"] == pytest.approx((0.3125, 0.3125, 3.0), abs=1e-5)
    assert img.meta["filenames"] == [str(paths[s]) for s in order]


def test_monai_pydicomreader_defects_are_fixed(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    """MONAI 1.6.1 stacks by InstanceNumber and builds the affine from the first/last numbered slice."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    positions = [0.0, 3.0, 6.0, 9.0, 12.0]
    numbers = [3, 1, 5, 2, 4]  # InstanceNumber disagrees with position
    write_series(tmp_path / "ax", positions, instance_numbers=numbers)
    ours = load(tmp_path / "ax")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "ax"))
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.T.astype(np.float32)
    # MONAI: slice k is the file with the k-th InstanceNumber -> positions out of order
    monai_order = np.argsort(numbers)
    np.testing.assert_array_equal(theirs[:, :, 0].numpy(), base + 100 * monai_order[0])
    assert not np.array_equal(monai_order, np.arange(5))
    # MONAI's affine runs from the first to the last InstanceNumber: origin at the file numbered 1
    # (position 3 mm, z = 7.5 + 3) and z step (6 - 3) / 4 = 0.75 mm instead of 3 mm
    assert float(theirs.affine[2, 3]) == pytest.approx(10.5)
    assert float(theirs.affine[2, 2]) == pytest.approx(0.75)
    assert float(theirs.meta["spacing"][2]) == pytest.approx(0.75)
    # medgen: by position, 3 mm
    for k in range(5):
        np.testing.assert_array_equal(ours[0, :, :, k].numpy(), base + 100 * k)
    assert ours.meta["spacing"][2] == pytest.approx(3.0)
    np.testing.assert_allclose(
        ours.affine.numpy()[:3, 2:], [[0, 20], [0, -15], [3, 7.5]], atol=1e-6
    )


def test_rescale_applied_per_slice(tmp_path: Path, write_series: Callable[..., list[Path]]) -> None:
    write_series(tmp_path / "s", [0.0, 2.0, 4.0], slopes=[1.0, 2.0, 0.5])
    img = load(tmp_path / "s")
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.T.astype(np.float64)
    for k, slope in enumerate([1.0, 2.0, 0.5]):
        np.testing.assert_allclose(img[0, :, :, k].numpy(), (base + 100 * k) * slope - 5, atol=1e-3)


def test_missing_slice_and_uneven_spacing_split_into_blocks(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    """Issue 18: a gap is never bridged by a uniform step; each contiguous block loads exactly."""
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.raises(SeriesGeometryError, match=r"1 gap\(s\).*slices are missing.*part="):
        load(tmp_path / "gap")
    with pytest.warns(SeriesGeometryWarning, match=r"splits into 2 contiguous blocks"):
        first = load(tmp_path / "gap", part="block=1")
    second = load(tmp_path / "gap", part=1)
    assert first.shape[-1] == 3 and second.shape[-1] == 2
    # origin z of each block is the header position (origin 7.5 + offset); RAS z == LPS z
    assert float(first.affine[2, 3]) == pytest.approx(7.5)
    assert float(second.affine[2, 3]) == pytest.approx(15.5)
    assert float(second.affine[2, 2]) == pytest.approx(2.0)
    write_series(tmp_path / "uneven", [0.0, 2.0, 4.3, 6.0, 8.0])
    with pytest.raises(SeriesGeometryError, match="uneven"):
        load(tmp_path / "uneven")


def test_mixed_orientation_and_duplicate_positions_raise(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    uid = generate_uid()
    write_series(tmp_path / "mix", [0.0, 2.0, 4.0], series_uid=uid)
    write_series(tmp_path / "mix", [0.0, 2.0], iop=SAGITTAL, series_uid=uid, seed=1)
    with pytest.raises(SeriesGeometryError, match=r"mix \(series .*2 different orientations"):
        load(tmp_path / "mix")
    uid = generate_uid()
    write_series(tmp_path / "dup", [0.0, 2.0, 4.0], series_uid=uid)
    write_series(tmp_path / "dup", [2.0], series_uid=uid, seed=2)
    with pytest.raises(SeriesGeometryError, match=r"share a position.*split them"):
        load(tmp_path / "dup")


def test_folder_with_two_series_lists_them_and_series_picks(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(tmp_path / "two", [0.0, 1.0, 2.0], series_uid=uid_a)
    write_series(tmp_path / "two", [0.0, 5.0], series_uid=uid_b, seed=3)
    with pytest.raises(MultipleSeriesError, match="holds 2 DICOM series") as err:
        load(tmp_path / "two")
    assert uid_a in str(err.value) and uid_b in str(err.value) and "series=" in str(err.value)
    assert load(tmp_path / "two", series=uid_b).shape[-1] == 2
    assert load(tmp_path / "two", series=uid_a).meta["SeriesInstanceUID"] == uid_a
    with pytest.raises(MultipleSeriesError, match="matches 0"):
        load(tmp_path / "two", series="1.2.3")


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_and_big_endian_twins_give_mr_small_voxels(name: str) -> None:
    ref = load(get_testdata_file("MR_small.dcm"))
    img = load(get_testdata_file(name))
    assert torch.equal(img.as_tensor(), ref.as_tensor())
    np.testing.assert_allclose(img.affine.numpy(), ref.affine.numpy())


def test_multiframe_rtdose_uses_grid_offsets_and_dose_scaling() -> None:
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = load(path)
    assert tuple(img.shape) == (1, ds.Columns, ds.Rows, ds.NumberOfFrames)
    expected = ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)  # (frames, rows, cols)
    np.testing.assert_allclose(img[0].numpy(), expected.transpose(2, 1, 0), rtol=1e-6)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    for k in (0, 7, 14):  # frame k sits at IPP + offset_k along the normal (+z here)
        world = img.affine.numpy() @ [3, 2, k, 1]
        lps = ipp + np.array([3 * 10.0, 2 * 10.0, offsets[k]])
        np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-6)


def test_enhanced_multiframe_per_frame_positions() -> None:
    path = get_testdata_file("liver_1frame.dcm")  # SEG with per-frame functional groups
    ds = pydicom.dcmread(path)
    img = load(path)
    assert tuple(img.shape) == (1, 512, 512, 1)
    ipp = np.asarray(
        ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient, float
    )
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], ipp * [-1, -1, 1])
    np.testing.assert_allclose(img.meta["spacing"], (0.810547, 0.810547, 1.0))
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), ds.pixel_array.T)


def test_color_multiframe_puts_rgb_in_channels() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(path)
    img = load(path)
    assert tuple(img.shape) == (3, ds.Columns, ds.Rows, 2)
    np.testing.assert_array_equal(img.numpy(), ds.pixel_array.transpose(3, 2, 1, 0))


def test_truncated_dicom_names_file_and_remedy() -> None:
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm.*re-copy or re-export") as err:
        load(get_testdata_file("MR_truncated.dcm"))
    assert isinstance(err.value, ValueError)


def test_non_image_dicom_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match=r"rtplan\.dcm.*without an image"):
        load(get_testdata_file("rtplan.dcm"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="holds no DICOM image files"):
        load(tmp_path / "empty")


def test_corrupt_slice_in_series_is_an_error_not_a_silent_drop(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    write_series(tmp_path / "s", [0.0, 1.0, 2.0])
    (tmp_path / "s" / "broken.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DicomError, match=r"broken\.dcm"):
        load(tmp_path / "s")


def test_enhanced_multiframe_frames_sorted_by_per_frame_position(tmp_path: Path) -> None:
    """Per-frame PlanePositionSequence decides the order, not the frame order in the file."""
    from pydicom.pixels import pack_bits

    ds = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"))  # 1-bit SEG, 3 per-frame items
    frames = np.zeros((3, 512, 512), np.uint8)
    for f in range(3):
        frames[f, 10 * f : 10 * f + 5, 20:40] = 1  # frame f marked by a bar at rows 10f..10f+4
    ds.NumberOfFrames = 3
    ds.PixelData = pack_bits(frames)
    z = [-120.0, -126.0, -123.0]  # frame 0 on top, frames 1 and 2 below it, out of order
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.PlanePositionSequence[0].ImagePositionPatient = [-235.2, -226.8, z[f]]
    ds.save_as(tmp_path / "seg.dcm")
    img = load(tmp_path / "seg.dcm")
    assert tuple(img.shape) == (1, 512, 512, 3)
    for k, f in enumerate(np.argsort(z)):
        np.testing.assert_array_equal(img[0, :, :, k].numpy(), frames[f].T)
    assert img.meta["spacing"][2] == pytest.approx(3.0)
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], [235.2, 226.8, -126.0])


def test_palette_color_mapped_to_rgb() -> None:
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    img = load(path)
    assert tuple(img.shape) == (3, ds.Columns, ds.Rows, 1)
    np.testing.assert_array_equal(
        img[..., 0].numpy(), apply_color_lut(ds.pixel_array, ds).transpose(2, 1, 0)
    )


def test_undecodable_compressed_file_says_which_syntax_and_what_to_do() -> None:
    with pytest.raises(
        DicomError, match=r"(?s)JPEG-lossy\.dcm.*every installed decoder failed on JPEG Extended"
    ):
        load(get_testdata_file("JPEG-lossy.dcm"))


def test_series_without_positions_falls_back_to_instance_number_with_warning(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    paths = write_series(tmp_path / "s", [0.0, 1.0, 2.0], instance_numbers=[2, 3, 1])
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(p)
    with pytest.warns(SeriesGeometryWarning, match="stacked by InstanceNumber"):
        img = load(tmp_path / "s")
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.T.astype(np.float32)
    for k, s in enumerate([2, 0, 1]):  # files ordered by their InstanceNumbers 1, 2, 3
        np.testing.assert_array_equal(img[0, :, :, k].numpy(), base + 100 * s)
    assert img.meta["geometry_assumed"] is True
