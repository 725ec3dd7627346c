"""Atomic writes: final permissions follow the umask, failures keep old data, nothing foreign is deleted."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from medgen._internal.files import (
    atomic_dir,
    atomic_path,
    only_suffixes,
    write_table,
    write_text_atomic,
)
from medgen.errors import MedgenValueError
from medgen.io import load, save


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_are_readable_by_others_like_ordinary_files(
    tmp_path: Path, umask_022: None
) -> None:
    """mkstemp/mkdtemp names are private (0600/0700); the renamed outputs must not stay so."""
    img = load(get_testdata_file("MR_small.dcm"))
    nii = save(img, tmp_path / "a.nii.gz")
    series = save(img, tmp_path / "series", format="dicom")
    table = write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    text = write_text_atomic(tmp_path / "r.html", "<p>ok</p>")
    assert [_mode(p) for p in (nii, table, text)] == [0o644] * 3
    assert _mode(series) == 0o755
    assert all(_mode(p) == 0o644 for p in series.iterdir())


def test_failed_write_keeps_the_old_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "manifest.csv", "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_atomic_dir_refuses_to_delete_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "old.dcm").write_bytes(b"x")
    with (
        pytest.raises(MedgenValueError, match=r"would delete \(notes\.txt\)"),
        atomic_dir(folder, replaceable=only_suffixes([".dcm"])),
    ):
        pytest.fail("must refuse before yielding")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "old.dcm"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_dicom_replaces_an_old_series_but_not_a_folder_of_other_files(tmp_path: Path) -> None:
    img = load(get_testdata_file("MR_small.dcm"))
    series = save(img, tmp_path / "s", format="dicom")
    again = save(img * 2, series, format="dicom")  # an older series is replaced
    np.testing.assert_allclose(load(again).numpy(), 2 * img.numpy(), rtol=1e-4, atol=1e-2)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "report.pdf").write_bytes(b"%PDF")
    with pytest.raises(MedgenValueError, match=r"mixed already holds files .*report\.pdf"):
        save(img, mixed, format="dicom")
    assert sorted(p.name for p in mixed.iterdir()) == ["report.pdf"]


def test_write_table_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(
        MedgenValueError, match=r"unknown table format '\.xlsx'; use one of \.csv, \.parquet"
    ):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
    assert not list(tmp_path.iterdir())
