"""Issue 18: real clinical DICOM from pydicom-data and nibabel's nicom test data.

Expected values come from the headers (hand-computed positions) or from nibabel's own tests
(the Siemens mosaic); pixel values are compared with pydicom's/nibabel's decoders.
"""

from __future__ import annotations

import copy
import gzip
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from medgen.errors import (
    DicomError,
    DicomReadWarning,
    MedgenError,
    SeriesGeometryError,
    SeriesGeometryWarning,
)
from medgen.io import load, save, scan
from medgen.io._scan import normalise_sex, parse_age

NICOM = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"

#: nibabel/nicom/tests/test_dicomwrappers.py: EXPECTED_AFFINE before its [:, [1, 0, 2, 3]]
#: column swap, i.e. RAS for voxel (column, row, slice), medgen's (x, y, z) order
MOSAIC_AFFINE = np.array(
    [
        [-1.796875, 0, 0, 115],
        [0, -1.79684984, -0.01570896, 135.028779],
        [0, -0.00940843750, 2.99995887, -78.710481],
        [0, 0, 0, 1],
    ]
)


def _data_dir(name: str) -> Path:
    """A folder of pydicom-data's dicomdirtests tree (e.g. ``77654033/CT2``)."""
    hits = [p for p in get_testdata_files() if p.replace(os.sep, "/").endswith(name)]
    assert hits, name
    return Path(hits[0])


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nibabel's siemens_dwi_1000.dcm.gz, un-gzipped."""
    out = tmp_path_factory.mktemp("mosaic") / "siemens_dwi_1000.dcm"
    with gzip.open(NICOM / "siemens_dwi_1000.dcm.gz") as fh:
        out.write_bytes(fh.read())
    return out


# ---------------------------------------------------------------- (1) pixel spacing


def test_zero_pixel_spacing_is_an_error_naming_the_file_or_takes_spacing() -> None:
    path = get_testdata_file("RG1_UNCR.dcm")  # chest X-ray, PixelSpacing 0\0
    with pytest.raises(
        DicomError, match=r"RG1_UNCR\.dcm: PixelSpacing is '0\.000\\\\0\.000'.*spacing="
    ):
        load(path)
    img = load(path, spacing=(0.14, 0.16))
    assert img.meta["spacing"][:2] == (0.14, 0.16) and img.meta["spacing_source"] == "spacing="
    assert abs(np.linalg.det(img.affine.numpy()[:3, :3])) > 1e-6


def test_missing_pixel_spacing_falls_back_to_imager_pixel_spacing_with_a_warning() -> None:
    folder = _data_dir("77654033/CR1")  # CR without PixelSpacing, ImagerPixelSpacing 0.1\0.1
    with pytest.warns(SeriesGeometryWarning, match="taken from ImagerPixelSpacing"):
        img = load(folder)
    assert img.meta["spacing"][:2] == (0.1, 0.1)
    assert img.meta["spacing_source"] == "ImagerPixelSpacing"


def test_nominal_scanned_pixel_spacing_fallback_and_positioned_image_without_spacing(
    tmp_path: Path,
) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelSpacing
    ds.NominalScannedPixelSpacing = [0.3, 0.4]
    ds.save_as(tmp_path / "scanned.dcm")
    with pytest.warns(SeriesGeometryWarning, match="NominalScannedPixelSpacing"):
        img = load(tmp_path / "scanned.dcm")
    assert img.meta["spacing"][:2] == (0.4, 0.3)  # (x = between columns, y = between rows)
    del ds.NominalScannedPixelSpacing
    ds.save_as(tmp_path / "none.dcm")  # a positioned CT slice with no pixel size at all
    with pytest.raises(DicomError, match=r"none\.dcm: PixelSpacing is missing"):
        load(tmp_path / "none.dcm")
    with pytest.raises(MedgenError, match=r"spacing=.*positive"):
        load(tmp_path / "none.dcm", spacing=(0, 1))


# ---------------------------------------------------------------- (2) gaps, duplicates


