"""Output paths never overwrite, contain or enter an input, and ids never leave the output folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medgen._internal.paths import (
    check_output_not_input,
    confined,
    safe_file_name,
    unique_output_names,
)
from medgen.errors import MedgenValueError, OutputPathError


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    scan = tmp_path / "data" / "scan.nii.gz"
    series = tmp_path / "data" / "ct"
    series.mkdir(parents=True)
    scan.write_bytes(b"nifti")
    (series / "1.dcm").write_bytes(b"dicom")
    return {"scan": scan, "series": series, "root": tmp_path}


@pytest.mark.parametrize(
    ("output", "rule"),
    [
        ("data/scan.nii.gz", "is the input"),
        ("data", "contains the input"),
        (".", "contains the input"),
        ("data/ct", "is the input"),
        ("data/ct/out.dcm", "lies inside the input"),
    ],
)
def test_output_touching_an_input_is_refused(
    inputs: dict[str, Path], output: str, rule: str
) -> None:
    root = inputs["root"]
    with pytest.raises(OutputPathError, match=rule):
        check_output_not_input(root / output, [inputs["scan"], inputs["series"]])


def test_output_beside_the_inputs_is_accepted(inputs: dict[str, Path]) -> None:
    root = inputs["root"]
    check_output_not_input(root / "out" / "scan.nii.gz", [inputs["scan"], inputs["series"]])
    check_output_not_input(root / "data" / "scan_denoised.nii.gz", [inputs["scan"]])


def test_links_to_an_input_are_refused(inputs: dict[str, Path]) -> None:
    link = inputs["root"] / "link.nii.gz"
    os.symlink(inputs["scan"], link)
    hard = inputs["root"] / "hard.nii.gz"
    os.link(inputs["scan"], hard)
    for out in (link, hard):
        with pytest.raises(OutputPathError, match="is the input"):
            check_output_not_input(out, [inputs["scan"]])


def test_relative_and_absolute_spellings_match(
    inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(inputs["root"] / "data")
    with pytest.raises(OutputPathError):
        check_output_not_input("scan.nii.gz", [inputs["scan"]])
    with pytest.raises(OutputPathError):
        check_output_not_input("../data/./scan.nii.gz", [inputs["scan"]])


@pytest.mark.parametrize(
    "bad", ["../x", "/abs/x", "a/../../x", "a\\b", "x\x00y", "..", ".", "", "  "]
)
def test_escaping_ids_are_errors_naming_the_id(bad: str) -> None:
    with pytest.raises(OutputPathError) as info:
        safe_file_name(bad, what="image_id")
    assert f"image_id {bad!r}" in str(info.value)


@pytest.mark.parametrize(
    ("given", "safe"),
    [("sub-01_T1w", "sub-01_T1w"), ("a b:c*d", "a_b_c_d"), (".hidden", "_hidden"), (7, "7")],
)
def test_odd_ids_become_safe_names(given: object, safe: str) -> None:
    assert safe_file_name(given) == safe


def test_confined_refuses_paths_that_leave_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert confined(out, "a", "b.nii.gz") == out / "a" / "b.nii.gz"
    for parts in (("..", "victim"), ("/etc/passwd",), ("a", "..", "..", "x")):
        with pytest.raises(OutputPathError, match="outside the output folder"):
            confined(out, *parts)
    os.symlink(tmp_path, out / "escape")
    with pytest.raises(OutputPathError):
        confined(out, "escape", "x.nii.gz")


def test_same_names_from_different_folders_get_distinct_outputs() -> None:
    names = unique_output_names(["a/x.nii.gz", "b/x.nii.gz", "c/X.nii.gz", "d/x.nii.gz", "e/y"])
    assert names == {
        "a/x.nii.gz": "x.nii.gz",
        "b/x.nii.gz": "x-2.nii.gz",
        "c/X.nii.gz": "X-3.nii.gz",
        "d/x.nii.gz": "x-4.nii.gz",
        "e/y": "y",
    }
    assert len({v.lower() for v in names.values()}) == len(names)


def test_the_same_input_twice_is_an_error() -> None:
    with pytest.raises(OutputPathError, match="given twice"):
        unique_output_names(["a/x.nii.gz", "a/x.nii.gz"])
    with pytest.raises(MedgenValueError, match="2 inputs but 1 names"):
        unique_output_names(["a", "b"], ["a"])
