"""What ``medgen.io.save`` writes from a fully identified source: the PS3.15 allow-list, nothing else.

The source is a 3-slice series built from pydicom's CT_small with every attribute of the Annex E
basic profile (``ANNEX_E_BASIC_PROFILE``) set to a recognisable value for its VR; derived and
synthetic DICOM and NIfTI outputs are checked attribute by attribute and byte by byte.
:func:`write_profile_series` is reused by tests/cohort/test_cache_deid.py.
"""

from __future__ import annotations

import copy
import gzip
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medgen._internal.deid import (
    ANNEX_E_BASIC_PROFILE,
    RETAIN_OPTIONS,
    deidentification_method,
    project_secret,
    remap_uid,
)
from medgen.errors import ConfigError, MedgenValueError
from medgen.io import load, save

#: free text put into every text attribute of the source
TEXT = "John Smith 1CT1"
#: strings no de-identified output may contain anywhere
FORBIDDEN = ("John Smith", "1CT1", "Smith^John", "JOHN SMITH", "JOHNSMITH", "19700101")
#: profile attributes medgen itself writes into a derived file (with its own values)
WRITTEN_BY_SAVE = {"StudyID", "ImageComments", "DerivationDescription"}
_GENERATED_VRS = ("UI", "DA", "TM", "DT")
#: per-slice attributes (each slice its own value)
_PER_SLICE = ("SOPInstanceUID", "MediaStorageSOPInstanceUID")


def _value(kw: str, vr: str, uid: str) -> Any:
    """A valid, recognisable value of ``vr`` for keyword ``kw``."""
    special = {"PatientSex": "F", "PatientAge": "045Y", "PatientWeight": "72.5"}
    if kw in special:
        return special[kw]
    vr = vr.split(" or ")[0]
    if vr == "PN":
        return "Smith^John"
    if vr == "DA":
        return "19700101"
    if vr == "TM":
        return "101010"
    if vr == "DT":
        return "19700101101010"
    if vr == "UI":
        return uid
    if vr in ("US", "SS", "UL", "SL"):
        return 7
    if vr in ("FL", "FD"):
        return 1.5
    if vr == "DS":
        return "1.5"
    if vr == "IS":
        return "3"
    if vr == "AS":
        return "045Y"
    if vr == "CS":
        return "JOHN SMITH 1CT1"
    if vr == "AE":
        return "JOHNSMITH1CT1"
    if vr in ("OB", "OW", "UN"):
        return (TEXT + "\0").encode()
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "1CT1"
        item.CodingSchemeDesignator = "99MEDGEN"
        item.CodeMeaning = TEXT
        item.ReferencedSOPInstanceUID = uid
        return Sequence([item])
    return TEXT  # LO, SH, LT, ST, UT, UC


def write_profile_series(folder: Path, n_slices: int = 3) -> dict[str, Any]:
    """CT_small-based slices in ``folder`` with every profile attribute set.

    Returns ``{"paths", "values" (keyword -> set of source values as str), "uids" (every UID
    set, nested ones included), "skipped" (keyword -> why pydicom refused it)}``.
    """
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    shared_uids = {kw: generate_uid() for kw in ANNEX_E_BASIC_PROFILE}
    values: dict[str, set[str]] = {}
    uids: set[str] = set()
    skipped: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    z0 = float(base.ImagePositionPatient[2])
    for k in range(n_slices):
        ds = copy.deepcopy(base)
        for kw in ANNEX_E_BASIC_PROFILE:
            uid = generate_uid() if kw in _PER_SLICE else shared_uids[kw]
            vr = dictionary_VR(kw)
            value = _value(kw, vr, uid)
            if tag_for_keyword(kw) >> 16 == 0:  # RequestedSOPInstanceUID (0000,1001)
                skipped[kw] = "a DIMSE command element: pydicom refuses it in a file"
                continue
            target = ds.file_meta if kw == "MediaStorageSOPInstanceUID" else ds
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    target.add_new(tag_for_keyword(kw), vr.split(" or ")[0], value)
            except Exception as err:  # recorded, and asserted to be none below
                skipped[kw] = f"{type(err).__name__}: {err}"
                continue
            if "UI" in vr or vr == "SQ":
                uids.add(uid)
            values.setdefault(kw, set()).add(str(value))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        values["MediaStorageSOPInstanceUID"].add(str(ds.SOPInstanceUID))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [*base.ImagePositionPatient[:2], z0 + 5.0 * k]
        p = folder / f"{k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return {"paths": paths, "values": values, "uids": uids, "skipped": skipped}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return write_profile_series(tmp_path_factory.mktemp("identified") / "series")


def _empty(value: Any) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0) or str(value) == ""


