"""medgen.io.scan and ``medgen scan``: manifests from a folder tree of real and broken files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medgen.errors import MedgenFileNotFoundError
from medgen.io import load, scan
from medgen.io._scan import parse_age

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture
def tree(tmp_path: Path, write_series: Callable[..., list[Path]]) -> Path:
    """A study folder: two series (one sharing a folder with another), NIfTI (BIDS), junk files."""
    root = tmp_path / "study"
    write_series(root / "pat1" / "ax", [0.0, 2.0, 4.0, 6.0])  # one series in its folder
    uid_a, uid_b = generate_uid(), generate_uid()
    write_series(root / "pat1" / "mixed", [0.0, 1.0, 2.0], series_uid=uid_a, seed=1)
    write_series(root / "pat1" / "mixed", [0.0, 3.0], series_uid=uid_b, seed=2)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct.dcm")
    (root / "sub-07" / "anat").mkdir(parents=True)
    shutil.copy(NIB_DATA / "anatomical.nii", root / "sub-07" / "anat" / "sub-07_T1w.nii")
    shutil.copy(NIB_DATA / "example4d.nii.gz", root / "john_smith_bold.nii.gz")
    bad = root / "bad"
    bad.mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), bad / "trunc.dcm")  # header fine, pixels cut
    (bad / "random.dcm").write_bytes(
        np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    )
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "empty.nii.gz").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    shutil.copy(get_testdata_file("rtplan.dcm"), bad / "plan.dcm")
    return root


def test_scan_manifest_rows_columns_and_errors(tree: Path) -> None:
    manifest, errors = scan(tree)
    by_path = manifest.set_index("image_path", drop=False)
    assert (
        set(by_path.index)
        == {
            "pat1/ax",
            "pat1/mixed",
            "ct.dcm",
            "sub-07/anat/sub-07_T1w.nii",
            "john_smith_bold.nii.gz",
            "bad/trunc.dcm",
        }
        and len(manifest) == 7
    )  # pat1/mixed twice: two series in one folder
    ax = by_path.loc["pat1/ax"]
    assert (ax["format"], ax["modality"], ax["shape"], ax["n_files"]) == (
        "dicom",
        "MR",
        "64x64x4",
        4,
    )
    assert (ax["spacing_x"], ax["spacing_z"]) == pytest.approx((0.3125, 2.0))
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert ax["sex"] == src.PatientSex and ax["manufacturer"] == src.Manufacturer
    assert ax["subject_id"].startswith("sub-") and src.PatientID not in ax["subject_id"]
    assert not ax["needs_series"]
    mixed = manifest[manifest["image_path"] == "pat1/mixed"]
    assert sorted(mixed["shape"]) == ["64x64x2", "64x64x3"] and mixed["needs_series"].all()
    ct = by_path.loc["ct.dcm"]
    ct_ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ct["age"] == parse_age(ct_ds.PatientAge)
    # the institution is pseudonymised, stable, and only named with its retain option
    assert ct["site"].startswith("site-") and ct_ds.InstitutionName not in ct["site"]
    t1 = by_path.loc["sub-07/anat/sub-07_T1w.nii"]
    assert (t1["format"], t1["shape"], t1["subject_id"]) == ("nifti", "33x41x25", "sub-07")
    bold = by_path.loc["john_smith_bold.nii.gz"]
    assert bold["channels"] == 2 and "john" not in bold["subject_id"]
    assert manifest["image_id"].is_unique
    assert (manifest["source"] == "real").all() and (manifest["split"] == "").all()
    reasons = dict(zip(errors["path"], errors["reason"], strict=True))
    assert set(reasons) == {"bad/random.dcm", "bad/empty.dcm", "bad/empty.nii.gz", "bad/plan.dcm"}
    assert "empty" in reasons["bad/empty.dcm"] and "empty" in reasons["bad/empty.nii.gz"]
    assert "without an image" in reasons["bad/plan.dcm"]
    # every manifest row loads with medgen.io.load (series= where the folder holds several)
    for row in manifest.itertuples():
        if row.image_path == "bad/trunc.dcm":
            continue  # headers-only scan cannot see that the pixels are cut
        img = load(tree / row.image_path, series=row.series_uid if row.needs_series else None)
        assert "x".join(str(s) for s in img.shape[1:]) == row.shape


def test_scan_manifest_is_a_valid_cohort(tree: Path) -> None:
    from medgen.cohort import Cohort

    manifest, _ = scan(tree)
    cohort = Cohort.from_manifest(manifest[~manifest["needs_series"]], root=tree)
    assert len(cohort) == 5


@pytest.mark.parametrize(
    "text,years",
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("052W", 52 * 7 / 365.25),
        ("030D", 30 / 365.25),
        ("", None),
        ("4O5Y", None),
    ],
)
def test_parse_age(text: str, years: float | None) -> None:
    got = parse_age(text)
    assert got == (pytest.approx(years, abs=1e-4) if years is not None else None)


def test_scan_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MedgenFileNotFoundError, match="nowhere does not exist"):
        scan(tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_scan_writes_manifest_and_errors(tree: Path, tmp_path: Path, suffix: str) -> None:
    from medgen.cli import app

    out = tmp_path / "out" / f"manifest{suffix}"
    result = CliRunner().invoke(app, ["scan", str(tree), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "7 images (5 DICOM, 2 NIfTI)" in result.output and "4 unreadable" in result.output
    read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
    manifest = read(out)
    errors = read(out.with_name(f"manifest.errors{suffix}"))
    assert len(manifest) == 7 and len(errors) == 4
    # paths are rewritten relative to the manifest's folder, so they resolve from there
    for p in manifest["image_path"]:
        assert (out.parent / p).exists(), p


def test_cli_scan_missing_dir(tmp_path: Path) -> None:
    from medgen.cli import app

    result = CliRunner().invoke(
        app, ["scan", str(tmp_path / "nope"), "-o", str(tmp_path / "m.csv")]
    )
    assert result.exit_code == 2 and "does not exist" in result.output


def test_files_without_series_uid_are_one_image_each(tmp_path: Path) -> None:
    for name in ("MR_small.dcm", "CT_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        del ds.SeriesInstanceUID
        (tmp_path / "nouid").mkdir(exist_ok=True)
        ds.save_as(tmp_path / "nouid" / name)
    manifest, errors = scan(tmp_path)
    assert errors.empty
    assert sorted(manifest["image_path"]) == ["nouid/CT_small.dcm", "nouid/MR_small.dcm"]
    assert not manifest["needs_series"].any() and manifest["series_uid"].isna().all()
    for p in manifest["image_path"]:
        assert load(tmp_path / p).shape[-1] == 1


def test_scan_records_geometry_warnings_and_errors(
    tmp_path: Path, write_series: Callable[..., list[Path]]
) -> None:
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0])
    uid = generate_uid()
    write_series(tmp_path / "mixed_orient", [0.0, 2.0], series_uid=uid)
    write_series(tmp_path / "mixed_orient", [0.0], series_uid=uid, iop=(0, 1, 0, 0, 0, -1), seed=5)
    manifest, errors = scan(tmp_path)
    # issue 18: the gap splits the series into two blocks, listed as two images with a note
    assert list(manifest["image_path"]) == ["gap", "gap"]
    assert list(manifest["part"]) == ["block=1", "block=2"]
    assert list(manifest["shape"]) == ["64x64x3", "64x64x1"]
    assert manifest["needs_series"].all() and manifest["image_id"].is_unique
    assert "slices are missing" in manifest.loc[0, "geometry_warning"]
    for row in manifest.itertuples():
        img = load(tmp_path / row.image_path, series=row.series_uid, part=row.part)
        assert img.shape[-1] == int(row.shape.split("x")[-1])
    assert list(errors["path"]) == ["mixed_orient"]
    assert "2 different orientations" in errors.loc[0, "reason"]


def test_scan_marks_images_saved_as_synthetic(tmp_path: Path) -> None:
    """Images medgen wrote with ``synthetic=True`` come back as ``source="synthetic"``; the rest real."""
    from medgen.io import save

    real = load(get_testdata_file("MR_small.dcm"))
    save(real, tmp_path / "real.nii.gz")
    save(real, tmp_path / "fake.nii.gz", synthetic=True)
    save(real, tmp_path / "real_dcm", format="dicom")
    save(real, tmp_path / "fake_dcm", format="dicom", synthetic=True)
    manifest, errors = scan(tmp_path)
    assert errors.empty, errors
    source = dict(zip(manifest["image_path"], manifest["source"], strict=True))
    assert source == {
        "fake.nii.gz": "synthetic",
        "fake_dcm/00001.dcm": "synthetic",  # a one-slice series is listed by its file
        "real.nii.gz": "real",
        "real_dcm/00001.dcm": "real",
    }


def test_scan_output_carries_no_identity(tree: Path) -> None:
    """Keyed pseudonyms replace PatientID, UIDs, institution; free text is dropped."""
    import hashlib

    manifest, _ = scan(tree)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    text = manifest.to_csv(index=False)
    for value in (src.SeriesInstanceUID, src.StudyInstanceUID, src.InstitutionName, src.PatientID):
        assert str(value) not in text
    # an unsalted hash of the record number (recoverable by enumeration) is not used
    plain = "sub-" + hashlib.sha256(str(src.PatientID).encode()).hexdigest()[:12]
    assert plain not in text
    assert manifest["series_description"].isna().all()
    again, _ = scan(tree)
    assert again["subject_id"].tolist() == manifest["subject_id"].tolist()
    assert again["series_uid"].tolist() == manifest["series_uid"].tolist()
    other, _ = scan(tree, secret=b"another project")
    assert set(other["subject_id"]).isdisjoint(set(manifest["subject_id"]) - {"sub-07"})


def test_scan_retain_options_keep_institution_and_descriptions(tree: Path) -> None:
    from medgen.errors import ConfigError

    manifest, _ = scan(tree, retain=["institution_identity", "descriptors"])
    ct = manifest.set_index("image_path").loc["ct.dcm"]
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ct["site"] == src.InstitutionName
    with pytest.raises(ConfigError, match="Did you mean 'descriptors'"):
        scan(tree, retain=["descriptor"])
