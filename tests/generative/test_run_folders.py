"""Nothing lost (issue 11): ``apply`` never touches its inputs nor writes outside ``-o``; training
and saved models live in run folders with a lifecycle (medgen.generative._run, _cli).

Tiny configs (channels (4, 8), 16-px patches); the commands run as subprocesses where a kill or a
second process is the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medgen.errors import RunFolderError
from medgen.generative import Denoiser, SuperResolver, load

TINY = {"channels": (4, 8), "patch_size": 16}
FIT = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "device": "cpu"}
TRAIN_ARGS = [
    "--channels",
    "4,8",
    "--patch-size",
    "16",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "2",
    "--no-progress",
    "--device",
    "cpu",
]
ENV = {**os.environ, "MEDGEN_DEBUG": "", "OMP_NUM_THREADS": "1"}


def _medgen(*args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medgen.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=120,
        **kw,
    )


def _spawn(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "medgen.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> SHA-256 (``"dir"`` for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mni_slices: np.ndarray) -> dict[str, Path]:
    """Tiny trained denoise and superres run folders."""
    d = tmp_path_factory.mktemp("runs")
    Denoiser(**TINY, sigma=0.1).fit(list(mni_slices), run_dir=d / "den", config=FIT, progress=False)
    SuperResolver(scale=2, **TINY).fit(
        list(mni_slices), run_dir=d / "sr", config=FIT, progress=False
    )
    return {"denoise": d / "den", "superres": d / "sr"}


@pytest.fixture()
def data(tmp_path: Path, mni_slices: np.ndarray) -> dict[str, Path]:
    """A NIfTI file and a DICOM series folder (written by medgen.io.save) under ``tmp/data``."""
    from medgen.io import save

    vol = np.moveaxis(mni_slices, 0, -1)[None].astype(np.float32)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    d = tmp_path / "data"
    nii = save(vol, d / "nii" / "scan.nii.gz", affine=affine)
    ct = save(vol * 1000, d / "dcm" / "ct", affine=affine, dicom_tags={"Modality": "CT"})
    return {"nifti": nii, "dicom": ct, "root": d}


# ---------------------------------------------------------------------------------- apply


@pytest.mark.parametrize("kind", ["denoise", "superres"])
def test_apply_never_writes_on_or_around_its_inputs(
    kind: str, runs: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    """``-o`` at an input, at its folder or inside a DICOM series: refused before anything is
    written; every byte under the tmp folder (inputs, run) is as it was. The installed command
    (a subprocess) for ``-o`` at the NIfTI file and at the DICOM series' folder, the app in
    this process for the other cases."""
    from medgen.cli import app

    before = _tree(tmp_path)
    run_before = _tree(runs[kind])
    nii, ct = data["nifti"], data["dicom"]
    for out, rule in ((nii, "is the input"), (ct.parent, "contains the input")):
        res = _medgen(kind, "apply", runs[kind], nii, ct, "-o", out, "--no-progress")
        assert res.returncode == 2, (out, res.stdout, res.stderr)
        assert res.stderr.startswith(f"Error: --output {str(out)!r} {rule}"), res.stderr
        assert "never writes over its inputs" in res.stderr and res.stderr.count("\n") == 1
        assert _tree(tmp_path) == before, out
    cases = [
        (nii, nii.parent, "contains the input"),
        (nii, data["root"], "contains the input"),
        (ct, ct, "is the input"),
        (ct, ct / "sub", "lies inside the input"),
        (nii, runs[kind] / "out", "lies inside the input"),  # the run folder is an input too
        (nii, runs[kind].parent, "contains the input"),
    ]
    runner = CliRunner()
    for src, out, rule in cases:
        res = runner.invoke(app, [kind, "apply", str(runs[kind]), str(src), "-o", str(out)])
        assert res.exit_code == 2, (src, out, res.output)
        assert f"Error: --output {str(out)!r} {rule}" in res.output, res.output
        assert _tree(tmp_path) == before, (src, out)
    assert _tree(runs[kind]) == run_before


def test_same_names_get_distinct_outputs_and_a_mapping(
    runs: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    from medgen.cli import app

    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.nii.gz").write_bytes(data["nifti"].read_bytes())
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["denoise", "apply", str(runs["denoise"])]
    res = runner.invoke(app, [*args, str(a / "x.nii.gz"), str(b / "x.nii.gz"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "outputs.csv")
    assert list(table["input"]) == [str(a / "x.nii.gz"), str(b / "x.nii.gz")]
    assert list(table["output"]) == ["x.nii.gz", "x-2.nii.gz"]
    assert (out / "x.nii.gz").is_file() and (out / "x-2.nii.gz").is_file()
    first = _tree(out)
    # a second apply into the same folder resumes: b/x.nii.gz is done already (its output is
    # kept, not redone as x-3.nii.gz), the new input extends the mapping
    res = runner.invoke(
        app,
        [*args, str(b / "x.nii.gz"), str(data["dicom"]), "-o", str(out), "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "outputs.csv")
    assert list(table["output"]) == ["x.nii.gz", "x-2.nii.gz", "ct"]
    assert table["input"].iloc[2] == str(data["dicom"]) and set(table["kind"]) == {"denoise"}
    after = _tree(out)
    # (the lock file names its last holder and the time: it changes with every writer; the
    # job's bookkeeping grows with the new input)
    kept = {
        k: v
        for k, v in first.items()
        if k not in ("outputs.csv", ".medgen.lock") and not k.startswith(".medgen-apply")
    }
    assert all(after[k] == v for k, v in kept.items())
    assert (out / "ct").is_dir() and len(list((out / "ct").iterdir())) == 4


@pytest.mark.parametrize(
    "image_id", ["../../victim", "{tmp}/victim", "a/../../x", "sub/x", "a\\b", "..", "."]
)
def test_manifest_ids_that_leave_the_output_folder_are_errors(
    image_id: str, runs: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    from medgen.cli import app

    iid = image_id.format(tmp=tmp_path)
    manifest = tmp_path / "cohort.csv"
    rows = [
        {"image_id": "fine", "image_path": str(data["nifti"])},
        {"image_id": iid, "image_path": str(data["nifti"])},
    ]
    for r in rows:
        r.update(subject_id="s1", split="test", source="real")
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "deep" / "er" / "out"
    before = _tree(tmp_path)
    res = CliRunner().invoke(
        app, ["denoise", "apply", str(runs["denoise"]), str(manifest), "-o", str(out)]
    )
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and repr(iid) in errors[0] and "cannot name an output file" in errors[0]
    assert _tree(tmp_path) == before  # nothing written anywhere, not even the output folder


def test_manifest_outputs_are_named_by_id_inside_the_output_folder(
    runs: dict[str, Path], data: dict[str, Path], tmp_path: Path
) -> None:
    from medgen.cli import app

    manifest = tmp_path / "cohort.csv"
    rows = [
        {"image_id": "sub 01:T1w", "image_path": str(data["nifti"])},
        {"image_id": "sub_01_T1w", "image_path": str(data["dicom"])},
    ]
    for r in rows:
        r.update(subject_id="s1", split="test", source="real")
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["denoise", "apply", str(runs["denoise"]), str(manifest), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "outputs.csv")
    assert list(table["output"]) == ["sub_01_T1w.nii.gz", "sub_01_T1w"]
    assert list(table["image_id"]) == ["sub 01:T1w", "sub_01_T1w"]
    derived = pd.read_csv(out / "manifest.csv")
    assert list(derived["derived_from"]) == [str(data["nifti"]), str(data["dicom"])]
    assert all(Path(p).resolve().parent == out.resolve() for p in derived["image_path"])


# ---------------------------------------------------------------------------------- run folders


def test_a_killed_training_is_refused_until_resumed(tmp_path: Path, write_cohort: Any) -> None:
    """SIGKILL after the first checkpoint: apply and a plain train refuse the folder naming
    --resume; train --resume finishes it and the result loads."""
    from medgen.cli import app

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = write_cohort(cohort, affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    run = tmp_path / "run"
    proc = _spawn("denoise", "train", manifest, "-o", run, "--epochs", "100000", *TRAIN_ARGS)
    try:
        _wait_for(run / "train_state.json", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert not (run / "run_complete.json").exists() and not (run / "config.json").exists()
    runner = CliRunner()

    def medgen(*args: Any) -> Any:
        return runner.invoke(app, [str(a) for a in args])

    res = medgen("denoise", "apply", run, cohort / "s0.nii.gz", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "holds no finished run" in res.output, res.output
    assert "--resume" in res.output and not (tmp_path / "out").exists()
    with pytest.raises(RunFolderError, match="holds no finished run"):
        load(run)
    res = medgen("denoise", "train", manifest, "-o", run, "--epochs", "2", *TRAIN_ARGS)
    assert res.exit_code == 2 and "interrupted run" in res.output, res.output
    assert "--resume" in res.output and "--overwrite" in res.output
    step = json.loads((run / "train_state.json").read_text())["step"]
    epochs = step // 2 + 1
    res = medgen(
        "denoise", "train", manifest, "-o", run, "--epochs", epochs, "--resume", *TRAIN_ARGS
    )
    assert res.exit_code == 0, res.output
    model = load(run)
    assert isinstance(model, Denoiser) and model.steps_trained == 2 * epochs
    assert json.loads((run / "run_complete.json").read_text())["kind"] == "denoise"
    # finished: a plain train refuses, --overwrite starts again
    res = medgen("denoise", "train", manifest, "-o", run, "--epochs", "1", *TRAIN_ARGS)
    assert res.exit_code == 2 and "already holds a finished run" in res.output, res.output
    res = medgen(
        "denoise", "train", manifest, "-o", run, "--epochs", "1", "--overwrite", *TRAIN_ARGS
    )
    assert res.exit_code == 0, res.output
    assert load(run).steps_trained == 2


def test_two_trainings_into_one_folder_one_wins(tmp_path: Path, write_cohort: Any) -> None:
    """A second train into a folder another process trains into fails at once, naming it."""
    from medgen.cli import app

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = write_cohort(cohort, affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    run = tmp_path / "run"
    first = _spawn(
        "denoise", "train", manifest, "-o", run, "--epochs", "100000", "--time-budget", "3",
        *TRAIN_ARGS,
    )  # fmt: skip
    try:
        lock = run / ".medgen.lock"
        t0 = time.monotonic()
        while f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else ""):
            assert first.poll() is None and time.monotonic() - t0 < 90, first.communicate()
            time.sleep(0.05)
        t1 = time.monotonic()
        args = ["denoise", "train", str(manifest), "-o", str(run), "--epochs", "1", *TRAIN_ARGS]
        second = CliRunner().invoke(app, args)
        assert second.exit_code == 2, second.output
        assert f"is being written by pid {first.pid}" in second.output, second.output
        assert time.monotonic() - t1 < 10  # at once, not after the first run
        assert first.poll() is None  # the first one still trains
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert load(run).steps_trained > 0


def test_an_extended_run_that_dies_leaves_a_folder_that_is_refused(
    tmp_path: Path, mni_slices: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's mixed folder: a finished run trained further and killed keeps its old
    config.json and weights beside the new training state; loading refuses it."""
    run = tmp_path / "run"
    den = Denoiser(**TINY, sigma=0.1)
    den.fit(list(mni_slices), run_dir=run, config=FIT, progress=False)
    calls = {"n": 0}
    make_pair = Denoiser._make_pair

    def dying(self: Denoiser, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 7:  # in the second step of the resumed epoch
            raise KeyboardInterrupt
        return make_pair(self, *args)

    monkeypatch.setattr(Denoiser, "_make_pair", dying)
    with pytest.raises(KeyboardInterrupt):
        Denoiser(**TINY, sigma=0.1).fit(
            list(mni_slices), run_dir=run, config={**FIT, "epochs": 3}, resume=True
        )
    monkeypatch.undo()
    assert {"config.json", "model.safetensors", "train_state.json"} <= {
        p.name for p in run.iterdir()
    }
    assert not (run / "run_complete.json").exists()
    with pytest.raises(RunFolderError, match=r"is mixed.*--resume"):
        Denoiser.load(run)
    with pytest.raises(RunFolderError, match="interrupted run"):
        Denoiser(**TINY, sigma=0.1).fit(list(mni_slices), run_dir=run, config=FIT)
    Denoiser(**TINY, sigma=0.1).fit(
        list(mni_slices), run_dir=run, config={**FIT, "epochs": 3}, resume=True, progress=False
    )
    assert Denoiser.load(run).steps_trained == 6


def test_save_and_fit_refuse_folders_they_would_mix_or_empty(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    den = Denoiser(**TINY)
    d = den.save(tmp_path / "m")
    assert json.loads((d / "run_complete.json").read_text())["files"].keys() == {
        "model.safetensors",
        "config.json",
    }
    with pytest.raises(RunFolderError, match=r"already holds a model.*overwrite=True"):
        den.save(d)
    den.save(d, overwrite=True)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "my_notes.txt").write_text("the only copy")
    before = _tree(notes)
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(my_notes\.txt\)"):
        den.save(notes)
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(my_notes\.txt\)"):
        den.save(notes, overwrite=True)
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(my_notes\.txt\)"):
        den.fit(list(mni_slices), run_dir=notes, config=FIT, overwrite=True)
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(my_notes\.txt\)"):
        den.fit(list(mni_slices), run_dir=notes, config=FIT, resume=True)
    assert _tree(notes) == before  # refused before anything, even the lock file, was made
    with pytest.raises(RunFolderError, match="contradict each other"):
        den.fit(list(mni_slices), run_dir=d, config=FIT, resume=True, overwrite=True)
    with pytest.raises(RunFolderError, match="no training state to resume"):
        den.fit(list(mni_slices), run_dir=d, config=FIT, resume=True)
    assert load(d).steps_trained == 0  # the refusals left the model loadable


def test_folders_of_earlier_versions_load_and_are_replaced_only_with_overwrite(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    """A finished run of an earlier version (no marker; train_state without a format) loads; a
    later run's training state beside its config.json makes it mixed."""
    run = tmp_path / "run"
    Denoiser(**TINY).fit(list(mni_slices), run_dir=run, config=FIT, progress=False)
    (run / "run_complete.json").unlink()
    state = json.loads((run / "train_state.json").read_text())
    state.pop("format")
    (run / "train_state.json").write_text(json.dumps(state))
    assert load(run).steps_trained == 2
    with pytest.raises(RunFolderError, match="saved by an earlier medgen"):
        Denoiser(**TINY).fit(list(mni_slices), run_dir=run, config=FIT)
    # what the user had: the old model beside the training state of a newer run
    (run / "train_state.json").write_text(json.dumps({**state, "step": 1, "history": []}))
    with pytest.raises(RunFolderError, match="is mixed"):
        load(run)
    Denoiser(**TINY).fit(list(mni_slices), run_dir=run, config=FIT, overwrite=True)
    assert load(run).steps_trained == 2 and (run / "run_complete.json").is_file()


def test_engine_run_folders_have_the_lifecycle(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from medgen.generative import EngineConfig, Objective, fit_objective

    class Tiny(Objective):
        kind = "tiny"

        def build_networks(self) -> dict[str, nn.Module]:
            return {"net": nn.Linear(1, 1)}

        def build_optimizers(self, networks: Any) -> dict[str, torch.optim.Optimizer]:
            return {"opt": torch.optim.SGD(networks["net"].parameters(), lr=0.1)}

        def sample_batch(self, step: int) -> dict[str, torch.Tensor]:
            return {"x": torch.ones(2, 1)}

        def train_step(self, batch: Any, ctx: Any) -> dict[str, Any]:
            loss = ctx.networks["net"](batch["x"]).pow(2).mean()
            ctx.backward(loss, "opt")
            return {"loss": loss}

    cfg = EngineConfig(epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", ema_decay=None)
    fit_objective(Tiny(), config=cfg, run_dir=tmp_path / "r", progress=False)
    marker = json.loads((tmp_path / "r" / "run_complete.json").read_text())
    assert marker["kind"] == "medgen.generative.engine" and marker["objective"] == "tiny"
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        fit_objective(Tiny(), config=cfg, run_dir=tmp_path / "r", progress=False)
    res = fit_objective(Tiny(), config=cfg, run_dir=tmp_path / "r", overwrite=True, progress=False)
    assert res.step == 2
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "my_notes.txt").write_text("the only copy")
    before = _tree(notes)
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(my_notes\.txt\)"):
        fit_objective(Tiny(), config=cfg, run_dir=notes, overwrite=True, progress=False)
    assert _tree(notes) == before  # no lock file left in a folder of foreign files


def test_apply_to_dicom_writes_only_the_allow_list(
    runs: dict[str, Path], tmp_path: Path, mni_slices: np.ndarray
) -> None:
    """apply copied sex, age, manufacturer and institution into the output's header."""
    import pydicom

    from medgen.cli import app
    from medgen.io import save

    src = save(
        np.moveaxis(mni_slices, 0, -1)[None].astype(np.float32) * 1000,
        tmp_path / "data" / "mr",
        affine=np.diag([2.0, 2.0, 3.0, 1.0]),
        dicom_tags={
            "Modality": "MR",
            "PatientSex": "F",
            "PatientAge": "061Y",
            "Manufacturer": "ACME",
            "InstitutionName": "St Elsewhere",
            "SeriesDescription": "Head MR for Jane Doe",
        },
    )

    def header(out: Path) -> pydicom.Dataset:
        res = CliRunner().invoke(
            app, ["denoise", "apply", str(runs["denoise"]), str(src), "-o", str(out), *extra]
        )
        assert res.exit_code == 0, res.output
        # (.medgen-apply/ is the job's bookkeeping: plan and parts, for resume)
        series = next(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
        return pydicom.dcmread(sorted(series.iterdir())[0])

    extra: list[str] = []
    ds = header(tmp_path / "out")
    assert ds.Modality == "MR" and ds.PatientIdentityRemoved == "YES"
    for kw in ("PatientSex", "PatientAge", "Manufacturer", "InstitutionName", "SeriesDescription"):
        assert str(ds.get(kw, "") or "") == "", kw
    extra = ["--retain", "patient_characteristics"]
    ds = header(tmp_path / "out_retain")
    assert (ds.PatientSex, ds.PatientAge) == ("F", "061Y") and not ds.get("InstitutionName")