def test_real_ct_series_with_a_gap_splits_into_blocks_at_the_header_positions() -> None:
    folder = _data_dir("77654033/CT2")
    z = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in folder.iterdir())
    assert np.round(np.diff(z), 2).tolist() == [202.5, 1.25, 1.25]
    with pytest.raises(SeriesGeometryError, match=r"1 gap\(s\).*202\.5.*block=1.*block=2"):
        load(folder)
    with pytest.warns(SeriesGeometryWarning):
        one = load(folder, part="block=1")
        rest = load(folder, part="block=2")
    assert one.shape[-1] == 1 and rest.shape[-1] == 3
    for img, first in ((one, 0), (rest, 1)):
        aff = img.affine.numpy()
        for k in range(img.shape[-1]):  # every slice where its header says (RAS z = LPS z)
            assert (aff @ [0, 0, k, 1])[2] == pytest.approx(z[first + k], abs=1e-3)
    with pytest.raises(SeriesGeometryError, match=r"part='block=3' is not one of .*'block=2'"):
        load(folder, part="block=3")
    with pytest.raises(SeriesGeometryError, match="the series is one volume; leave part out"):
        load(get_testdata_file("CT_small.dcm"), part="block=1")
    manifest, errors = scan(folder)
    assert errors.empty and list(manifest["part"]) == ["block=1", "block=2"]
    assert list(manifest["shape"]) == ["16x16x1", "16x16x3"]
    assert "202.5" in manifest.loc[0, "geometry_warning"]


def test_loadimaged_loads_the_part_of_a_scan_row() -> None:
    from medgen.io import LoadImaged

    folder = _data_dir("77654033/CT2")
    manifest, _ = scan(folder)
    loader = LoadImaged(keys=("image",))
    for row in manifest.to_dict("records"):
        item = {**row, "image": str(folder / row["image_path"])}
        with pytest.warns(SeriesGeometryWarning):
            img = loader(item)["image"]
        assert img.meta["part"] == row["part"]
        assert img.shape[-1] == int(row["shape"].split("x")[-1])
        assert "SeriesInstanceUID" not in img.meta  # still de-identified


def test_scan_manifest_of_blocks_loads_through_a_cohort(tmp_path: Path) -> None:
    """scan -> CSV -> Cohort.dataset: each block row loads its own block; a one-part row (empty
    ``part`` read back from CSV) loads whole."""
    import medgen

    root = tmp_path / "data"
    shutil.copytree(_data_dir("77654033/CT2"), root / "ct2")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct_small.dcm")
    manifest, errors = scan(root)
    assert errors.empty and len(manifest) == 3
    manifest.to_csv(tmp_path / "m.csv", index=False)
    cohort = medgen.Cohort.from_manifest(tmp_path / "m.csv", root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeriesGeometryWarning)
        depth = sorted(int(it["image"].shape[-1]) for it in cohort.dataset())
    assert depth == [1, 1, 3]


def test_resample_gaps_interpolates_onto_a_regular_grid(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0, 10.0])
    with pytest.warns(SeriesGeometryWarning, match="resample_gaps=True interpolated 5 slices"):
        img = load(tmp_path / "gap", resample_gaps=True)
    assert img.shape[-1] == 6 and img.meta["spacing"][2] == pytest.approx(2.0)
    # slice s of write_series holds MR_small + 100 s: the missing slice at 6 mm is the mean of
    # the slices at 4 mm (s=2) and 8 mm (s=3)
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.T.astype(np.float32)
    np.testing.assert_allclose(img[0, :, :, 3].numpy(), base + 250, atol=1e-3)
    np.testing.assert_allclose(img[0, :, :, 4].numpy(), base + 300, atol=1e-3)
    assert img.meta["resampled_gaps"]["source_positions_mm"] == [0.0, 2.0, 4.0, 8.0, 10.0]


def _set_tag(paths: list[Path], keyword: str, value: object) -> None:
    for p in paths:
        ds = pydicom.dcmread(p)
        setattr(ds, keyword, value)
        ds.save_as(p)


