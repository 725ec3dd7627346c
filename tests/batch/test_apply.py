"""Batch apply (:func:`medgen.batch.apply_model`, ``medgen denoise|superres apply``): the same
executors as generation, resume, refusals. A tiny denoiser on 2D NIfTI slices of MNI152."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medgen.batch import apply_model
from medgen.errors import ConfigError, MissingDependencyError, RunFolderError

TINY = {"channels": (4, 8), "patch_size": 16}
FIT = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "device": "cpu"}
#: bookkeeping whose bytes carry a time or the writer (everything else must be identical)
TIMED = {".medgen.lock", ".medgen-apply/job.json"}
ENV = {**os.environ, "MEDGEN_DEBUG": "", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def den(tmp_path_factory: pytest.TempPathFactory, mni_slices: np.ndarray) -> Path:
    """A tiny trained denoiser run folder."""
    from medgen.generative import Denoiser

    run = tmp_path_factory.mktemp("apply") / "den"
    Denoiser(**TINY, sigma=0.1).fit(list(mni_slices), run_dir=run, config=FIT, progress=False)
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, mni_slices: np.ndarray) -> list[Path]:
    """24 noisy two-slice NIfTI volumes (64x80x2), each different."""
    from medgen.io import save

    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    out = []
    for k in range(24):
        vol = np.stack([mni_slices[k % 4], mni_slices[(k + 1) % 4]], axis=-1)
        vol = vol + rng.normal(0, 0.05, vol.shape)
        out.append(save(vol[None].astype(np.float32), d / f"img{k:02d}.nii.gz"))
    return out


@pytest.fixture(scope="module")
def reference(den: Path, images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 24 images denoised in this process, shards of 5: the reference output."""
    out = tmp_path_factory.mktemp("ref") / "out"
    apply_model(den, images, out, shard_size=5, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in TIMED:
            out[rel] = p.read_bytes()
    return out


def _same(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, f"files differ: {differ[:5]}"


def test_outputs_table_and_resume(den: Path, images: list[Path], reference: Path) -> None:
    from medgen.io import load

    table = pd.read_csv(reference / "outputs.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["input", "output", "image_id", "kind", "run", "sha256"]
    assert table["output"].tolist() == [f"img{k:02d}.nii.gz" for k in range(24)]
    assert set(table["kind"]) == {"denoise"} and set(table["run"]) == {str(den.resolve())}
    for name, sha in zip(table["output"], table["sha256"], strict=True):
        assert hashlib.sha256((reference / name).read_bytes()).hexdigest() == sha
    img = load(reference / "img03.nii.gz")
    assert tuple(img.shape) == (1, 64, 80, 2) and "medgen denoise" in img.meta["descrip"]
    # 24 inputs in shards of 5: five parts
    assert len(list((reference / ".medgen-apply").glob("part-*.csv"))) == 5
    # the same call again: everything is done, no image is rewritten
    before = {p: p.stat().st_mtime_ns for p in reference.glob("*.nii.gz")}
    apply_model(den, images, reference, shard_size=5, progress=False)
    assert {p: p.stat().st_mtime_ns for p in reference.glob("*.nii.gz")} == before


def test_deleted_or_damaged_outputs_are_redone(
    den: Path, images: list[Path], reference: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "img04.nii.gz").unlink()
    damaged = out / "img09.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    kept = out / "img10.nii.gz"
    mtime = kept.stat().st_mtime_ns
    apply_model(den, images, out, shard_size=3, progress=False)  # shard size is no argument
    _same(reference, out)
    assert kept.stat().st_mtime_ns == mtime


@pytest.mark.slow  # 12-31 s, nearly all of it two workers importing torch
def test_two_local_dask_workers_give_the_same_bytes(
    den: Path, images: list[Path], reference: Path, tmp_path: Path
) -> None:
    """Through the CLI: ``--workers 2`` (an embedded LocalCluster) gives the in-process bytes."""
    pytest.importorskip("distributed")
    from medgen.cli import app

    out = tmp_path / "dask"
    args = ["denoise", "apply", str(den), *map(str, images), "-o", str(out)]
    res = CliRunner().invoke(app, [*args, "--workers", "2", "--shard-size", "5", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "24 images ->" in res.output
    _same(reference, out)


def test_killed_apply_resumes_to_the_same_bytes(
    den: Path, images: list[Path], reference: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of ``medgen denoise apply`` (a subprocess) after a third of the outputs
    appeared; rerunning the same command gives exactly the files of the uninterrupted run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medgen.cli", "denoise", "apply", str(den), *map(str, images),
           "-o", str(out), "--shard-size", "5", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir() and len(list(out.glob("*.nii.gz"))) >= 8:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the apply finished before it could be killed"
    parts = len(list((out / ".medgen-apply").glob("part-*.csv")))
    assert 0 < parts < 5 and not (out / "outputs.csv").exists()
    # the same command again (here through the library the command is a shell over)
    with caplog.at_level(logging.INFO, logger="medgen.batch._apply"):
        apply_model(den, images, out, shard_size=5, progress=False)
    assert f"resuming: {5 * parts} of 24 inputs done already" in caplog.text
    _same(reference, out)


def test_other_arguments_are_refused(den: Path, images: list[Path], reference: Path) -> None:
    before = _files(reference)
    with pytest.raises(RunFolderError, match=r"other arguments \(format: None in the folder, 'dicom' now; self_ensemble: False in the folder, True now\)"):  # fmt: skip
        apply_model(den, images, reference, format="dicom", self_ensemble=True, progress=False)
    with pytest.raises(RunFolderError, match=r"retain: \[\] in the folder, \['patient_characteristics'\] now"):  # fmt: skip
        apply_model(den, images, reference, retain=("patient_characteristics",), progress=False)
    assert _files(reference) == before


def test_new_inputs_extend_the_folder(den: Path, images: list[Path], tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images[0], other / "img00.nii.gz")  # the same name as an earlier input
    out = tmp_path / "out"
    apply_model(den, images[:3], out, progress=False)
    apply_model(den, [*images[:3], other / "img00.nii.gz"], out, progress=False)
    table = pd.read_csv(out / "outputs.csv")
    assert table["output"].tolist() == ["img00.nii.gz", "img01.nii.gz", "img02.nii.gz",
                                        "img00-2.nii.gz"]  # fmt: skip
    assert table["input"].iloc[3] == str(other / "img00.nii.gz")


def test_translate_through_the_library(tiny_manifest: Path, den: Path, tmp_path: Path) -> None:
    from medgen.cohort import Cohort
    from medgen.generative import Translator
    from medgen.io import load

    cohort = Cohort.from_manifest(tiny_manifest)
    source = cohort.select(site="site_A")
    translator = Translator("histogram", source={"site": "site_A"}, target={"site": "site_B"})
    run = translator.fit(cohort).save(tmp_path / "translator")
    out = tmp_path / "out"
    table = pd.read_csv(apply_model(run, tiny_manifest, out, kind="translate", progress=False))
    assert len(table) == len(cohort.df) and set(table["kind"]) == {"translate"}
    derived = pd.read_csv(out / "manifest.csv")
    assert derived["image_id"].tolist() == cohort.df["image_id"].tolist()
    first = source.df.iloc[0]
    img = load(out / f"{first['image_id']}.nii.gz")
    assert "translator" in img.meta["descrip"] or "histogram" in img.meta["descrip"]
    # kind=None: what the folder holds
    assert pd.read_csv(apply_model(run, tiny_manifest, out, progress=False)).equals(table)
    # a run of another kind
    with pytest.raises(ConfigError, match=rf"run folder {str(den)!r} holds a 'denoise' model, not a translator"):  # fmt: skip
        apply_model(den, tiny_manifest, tmp_path / "o", kind="translate", progress=False)
    with pytest.raises(ConfigError, match="a translator has no such option"):
        apply_model(run, tiny_manifest, tmp_path / "o", self_ensemble=True, progress=False)
    with pytest.raises(ConfigError, match="holds a 'translator' model, not a 'denoise' model"):
        apply_model(run, tiny_manifest, tmp_path / "o", kind="denoise", progress=False)
    assert not (tmp_path / "o").exists()


def test_workers_without_dask_say_how_to_install(
    den: Path, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medgen.cli import app

    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'medgen\[dask\]'"):
        apply_model(den, images[:2], tmp_path / "o", workers=2, progress=False)
    res = CliRunner().invoke(
        app, ["superres", "apply", str(den), str(images[0]), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "not a 'superres' model" in res.output
    res = CliRunner().invoke(
        app, ["denoise", "apply", str(den), str(images[0]), "-o", str(tmp_path / "o"),
              "--workers", "2"],
    )  # fmt: skip
    assert res.exit_code == 2 and "pip install 'medgen[dask]'" in res.output
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler_fails_fast(den: Path, images: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from medgen.errors import MedgenRuntimeError

    t0 = time.monotonic()
    with pytest.raises(MedgenRuntimeError, match=r"scheduler='tcp://127.0.0.1:9': no Dask scheduler answered within 1 s"):  # fmt: skip
        apply_model(den, images[:2], tmp_path / "o", scheduler="tcp://127.0.0.1:9",
                    scheduler_timeout=1.0, progress=False)  # fmt: skip
    assert time.monotonic() - t0 < 20 and not (tmp_path / "o").exists()