def profile_attributes_kept(
    path: Path, src: dict[str, Any], *, identity: bool = False
) -> dict[str, str]:
    """Profile attributes of ``path`` that are neither absent, empty, medgen's own values
    (written by ``save`` and different from the source) nor new UIDs/dates: what was carried.
    ``identity``: PatientName/ID/BirthDate were asked for (``copy_identity=True``)."""
    ds = pydicom.dcmread(path)
    kept = {}
    for kw in ANNEX_E_BASIC_PROFILE:
        holder = ds.file_meta if kw == "MediaStorageSOPInstanceUID" else ds
        value = holder.get(kw)
        if _empty(value):
            continue
        text = str(value)
        source_values = src["values"].get(kw, set())
        if identity and kw in ("PatientName", "PatientID", "PatientBirthDate"):
            kept[kw] = text
        elif dictionary_VR(kw) in _GENERATED_VRS or kw in WRITTEN_BY_SAVE:
            assert text not in source_values, f"{path.name}: {kw} = {text!r} is the source's"
            continue
        kept[kw] = text
    return kept


def _values(value: Any) -> list[str]:
    """A DICOM multi-value (or a single value) as a list of strings."""
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def assert_no_source_bytes(paths: list[Path], src: dict[str, Any]) -> None:
    for p in paths:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        for text in FORBIDDEN:
            assert text.encode() not in raw, f"{p} holds {text!r}"
        for uid in src["uids"]:
            assert uid.encode() not in raw, f"{p} holds the source UID {uid}"


def test_the_source_sets_every_profile_attribute(source: dict[str, Any]) -> None:
    assert set(source["skipped"]) == {"RequestedSOPInstanceUID"}
    ds = pydicom.dcmread(source["paths"][0])
    missing = [
        kw
        for kw in ANNEX_E_BASIC_PROFILE
        if kw not in ds
        and kw not in ds.file_meta
        and kw not in source["skipped"]
        and kw != "DataSetTrailingPadding"
    ]
    # pydicom reads (FFFC,FFFC) trailing padding as the end of the data set: written, not read
    assert missing == []
    img = load(source["paths"][0].parent)
    assert img.meta["PatientName"] == "Smith^John" and img.meta["ImageComments"] == TEXT
    assert tuple(img.shape) == (1, 128, 128, 3)


@pytest.mark.parametrize("synthetic", [False, True], ids=["derived", "synthetic"])
def test_derived_and_synthetic_dicom_keep_nothing_of_the_profile(
    source: dict[str, Any], tmp_path: Path, synthetic: bool
) -> None:
    img = load(source["paths"][0].parent)
    restored = img * 0.5 + 1.0  # like a Denoiser's output: a MetaTensor with the source meta
    out = save(restored, tmp_path / "out", synthetic=synthetic)
    files = sorted(out.iterdir())
    assert len(files) == 3
    for f in files:
        assert profile_attributes_kept(f, source) == {}
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES"
        assert _values(ds.DeidentificationMethod) == deidentification_method()
        codes = ds.DeidentificationMethodCodeSequence
        assert [(c.CodeValue, c.CodingSchemeDesignator) for c in codes] == [("113100", "DCM")]
        assert codes[0].CodeMeaning == "Basic Application Confidentiality Profile"
        assert ds.Modality == "CT" and ds.KVP == 120  # technical fields survive
    assert_no_source_bytes(files, source)
    back = load(out)
    assert back.meta["synthetic"] is synthetic
    assert "PatientName" not in back.meta or back.meta["PatientName"] == ""