def test_echoes_sharing_positions_split_by_echo_numbers(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    from pydicom.uid import generate_uid

    uid = generate_uid()
    e1 = write_series(tmp_path / "me", [0.0, 2.0, 4.0], series_uid=uid)
    e2 = write_series(tmp_path / "me", [0.0, 2.0, 4.0], series_uid=uid, seed=3)
    _set_tag(e1, "EchoNumbers", 1)
    _set_tag(e2, "EchoNumbers", 2)
    with pytest.raises(SeriesGeometryError, match=r"3 volumes|2 volumes told apart by EchoNumbers"):
        load(tmp_path / "me")
    with pytest.warns(SeriesGeometryWarning, match="told apart by EchoNumbers"):
        echo2 = load(tmp_path / "me", part="EchoNumbers=2")
    assert echo2.shape[-1] == 3 and echo2.meta["part"] == "EchoNumbers=2"
    expected = {str(p) for p in e2}
    assert set(echo2.meta["filenames"]) == expected
    manifest, errors = scan(tmp_path)
    assert errors.empty and list(manifest["part"]) == ["EchoNumbers=1", "EchoNumbers=2"]


def test_contradictory_spacing_between_slices_warns_what_was_chosen(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    paths = write_series(tmp_path / "s", [0.0, 2.0, 4.0])
    _set_tag(paths, "SpacingBetweenSlices", 3.0)
    with pytest.warns(
        SeriesGeometryWarning, match=r"SpacingBetweenSlices says 3 mm.*positions are used"
    ):
        img = load(tmp_path / "s")
    assert img.meta["spacing"][2] == pytest.approx(2.0)


# ---------------------------------------------------------------- (3) header values


def test_patient_age_units_and_sex_normalisation() -> None:
    assert [parse_age(v) for v in ("058Y", "006M", "010W", "003D")] == pytest.approx(
        [58.0, 0.5, 10 * 7 / 365.25, 3 / 365.25], abs=1e-4
    )
    with pytest.warns(DicomReadWarning, match=r"PatientAge '099' has no unit"):
        assert parse_age("099", warn=True, where="x.dcm") is None
    assert [normalise_sex(v) for v in ("F", "m ", "O", "N/A", "U", "", None, "female")] == [
        "F", "M", "O", None, None, None, None, "F",
    ]  # fmt: skip


def test_scan_and_meta_drop_unitless_age_and_non_dicom_sex(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientAge, ds.PatientSex = "99", "N/A"
    ds.save_as(tmp_path / "a.dcm")
    with pytest.warns(DicomReadWarning, match="has no unit"):
        manifest, errors = scan(tmp_path)
    assert errors.empty
    assert manifest.loc[0, "sex"] is None and np.isnan(manifest.loc[0, "age"])
    with pytest.warns(DicomReadWarning, match="has no unit"):
        img = load(tmp_path / "a.dcm")
    assert "PatientSex" not in img.meta and "PatientAge" not in img.meta
    ds.PatientAge, ds.PatientSex = "006M", "f"
    ds.save_as(tmp_path / "a.dcm")
    manifest, _ = scan(tmp_path)
    assert manifest.loc[0, "sex"] == "F" and manifest.loc[0, "age"] == pytest.approx(0.5)
    assert load(tmp_path / "a.dcm").meta["PatientSex"] == "F"


# ---------------------------------------------------------------- (4) file meta, deflate


def test_file_without_file_meta_is_force_read_with_a_warning() -> None:
    path = get_testdata_file("OT-PAL-8-face.dcm")  # palette colour photo, no file meta
    with pytest.warns(DicomReadWarning, match="no DICOM file meta.*Implicit VR Little Endian"):
        img = load(path)
    assert tuple(img.shape) == (3, 640, 480, 1)
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(ds.pixel_array, ds)  # (rows, cols, 3)
    np.testing.assert_array_equal(img.numpy()[..., 0], rgb.transpose(2, 1, 0))
    assert img.meta["PhotometricInterpretation"] == "RGB"
    assert img.meta["source_photometric"] == "PALETTE COLOR"


def test_deflated_transfer_syntax_decodes() -> None:
    path = get_testdata_file("image_dfl.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID.name == "Deflated Explicit VR Little Endian"
    img = load(path)
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), ds.pixel_array.T.astype(np.float32))


@pytest.mark.parametrize(
    ("plain", "twins"),
    [
        ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"]),
        ("emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]),
        ("SC_rgb.dcm", ["SC_rgb_rle.dcm", "SC_rgb_expb.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"]),
        ("rtdose.dcm", ["rtdose_rle.dcm", "rtdose_expb.dcm"]),
        ("US1_UNCR.dcm", ["US1_J2KR.dcm"]),
        ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
    ],
)  # fmt: skip
def test_lossless_twins_decode_identically(plain: str, twins: list[str]) -> None:
    ref = load(get_testdata_file(plain))
    for twin in twins:
        img = load(get_testdata_file(twin))
        np.testing.assert_array_equal(img.numpy(), ref.numpy(), err_msg=twin)
        np.testing.assert_allclose(img.affine.numpy(), ref.affine.numpy(), err_msg=twin)


# ---------------------------------------------------------------- (5) mosaic


def test_siemens_mosaic_matches_nibabels_expected_geometry(mosaic: Path) -> None:
    img = load(mosaic)
    assert tuple(img.shape) == (1, 128, 128, 48) and img.meta["mosaic"] is True
    np.testing.assert_allclose(img.affine.numpy(), MOSAIC_AFFINE, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        ref = dicomwrappers.wrapper_from_file(str(mosaic)).get_data()  # (rows, cols, slices)
    np.testing.assert_array_equal(img[0].numpy(), ref.transpose(1, 0, 2).astype(np.float32))
    manifest, errors = scan(mosaic.parent)
    assert errors.empty and manifest.loc[0, "shape"] == "128x128x48"


def test_folder_mixing_a_mosaic_and_plain_slices_names_the_file(
    tmp_path: Path, mosaic: Path
) -> None:
    shutil.copy(mosaic, tmp_path / "mosaic.dcm")
    ds = pydicom.dcmread(mosaic)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "plain.dcm")
    with pytest.raises(DicomError, match=r"mixes a Siemens MOSAIC file \(.*mosaic\.dcm\)"):
        load(tmp_path)


# ---------------------------------------------------------------- (6) enhanced multi-frame


def test_enhanced_ct_geometry_per_frame_hand_computed() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    z = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    assert z == [-159.0, -149.0]  # frame 1 lies below frame 2; IOP (-1,0,0, 0,1,0)
    img = load(path)
    # sorted along the normal cross((-1,0,0),(0,1,0)) = (0,0,-1): frame 2 (z=-149) first
    expected = np.array(
        [
            [0.388672, 0, 0, -99.5],  # row dir LPS (-1,0,0) -> RAS (+1,0,0); x0 = -(99.5)
            [0, -0.388672, 0, 301.5],  # column dir LPS (0,1,0) -> RAS (0,-1,0); y0 = -(-301.5)
            [0, 0, -10.0, -149.0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(img.affine.numpy(), expected, atol=1e-6)
    px = ds.pixel_array.astype(np.float32) - 1024.0  # RescaleIntercept -1024 per frame
    np.testing.assert_array_equal(img[0, :, :, 0].numpy(), px[1].T)
    np.testing.assert_array_equal(img[0, :, :, 1].numpy(), px[0].T)


def _two_stack_enhanced(path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    px = ds.pixel_array
    items = list(ds.PerFrameFunctionalGroupsSequence)
    extra = [copy.deepcopy(i) for i in items]
    for i in extra:
        i.FrameContentSequence[0].StackID = "2"
    ds.PerFrameFunctionalGroupsSequence = items + extra
    ds.NumberOfFrames = 4
    ds.PixelData = np.concatenate([px, px + 7]).astype(px.dtype).tobytes()
    ds.save_as(path)


def test_enhanced_file_with_two_stacks_splits_by_stack_id(tmp_path: Path) -> None:
    _two_stack_enhanced(tmp_path / "two.dcm")
    with pytest.raises(SeriesGeometryError, match=r"StackID=1.*StackID=2"):
        load(tmp_path / "two.dcm")
    with pytest.warns(SeriesGeometryWarning, match="told apart by StackID"):
        one, two = load(tmp_path / "two.dcm", part="StackID=1"), load(tmp_path / "two.dcm", part=1)
    np.testing.assert_array_equal(two.numpy() - one.numpy(), 7.0)
    np.testing.assert_allclose(one.affine.numpy(), two.affine.numpy())


def test_enhanced_frame_without_position_names_file_and_frame(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(tmp_path / "nopos.dcm")
    with pytest.raises(DicomError, match=r"nopos\.dcm: enhanced multi-frame frame\(s\) \[2\] of 2"):
        load(tmp_path / "nopos.dcm")


# ---------------------------------------------------------------- (7) presentation


def test_monochrome1_inverted_reversibly() -> None:
    path = get_testdata_file("RG3_UNCR.dcm")  # CR, MONOCHROME1, BitsStored 10
    raw = load(path, invert_monochrome1=False)
    img = load(path)
    assert img.meta["monochrome1_inverted"] is True and img.meta["monochrome1_offset"] == 1023.0
    assert img.meta["PhotometricInterpretation"] == "MONOCHROME2"
    np.testing.assert_array_equal(img.meta["monochrome1_offset"] - img.numpy(), raw.numpy())
    ref = pydicom.dcmread(path).pixel_array.T.astype(np.float32)
    np.testing.assert_array_equal(raw[0, :, :, 0].numpy(), ref)


def test_voi_lut_only_when_asked() -> None:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = get_testdata_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    plain, windowed = load(path), load(path, voi_lut=True)
    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    np.testing.assert_allclose(plain[0, :, :, 0].numpy(), modality.T)
    np.testing.assert_allclose(windowed[0, :, :, 0].numpy(), apply_voi_lut(modality, ds).T)
    assert windowed.meta["voi_lut_applied"] is True and "voi_lut_applied" not in plain.meta
    assert not np.array_equal(plain.numpy(), windowed.numpy())


def test_rgb_loads_channel_first_and_saves_back(tmp_path: Path) -> None:
    img = load(get_testdata_file("SC_rgb.dcm"))
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    assert tuple(img.shape) == (3, 100, 100, 1)
    np.testing.assert_array_equal(img.numpy()[..., 0], ds.pixel_array.transpose(2, 1, 0))
    for target in (tmp_path / "rgb.nii.gz", tmp_path / "rgb_dcm"):
        out = save(img, target)
        back = load(out)
        assert tuple(back.shape) == (3, 100, 100, 1), target
        np.testing.assert_array_equal(back.numpy(), img.numpy())


# ---------------------------------------------------------------- (8) every real file


def _real_files(tmp: Path) -> list[Path]:
    """Every file of pydicom-data (and pydicom's own test files), every folder of them holding
    files (loaded as a series), and nibabel's nicom data."""
    files = [Path(p) for p in get_testdata_files()]
    files += [p.parent for p in files if p.is_file() and p.parent.name != "test_files"]
    files = list(dict.fromkeys(p for p in files if p.is_file() or any(p.iterdir())))
    for p in sorted(NICOM.iterdir()):
        if p.name.endswith(".dcm.gz"):
            out = tmp / p.name[:-3]
            with gzip.open(p) as fh:
                out.write_bytes(fh.read())
            files.append(out)
        elif p.suffix == ".dcm":
            files.append(p)
    return sorted(files)


#: big files that take seconds each to decode (JPEG 2000, 120-frame JPEG): slow run only
_SLOW = {
    "693_J2KR.dcm",
    "693_J2KI.dcm",
    "color3d_jpeg_baseline.dcm",
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
}


def _check_file(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = load(path)
        except MedgenError as err:
            assert path.name in str(err), f"{path}: error does not name the file: {err}"
            return "error"
    aff = img.affine.numpy()
    assert np.all(np.isfinite(aff)) and abs(np.linalg.det(aff[:3, :3])) > 1e-9, path
    assert np.all(np.isfinite(img.numpy())), path
    return "ok"


def test_every_real_file_fast_subset(tmp_path: Path) -> None:
    """The small files of both sets (all but a few big JPEG 2000 ones)."""
    outcomes = {p.name: _check_file(p) for p in _real_files(tmp_path) if p.name not in _SLOW}
    assert sum(v == "ok" for v in outcomes.values()) >= 120, outcomes
    assert outcomes["siemens_dwi_1000.dcm"] == "ok" and outcomes["RG1_UNCR.dcm"] == "error"


@pytest.mark.slow
def test_every_real_file(tmp_path: Path) -> None:
    for p in _real_files(tmp_path):
        _check_file(p)
