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


# ------------------------------------------------------------------ killed writes
_KILLED_SAVE = """
import os, signal, sys
import numpy as np
import pydicom.dataset
from medgen.io import save

calls = 0
original = pydicom.dataset.Dataset.save_as

def save_then_die(self, *args, **kwargs):
    global calls
    calls += 1
    original(self, *args, **kwargs)
    if calls == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

pydicom.dataset.Dataset.save_as = save_then_die
vol = np.arange(8 * 8 * 6, dtype=np.float32).reshape(1, 8, 8, 6)
save(vol, sys.argv[1], affine=np.eye(4))
"""


def _run_killed_save(target: Path, after_slices: int) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_SAVE, str(target), str(after_slices)], check=False
    )
    assert proc.returncode == -9


@pytest.mark.parametrize("after_slices", [1, 4, 6])
def test_a_killed_dicom_save_leaves_nothing_the_next_save_keeps(
    tmp_path: Path, after_slices: int
) -> None:
    """SIGKILL after the 1st, 4th and last (6th) slice: the next save cleans up."""
    target = tmp_path / "series"
    _run_killed_save(target, after_slices)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert not target.exists() and len(leftovers) == 1 and leftovers[0].endswith(".tmp")
    vol = np.ones((1, 8, 8, 4), np.float32)
    save(vol, target, affine=np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]
    assert load(target).shape == (1, 8, 8, 4)


def test_a_killed_replacement_keeps_the_old_series(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and renaming the new one in: nothing lost."""
    from medgen._internal.files import remove_stale_temporaries

    target = tmp_path / "series"
    save(np.full((1, 8, 8, 2), 5.0, np.float32), target, affine=np.eye(4))
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    aside = tmp_path / f".series.{dead_pid}.abcd.old"
    aside.mkdir()
    os.rename(target, aside / "old")
    (tmp_path / f".series.{dead_pid}.efgh.tmp").mkdir()
    removed = remove_stale_temporaries(target)
    assert len(removed) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["series"]
    assert float(load(target).max()) == 5.0


def test_temporaries_of_live_writers_are_left_alone(tmp_path: Path) -> None:
    from medgen._internal.files import remove_stale_temporaries

    target = tmp_path / "table.csv"
    live = tmp_path / f".table.csv.{os.getpid()}.xyz.tmp.csv"
    live.write_text("being written")
    other = tmp_path / ".other.csv.1.xyz.tmp"
    other.write_text("not ours")
    assert remove_stale_temporaries(target) == []
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n")
    assert live.exists() and other.exists() and target.read_text() == "a,b\n"