def test_uids_are_keyed_replacements_one_study_per_source_study(
    source: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = load(source["paths"][0].parent)
    a = pydicom.dcmread(next(save(img, tmp_path / "a").iterdir()))
    b = pydicom.dcmread(next(save(img * 2, tmp_path / "b", synthetic=True).iterdir()))
    study = img.meta["StudyInstanceUID"]
    assert a.StudyInstanceUID == b.StudyInstanceUID == remap_uid(study, secret=project_secret())
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID != img.meta["FrameOfReferenceUID"]
    assert a.SeriesInstanceUID != b.SeriesInstanceUID  # two derived series, one study
    assert img.meta["SeriesInstanceUID"] not in (a.SeriesInstanceUID, b.SeriesInstanceUID)
    assert a.StudyDate != "19700101" and a.StudyDate == a.ContentDate
    # another project (secret) gets other UIDs; an image without source UIDs gets fresh ones
    monkeypatch.setenv("MEDGEN_PROJECT_SECRET", "another project")
    c = pydicom.dcmread(next(save(img, tmp_path / "c").iterdir()))
    assert c.StudyInstanceUID != a.StudyInstanceUID
    plain = np.zeros((1, 4, 4, 2), np.float32)
    d1, d2 = (pydicom.dcmread(next(save(plain, tmp_path / n).iterdir())) for n in ("d1", "d2"))
    assert d1.StudyInstanceUID != d2.StudyInstanceUID


def test_retain_patient_characteristics_keeps_only_them(
    source: dict[str, Any], tmp_path: Path
) -> None:
    img = load(source["paths"][0].parent)
    out = save(img, tmp_path / "pc", retain=["patient_characteristics"])
    for f in sorted(out.iterdir()):
        kept = profile_attributes_kept(f, source)
        assert (
            {"PatientSex", "PatientAge"}
            <= set(kept)
            <= set(RETAIN_OPTIONS["patient_characteristics"])
        )
        assert kept["PatientSex"] == "F" and kept["PatientAge"] == "045Y"
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES"
        assert _values(ds.DeidentificationMethod) == deidentification_method(
            ["patient_characteristics"]
        )
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113108"]
        assert str(ds.PatientName) == "" and "InstitutionName" not in ds
    # every option at once still lets no name, ID, UID, date or comment out
    everything = save(img, tmp_path / "all", retain=list(RETAIN_OPTIONS))
    f = next(everything.iterdir())
    allowed = {kw for fields in RETAIN_OPTIONS.values() for kw in fields}
    assert set(profile_attributes_kept(f, source)) <= allowed
    assert pydicom.dcmread(f).InstitutionName == TEXT  # institution_identity, asked for
    with pytest.raises(ConfigError, match="Did you mean 'patient_characteristics'"):
        save(img, tmp_path / "bad", retain=["patient_characteristic"])
    assert not (tmp_path / "bad").exists()


def test_copy_identity_is_the_explicit_opt_in(source: dict[str, Any], tmp_path: Path) -> None:
    img = load(source["paths"][0].parent)
    ds = pydicom.dcmread(next(save(img, tmp_path / "id", copy_identity=True).iterdir()))
    assert str(ds.PatientName) == "Smith^John" and ds.PatientID == TEXT
    assert ds.PatientIdentityRemoved == "NO"
    assert "DeidentificationMethod" not in ds and "DeidentificationMethodCodeSequence" not in ds
    kept = profile_attributes_kept(tmp_path / "id" / "00001.dcm", source, identity=True)
    assert set(kept) == {"PatientName", "PatientID", "PatientBirthDate"}  # and nothing else


def test_dicom_tags_cannot_put_a_source_identity_back(
    source: dict[str, Any], tmp_path: Path
) -> None:
    img = load(source["paths"][0].parent)
    with pytest.raises(
        MedgenValueError,
        match=r"dicom_tags sets PatientID on an image whose \.meta holds a patient's identity",
    ):
        save(img, tmp_path / "x", dicom_tags={"PatientID": img.meta["PatientID"]})
    assert not (tmp_path / "x").exists()
    # with copy_identity the caller means it
    ds = pydicom.dcmread(
        next(
            save(img, tmp_path / "y", copy_identity=True, dicom_tags={"PatientID": "P7"}).iterdir()
        )
    )
    assert ds.PatientID == "P7" and ds.PatientIdentityRemoved == "NO"
    # an image with no source identity (arrays, simulated images) may carry the caller's labels
    plain = np.zeros((1, 4, 4, 2), np.float32)
    ds = pydicom.dcmread(
        next(save(plain, tmp_path / "z", dicom_tags={"PatientID": "sub-0001"}).iterdir())
    )
    assert ds.PatientID == "sub-0001" and ds.PatientIdentityRemoved == "YES"
    # other caller tags are written as given, even profile attributes
    ds = pydicom.dcmread(
        next(save(img, tmp_path / "w", dicom_tags={"InstitutionName": "Site B"}).iterdir())
    )
    assert ds.InstitutionName == "Site B"


def test_nifti_output_holds_no_source_header_text(source: dict[str, Any], tmp_path: Path) -> None:
    img = load(source["paths"][0].parent)
    out = save(img, tmp_path / "x.nii.gz")
    syn = save(img, tmp_path / "s.nii.gz", synthetic=True, derivation_description="denoised")
    assert_no_source_bytes([out, syn], source)
    hdr = nib.load(out).header
    assert (
        hdr["descrip"].tobytes().strip(b"\0") == b""
        and hdr["aux_file"].tobytes().strip(b"\0") == b""
    )
    assert len(hdr.extensions) == 0
    assert nib.load(syn).header["descrip"].tobytes().strip(b"\0") == b"medgen:synthetic denoised"

    # a NIfTI source with text in its header fields and a comment extension
    src = nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4))
    src.header["descrip"] = TEXT.encode()
    src.header["aux_file"] = b"1CT1"
    src.header["intent_name"] = b"1CT1"
    src.header["db_name"] = b"1CT1"
    src.header.extensions.append(nib.nifti1.Nifti1Extension("comment", (TEXT + "\0").encode()))
    nib.save(src, tmp_path / "identified.nii")
    loaded = load(tmp_path / "identified.nii")
    assert loaded.meta["descrip"] == TEXT
    copies = [
        save(loaded, tmp_path / "n.nii"),
        save(loaded, tmp_path / "n2.nii.gz", synthetic=True),
    ]
    assert_no_source_bytes(copies, {"uids": set()})
