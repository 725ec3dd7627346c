"""medgen.io.save: DICOM series writing (geometry, values, UIDs, identity, markers) and atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medgen.errors import MedgenValueError
from medgen.io import load, save
from medgen.io._dicom_write import choose_rescale


def _oblique_affine() -> np.ndarray:
    a, b = np.deg2rad(25), np.deg2rad(-10)
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.8, 0.9, 2.5])
    aff[:3, 3] = [-30.0, 12.5, 40.0]
    return aff


def test_float_volume_round_trip_within_stated_precision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(0.3, 2.0, size=(1, 12, 10, 7)).astype(np.float32)
    aff = _oblique_affine()
    out = save(vol, tmp_path / "series", affine=aff)
    files = sorted(out.iterdir())
    assert len(files) == 7
    back = load(out)
    bound = (vol.max() - vol.min()) / 131068 * 1.01 + 1e-6
    assert float(np.abs(back.numpy() - vol).max()) <= bound
    np.testing.assert_allclose(back.affine.numpy(), aff, atol=1e-4)
    np.testing.assert_allclose(back.meta["spacing"], (0.8, 0.9, 2.5), atol=1e-5)


def test_integer_ct_round_trip_is_exact_and_world_matches(tmp_path: Path) -> None:
    ct = load(get_testdata_file("CT_small.dcm"))
    back = load(save(ct, tmp_path / "ct"))
    assert torch.equal(back.as_tensor(), ct.as_tensor())
    np.testing.assert_allclose(back.affine.numpy(), ct.affine.numpy(), atol=1e-5)
    ds = pydicom.dcmread(next((tmp_path / "ct").iterdir()))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage, from meta Modality
    assert float(ds.RescaleSlope) == 1.0 and ds.PixelRepresentation == 1


def test_left_handed_affine_keeps_world_mapping(tmp_path: Path) -> None:
    """DICOM stacks along +normal, so a LAS volume comes back flipped in z with the same world."""
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    aff = np.diag([-2.0, 3.0, 4.0, 1.0])
    back = load(save(vol, tmp_path / "las", affine=aff))
    a_in, a_out = aff, back.affine.numpy()
    for ijk in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        world = a_in @ [*ijk, 1]
        ijk_back = np.rint(np.linalg.solve(a_out, world)[:3]).astype(int)
        assert back[0][tuple(ijk_back)] == vol[0][ijk]


def test_written_headers_uids_markers_and_no_identity(tmp_path: Path) -> None:
    mr = load(get_testdata_file("MR_small.dcm"))
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    out = save(
        mr,
        tmp_path / "syn",
        synthetic=True,
        derivation_description="diffusion sample, seed 3",
        dicom_tags={"InstitutionName": "Site B", "PatientAge": "061Y"},
    )
    ds = pydicom.dcmread(next(out.iterdir()))
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "SYNTHETIC"]
    assert "medgen:synthetic" in ds.ImageComments and "seed 3" in ds.DerivationDescription
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert ds[kw].value != src[kw].value
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    assert str(ds.PatientName) == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
    # the caller's dicom_tags are written as given
    assert ds.InstitutionName == "Site B" and ds.PatientAge == "061Y"
    # of the source header only the technical allow-list is carried by default
    assert ds.EchoTime == src.EchoTime and ds.Modality == "MR"
    for kw in ("Manufacturer", "PatientSex", "PatientWeight", "StationName"):
        assert kw not in ds, kw
    assert ds.PatientIdentityRemoved == "YES"
    back = load(out)
    assert back.meta["synthetic"] is True and back.meta["InstitutionName"] == "Site B"
    # retain options carry their groups over, and the files say which
    kept = save(mr, tmp_path / "kept", retain=["patient_characteristics", "device_identity"])
    ds_k = pydicom.dcmread(next(kept.iterdir()))
    assert ds_k.PatientSex == "F" and float(ds_k.PatientWeight) == 80.0
    assert ds_k.Manufacturer == src.Manufacturer and ds_k.StationName == src.StationName
    assert "InstitutionName" not in ds_k
    assert [c.CodeValue for c in ds_k.DeidentificationMethodCodeSequence] == [
        "113100",
        "113108",
        "113109",
    ]
    inst = pydicom.dcmread(
        next(save(mr, tmp_path / "inst", retain=["institution_identity"]).iterdir())
    )
    assert inst.InstitutionName == src.InstitutionName
    # copy_identity copies the reference header's identity, and claims no de-identification
    ds2 = pydicom.dcmread(next(save(mr, tmp_path / "id", copy_identity=True).iterdir()))
    assert ds2.PatientID == src.PatientID and str(ds2.PatientName) == str(src.PatientName)
    assert ds2.PatientIdentityRemoved == "NO" and "DeidentificationMethod" not in ds2
    assert "DeidentificationMethodCodeSequence" not in ds2 and "Manufacturer" not in ds2
    with pytest.raises(MedgenValueError, match="copy_identity=True but img carries no PatientName"):
        save(np.zeros((1, 2, 2, 2)), tmp_path / "x", copy_identity=True)


def test_bad_arguments_are_explained(tmp_path: Path) -> None:
    vol = np.zeros((1, 3, 3, 2), np.float32)
    with pytest.raises(
        MedgenValueError, match=r"'PatientAgee' is not a DICOM keyword\. Did you mean 'PatientAge'"
    ):
        save(vol, tmp_path / "s", dicom_tags={"PatientAgee": "040Y"})
    with pytest.raises(
        MedgenValueError, match=r"dicom_tags\['PatientAge'\] = 45 is not a valid DICOM AS"
    ):
        save(vol, tmp_path / "s", dicom_tags={"PatientAge": 45})
    with pytest.raises(
        MedgenValueError, match="cannot set PixelSpacing: save writes it from the image"
    ):
        save(vol, tmp_path / "s", dicom_tags={"PixelSpacing": [1, 1]})
    with pytest.raises(MedgenValueError, match="one channel, img has 2"):
        save(np.zeros((2, 3, 3, 2)), tmp_path / "s")
    with pytest.raises(MedgenValueError, match=r"shape \(3, 3\)"):
        save(np.zeros((3, 3)), tmp_path / "a.nii.gz")
    with pytest.raises(MedgenValueError, match="cannot infer the format"):
        save(vol, tmp_path / "a.png")
    with pytest.raises(MedgenValueError, match="singular"):
        save(vol, tmp_path / "a.nii.gz", affine=np.zeros((4, 4)))
    with pytest.raises(MedgenValueError, match="NaN"):
        save(np.full((1, 2, 2, 2), np.nan), tmp_path / "nan")
    assert not list(tmp_path.iterdir()), "a failed save left files behind"


def test_overwrite_is_atomic_and_failures_keep_old_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = np.ones((1, 4, 4, 3), np.float32)
    save(vol, tmp_path / "s")
    save(vol * 7, tmp_path / "s")  # replaces the series
    assert float(load(tmp_path / "s").max()) == 7.0
    assert len(list((tmp_path / "s").iterdir())) == 3
    save(vol, tmp_path / "a.nii.gz")

    import nibabel as nib

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save(vol * 3, tmp_path / "a.nii.gz")
    monkeypatch.setattr(pydicom.dataset.FileDataset, "save_as", boom)
    with pytest.raises(OSError, match="disk full"):
        save(vol * 3, tmp_path / "s")
    monkeypatch.undo()
    assert float(load(tmp_path / "a.nii.gz").max()) == 1.0
    assert float(load(tmp_path / "s").max()) == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "s"]


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-1000.5, 3000.25), (1e-3, 2e-3), (5.0, 5.0)])
def test_choose_rescale_error_bound(lo: float, hi: float) -> None:
    vol = np.linspace(lo, hi, 1000).reshape(10, 10, 10)
    stored, slope, inter, _ = choose_rescale(vol)
    err = np.abs(stored * slope + inter - vol).max()
    assert err <= max(slope / 2 * 1.0001, 1e-12)


@pytest.mark.parametrize(
    "array,stored",
    [
        (np.array([[[[True, False]]]]), "uint8"),
        (torch.arange(4, dtype=torch.int64).reshape(1, 1, 2, 2), "int32"),
        (np.full((1, 1, 1, 2), 2**40, np.int64), "float64"),
        (np.linspace(0, 1, 4, dtype=np.float16).reshape(1, 1, 2, 2), "float32"),
    ],
    ids=["bool", "int64", "int64-large", "float16"],
)
def test_nifti_dtypes_other_tools_read(tmp_path: Path, array: object, stored: str) -> None:
    back = load(save(array, tmp_path / "m.nii.gz"))
    assert back.meta["original_dtype"] == stored
    np.testing.assert_array_equal(back.numpy(), np.asarray(array, dtype=np.float32))


def test_save_never_writes_over_the_image_it_was_loaded_from(tmp_path: Path) -> None:
    """save(load(x), x) used to replace (DICOM: delete) the source."""
    import hashlib

    from medgen.errors import OutputPathError

    series = tmp_path / "ct"
    save(
        np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)[:1], series, affine=np.eye(4)
    )
    nifti = tmp_path / "t1.nii.gz"
    save(np.ones((1, 4, 4, 3), np.float32), nifti, affine=np.eye(4))

    def digest() -> dict[str, str]:
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file()
        }

    before = digest()
    for src, out in (
        (series, series),
        (series, tmp_path),
        (series, series / "x.nii.gz"),
        (nifti, nifti),
    ):
        with pytest.raises(OutputPathError, match="never writes over its inputs"):
            save(load(src), out)
    assert digest() == before
    assert save(load(nifti), tmp_path / "t1_copy.nii.gz").is_file()  # beside it is fine
