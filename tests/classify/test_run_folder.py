"""Classifier run folders: one writer, complete only when marked, resume bitwise, never mixed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import medgen.classify._run as run_files
from medgen._internal.runs import COMPLETE
from medgen.classify import Classifier, train
from medgen.cli import app
from medgen.errors import ConfigError, MedgenValueError, RunFolderError

TINY = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
    "batch_size": 16,
    "patience": None,
    "seed": 0,
    "progress": False,
}
#: CLI options of the subprocess runs (the CLI's `densenet` is the small configurable one)
CLI_TRAIN = ["--model", "densenet", "--batch-size", "16", "--augment", "none", "--no-progress"]

#: `medgen ...` pausing after the first epoch's checkpoint (writing GO.paused) until GO exists
PAUSING_CLI = """
import sys, time, pathlib
import torch
torch.set_num_threads(1)
import medgen.classify._run as run_files
from medgen.cli import app
go = pathlib.Path(sys.argv[1])
save = run_files.save_checkpoint
def pausing(folder, ckpt):
    save(folder, ckpt)
    if ckpt["epoch"] == 1:
        go.with_suffix(".paused").touch()
        t = time.monotonic()
        while not go.exists() and time.monotonic() - t < 120:
            time.sleep(0.05)
run_files.save_checkpoint = pausing
sys.argv = ["medgen", *sys.argv[2:]]
app()
"""


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Raise KeyboardInterrupt right after epoch ``epoch``'s checkpoint is written."""
    save = run_files.save_checkpoint

    def interrupting(folder: Path, ckpt: dict) -> None:
        save(folder, ckpt)
        if ckpt["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_files, "save_checkpoint", interrupting)


@pytest.fixture(scope="module")
def finished(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (read-only for the tests: copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_manifest, **TINY, epochs=1, augment="none", out_dir=out)
    return out


@pytest.fixture
def interrupted(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict]:
    """A run of 3 epochs interrupted after epoch 1, and its options."""
    kw = dict(TINY, epochs=3, augment="none")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_manifest, **kw, out_dir=out)
    return out, kw


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _pausing(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "pausing_cli.py"
    script.write_text(PAUSING_CLI)
    go = tmp_path / "go"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(go), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, go


def _wait_for_pause(go: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    path = go.with_suffix(".paused")
    t = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stdout.read()}")  # type: ignore[union-attr]
        assert time.monotonic() - t < timeout, f"{path} did not appear"
        time.sleep(0.05)


# -- resume -------------------------------------------------------------------------------------


def test_resume_after_an_interruption_is_bitwise_identical(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = dict(TINY, epochs=3, augment="light", batch_size=8, calibrate=True)
    whole = train(tiny_manifest, **kw, out_dir=tmp_path / "whole")
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_manifest, **kw, out_dir=out)
    assert not (out / COMPLETE).exists() and (out / "checkpoint.pt").is_file()
    with pytest.raises(RunFolderError, match=r"no finished run .*--resume"):
        Classifier.load(out)
    resumed = train(tiny_manifest, **kw, out_dir=out, resume=True)
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.seen_image_ids == whole.seen_image_ids
    cols = ["epoch", "train_loss", "val_loss", "val_auc", "n_train_seen"]
    pd.testing.assert_frame_equal(whole.history[cols], resumed.history[cols])
    assert resumed.temperature == whole.temperature
    loaded = Classifier.load(out)
    assert all(torch.equal(v, loaded.net.state_dict()[k]) for k, v in b.items())


def test_resume_takes_the_runs_seed_and_may_train_longer(
    interrupted: tuple[Path, dict], tiny_manifest: Path
) -> None:
    out, kw = interrupted
    clf = train(tiny_manifest, **{**kw, "seed": None, "epochs": 4}, out_dir=out, resume=True)
    assert clf.provenance["seed"] == 0 and clf.history["epoch"].tolist() == [1, 2, 3, 4]
    state = json.loads((out / "train_state.json").read_text())
    assert state["epoch"] == 4 and len(state["history"]) == 4
    assert Classifier.load(out).metrics["epochs_run"] == 4
    with pytest.raises(ConfigError, match=r"already trained 4 epochs; pass epochs >= 4"):
        train(tiny_manifest, **{**kw, "epochs": 2}, out_dir=out, resume=True)


def test_resume_with_other_options_or_data_names_the_difference(
    interrupted: tuple[Path, dict], tiny_manifest: Path, tmp_path: Path
) -> None:
    out, kw = interrupted
    with pytest.raises(ConfigError, match=r"differs in lr \(stored 0.001, now 0.01\)"):
        train(tiny_manifest, **{**kw, "lr": 1e-2}, out_dir=out, resume=True)
    other = _copy(tiny_manifest.parent, tmp_path / "other") / "manifest.csv"
    df = pd.read_csv(other)
    df.drop(index=df.index[df["split"] == "train"][0]).to_csv(other, index=False)
    with pytest.raises(ConfigError, match=r"differs in the training data"):
        train(other, **kw, out_dir=out, resume=True)
    assert not (out / COMPLETE).exists()  # refusals leave the run resumable
    train(tiny_manifest, **kw, out_dir=out, resume=True)
    Classifier.load(out)


def test_a_refused_resume_leaves_a_finished_run_finished(
    finished: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    out = _copy(finished, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"differs in augment \(stored 'none', now 'light'\)"):
        train(tiny_manifest, **TINY, epochs=2, augment="light", out_dir=out, resume=True)
    Classifier.load(out)  # marker put back: nothing of the run changed
    clf = train(tiny_manifest, **TINY, epochs=2, augment="none", out_dir=out, resume=True)
    assert clf.history["epoch"].tolist() == [1, 2]
    assert Classifier.load(out).metrics["epochs_run"] == 2


def test_a_corrupt_checkpoint_is_named_without_torch_advice(
    interrupted: tuple[Path, dict], tiny_manifest: Path
) -> None:
    out, kw = interrupted
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunFolderError, match=r"checkpoint.pt: cannot read the checkpoint") as err:
        train(tiny_manifest, **kw, out_dir=out, resume=True)
    assert "weights_only" not in str(err.value)


# -- reuse refusals -------------------------------------------------------------------------------


def test_a_finished_folder_is_reused_only_with_overwrite(
    finished: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    out = _copy(finished, tmp_path / "run")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a finished run.*--overwrite"):
        train(tiny_manifest, **TINY, epochs=1, out_dir=out)
    assert (out / "model.safetensors").read_bytes() == before and (out / COMPLETE).is_file()
    r = CliRunner().invoke(app, ["train", str(tiny_manifest), "-o", str(out), *CLI_TRAIN])
    assert r.exit_code == 2
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    assert "already holds a finished run" in r.output and "--overwrite" in r.output
    train(tiny_manifest, **{**TINY, "seed": 5}, epochs=1, out_dir=out, overwrite=True)
    assert Classifier.load(out).provenance["seed"] == 5


def test_an_interrupted_folder_needs_resume_or_overwrite(
    interrupted: tuple[Path, dict], tiny_manifest: Path
) -> None:
    out, kw = interrupted
    with pytest.raises(RunFolderError, match=r"holds an interrupted run.*--resume.*--overwrite"):
        train(tiny_manifest, **kw, out_dir=out)
    r = CliRunner().invoke(app, ["train", str(tiny_manifest), "-o", str(out), *CLI_TRAIN])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "interrupted run" in r.output and "--resume" in r.output
    with pytest.raises(RunFolderError, match=r"contradict"):
        train(tiny_manifest, **kw, out_dir=out, resume=True, overwrite=True)
    with pytest.raises(ConfigError, match=r"pass out_dir"):
        train(tiny_manifest, **kw, resume=True)


def test_resume_needs_a_run_to_resume(finished: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"holds no run to resume"):
        train(tiny_manifest, **TINY, epochs=1, out_dir=tmp_path / "new", resume=True)
    saved = Classifier.load(finished).save(tmp_path / "saved")
    with pytest.raises(RunFolderError, match=r"holds no training state to resume"):
        train(tiny_manifest, **TINY, epochs=1, out_dir=saved, resume=True)


def test_foreign_files_are_never_deleted(
    finished: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    out = _copy(finished, tmp_path / "run")
    (out / "notes.txt").write_text("my notes")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError, match=r"not part of a medgen run \(notes.txt\)"):
            train(tiny_manifest, **TINY, epochs=1, out_dir=out, **kw)
    clf = Classifier.load(out)  # the finished run is intact
    with pytest.raises(RunFolderError, match=r"notes.txt"):
        clf.save(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes" and (out / COMPLETE).is_file()
    data = tmp_path / "data"  # a folder of someone else's files gets not even a lock file
    data.mkdir()
    (data / "scan.nii.gz").write_bytes(b"only copy")
    with pytest.raises(RunFolderError, match=r"scan\.nii\.gz"):
        train(tiny_manifest, **TINY, epochs=1, out_dir=data)
    assert [p.name for p in data.iterdir()] == ["scan.nii.gz"]


# -- Classifier.save / load ---------------------------------------------------------------------


def test_save_writes_a_complete_folder_and_refuses_to_mix(finished: Path, tmp_path: Path) -> None:
    clf = Classifier.load(finished)
    d = clf.save(tmp_path / "saved")
    marker = json.loads((d / COMPLETE).read_text())
    assert marker["kind"] == "medgen.classify"
    assert set(marker["files"]) == {"model.safetensors", "config.json"}
    assert json.loads((d / "config.json").read_text())["format"] == "medgen.classify/2"
    with pytest.raises(RunFolderError, match=r"already holds a finished run.*overwrite=True"):
        clf.save(d)
    clf.save(d, overwrite=True)
    again = Classifier.load(d)
    assert all(torch.equal(v, again.net.state_dict()[k]) for k, v in clf.net.state_dict().items())
    empty = tmp_path / "empty"
    empty.mkdir()
    clf.save(empty)  # an existing empty folder is fine
    Classifier.load(empty)


def test_a_mixed_folder_is_refused(finished: Path, tmp_path: Path, tiny_manifest: Path) -> None:
    other = train(tiny_manifest, **{**TINY, "seed": 9}, epochs=1, out_dir=tmp_path / "other")
    out = _copy(finished, tmp_path / "run")
    shutil.copy(tmp_path / "other" / "model.safetensors", out / "model.safetensors")
    with pytest.raises(RunFolderError, match=r"is mixed: model.safetensors changed"):
        Classifier.load(out)
    assert other.provenance["seed"] == 9


def _legacy(src: Path, dst: Path) -> Path:
    """A folder as medgen wrote it before run folders: format 1 config, weights, metrics."""
    d = _copy(src, dst)
    for name in (COMPLETE, "checkpoint.pt", "train_state.json", ".medgen.lock"):
        (d / name).unlink()
    meta = json.loads((d / "config.json").read_text())
    meta["format"] = "medgen.classify/1"
    (d / "config.json").write_text(json.dumps(meta))
    return d


def test_a_legacy_folder_loads(finished: Path, tmp_path: Path, tiny_manifest: Path) -> None:
    d = _legacy(finished, tmp_path / "legacy")
    old, new = Classifier.load(d), Classifier.load(finished)
    a = old.predict(tiny_manifest, split="test", progress=False)["y_score"]
    b = new.predict(tiny_manifest, split="test", progress=False)["y_score"]
    pd.testing.assert_series_equal(a, b)
    # a writer replaces it only when told to
    with pytest.raises(RunFolderError, match=r"saved by an older medgen.*--overwrite"):
        train(tiny_manifest, **TINY, epochs=1, out_dir=d)
    with pytest.raises(RunFolderError, match=r"saved by an older medgen"):
        old.save(d)
    old.save(d, overwrite=True)
    assert (d / COMPLETE).is_file()


def test_an_interrupted_run_beside_legacy_files_is_refused(finished: Path, tmp_path: Path) -> None:
    d = _legacy(finished, tmp_path / "legacy")
    shutil.copy(finished / "train_state.json", d / "train_state.json")
    with pytest.raises(RunFolderError, match=r"no finished run"):
        Classifier.load(d)
    d2 = _copy(finished, tmp_path / "half")  # written by this medgen, marker missing
    (d2 / COMPLETE).unlink()
    (d2 / "train_state.json").unlink()
    (d2 / "checkpoint.pt").unlink()
    with pytest.raises(RunFolderError, match=r"is incomplete.*no run_complete.json"):
        Classifier.load(d2)


def test_corrupt_legacy_files_are_named(finished: Path, tmp_path: Path) -> None:
    d = _legacy(finished, tmp_path / "w")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        MedgenValueError, match=r"model.safetensors: cannot read the weights"
    ) as err:
        Classifier.load(d)
    assert "weights_only" not in str(err.value)
    d = _legacy(finished, tmp_path / "c")
    (d / "config.json").write_text('{"format": "medgen.classify/1", "config": {"model"')
    with pytest.raises(ConfigError, match=r"config.json is not a medgen classifier config"):
        Classifier.load(d)


# -- processes ----------------------------------------------------------------------------------


def test_a_killed_overwrite_is_refused_then_resumed(
    finished: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    """The reported failure: run B over a finished run A, killed mid-way, left A's config and
    weights beside B's metrics, and the mix loaded."""
    out = _copy(finished, tmp_path / "run")
    args = ["train", str(tiny_manifest), "-o", str(out), *CLI_TRAIN, "--epochs", "2"]
    proc, go = _pausing(tmp_path, [*args, "--seed", "1", "--overwrite"])
    try:
        _wait_for_pause(go, proc)  # B wrote its first checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert COMPLETE not in _files(out) and "model.safetensors" not in _files(out)  # A is gone
    with pytest.raises(RunFolderError, match=r"no finished run.*--resume"):
        Classifier.load(out)
    r = CliRunner().invoke(
        app, ["predict", str(out), str(tiny_manifest), "-o", str(tmp_path / "p.csv")]
    )
    assert r.exit_code == 2 and "no finished run" in r.output
    r = CliRunner().invoke(app, [*args, "--seed", "1", "--resume"])
    assert r.exit_code == 0, r.output
    clf = Classifier.load(out)
    assert clf.provenance["seed"] == 1 and clf.history["epoch"].tolist() == [1, 2]


def test_two_writers_one_wins_the_other_fails_fast(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", str(tiny_manifest), "-o", str(out), *CLI_TRAIN, "--epochs", "2"]
    proc, go = _pausing(tmp_path, args)
    try:
        _wait_for_pause(go, proc)  # the first run holds the lock, paused after epoch 1
        t = time.monotonic()
        r = CliRunner().invoke(app, args)
        assert time.monotonic() - t < 5
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert f"is being written by pid {proc.pid}" in r.output
        go.touch()
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout
    assert Classifier.load(out).history["epoch"].tolist() == [1, 2]
