"""Run folders: one writer at a time, complete only when marked, refused when mixed or foreign."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medgen._internal.runs import (
    COMPLETE,
    LOCK,
    check_complete,
    mark_complete,
    prepare_run_folder,
    run_lock,
    run_state,
)
from medgen.errors import RunFolderError, RunLockedError

OWNED = ["config.json", "model.safetensors", "metrics.csv", "checkpoints/"]


def _finish(d: Path, weights: bytes = b"w1") -> None:
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("{}")
    mark_complete(d, ["model.safetensors", "config.json"], kind="test")


def test_lifecycle_empty_interrupted_complete(tmp_path: Path) -> None:
    d = tmp_path / "run"
    assert run_state(d) == "empty"
    with run_lock(d):
        assert prepare_run_folder(d, owned=OWNED) == "empty"
        (d / "metrics.csv").write_text("epoch\n1\n")
        assert run_state(d) == "interrupted"
        with pytest.raises(RunFolderError, match="no finished run"):
            check_complete(d, what="classifier")
        _finish(d)
    assert run_state(d) == "complete"
    assert check_complete(d)["kind"] == "test"


def test_reuse_needs_overwrite_or_resume(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    _finish(d)
    with pytest.raises(RunFolderError, match=r"already holds a finished run.*--overwrite"):
        prepare_run_folder(d, owned=OWNED)
    (d / COMPLETE).unlink()
    with pytest.raises(RunFolderError, match=r"interrupted run.*--resume"):
        prepare_run_folder(d, owned=OWNED)
    with pytest.raises(RunFolderError, match="contradict"):
        prepare_run_folder(d, owned=OWNED, resume=True, overwrite=True)
    assert prepare_run_folder(d, owned=OWNED, resume=True) == "interrupted"
    assert (d / "model.safetensors").exists()  # resume keeps the run's files


def test_overwrite_deletes_only_the_runs_files(tmp_path: Path) -> None:
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "epoch1.pt").write_bytes(b"c")
    _finish(d)
    prepare_run_folder(d, owned=OWNED, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == []


def test_foreign_files_are_never_touched(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "scan.nii.gz").write_bytes(b"only copy")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError, match=r"not part of a medgen run \(scan.nii.gz\)"):
            prepare_run_folder(d, owned=OWNED, **kw)
    assert (d / "scan.nii.gz").read_bytes() == b"only copy"


def test_resume_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="no run to resume"):
        prepare_run_folder(tmp_path / "new", owned=OWNED, resume=True)


def test_mixed_folder_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    _finish(d)
    (d / "model.safetensors").write_bytes(b"weights of another run")
    with pytest.raises(RunFolderError, match=r"mixed: model.safetensors changed"):
        check_complete(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(RunFolderError, match=r"model.safetensors is missing"):
        check_complete(d)


def test_prepare_removes_the_marker_before_writing(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    _finish(d)
    prepare_run_folder(d, owned=OWNED, resume=True)
    # a crash from here on leaves an interrupted folder, never a complete-looking mixed one
    assert run_state(d) == "interrupted"


_HOLDER = """
import sys, time
from medgen._internal.runs import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def _start_holder(d: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(d)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = _start_holder(d)
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"), run_lock(d, what="training"):
            pass
        assert time.perf_counter() - t0 < 2.0
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = _start_holder(d)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with run_lock(d):
        assert (d / LOCK).is_file()
    assert run_state(d) == "empty"  # the lock file alone is not a run


def test_lock_with_owned_refuses_a_foreign_folder_before_touching_it(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    (d / "scan.nii.gz").write_bytes(b"only copy")
    foreign = r"not part of a medgen run \(scan\.nii\.gz\)"
    with pytest.raises(RunFolderError, match=foreign), run_lock(d, owned=OWNED):
        pass
    assert [p.name for p in d.iterdir()] == ["scan.nii.gz"]
    with run_lock(tmp_path / "new", owned=OWNED) as locked:
        assert (locked / LOCK).is_file()
