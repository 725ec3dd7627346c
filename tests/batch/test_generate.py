"""Batch synthetic datasets (:mod:`medgen.batch`): a tiny synthesizer, tiny datasets."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pydicom
import pytest

from medgen.batch import check_dataset, generate
from medgen.errors import (
    ConfigError,
    MedgenFileNotFoundError,
    MedgenRuntimeError,
    MedgenValueError,
    MissingDependencyError,
    OutputPathError,
    RunFolderError,
)
from medgen.generative.synthesis import Synthesizer

TINY = {"image_size": (32, 32), "channels": (8, 16), "latent_channels": 2}
CONFIG = {"epochs": 2, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu", "ema_decay": None}
#: a small generation: 4 balanced cells, shards of 8 in batches of 4
SMALL: dict[str, Any] = {"balance": ("label", "sex"), "shard_size": 8, "batch_size": 4}
#: files whose bytes carry a time or the executor (everything else must be identical)
TIMED = {".medgen.lock", "run_complete.json", "generate.json", "provenance.json"}
TIMED |= {"dataset_card.json", "dataset_card.md"}


@pytest.fixture(scope="module")
def run_dir(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE-GAN trained on the tiny preset into a run folder."""
    run = tmp_path_factory.mktemp("batch") / "run"
    syn = Synthesizer("vae-gan", ("label", "sex"), adv_weight=0.0, **TINY)
    syn.fit(tiny_manifest, run_dir=run, config=CONFIG, progress=False)
    return run


@pytest.fixture(scope="module")
def rejecting_reference(
    run_dir: Path, tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The training cohort with 20 *generated* images as its held-out rows: samples are then
    about as close to the training images as the held-out ones, so with ``quantile=0.1`` the
    gate rejects some draws (about one in six) and generation must replace them."""
    from medgen.io import save

    syn = Synthesizer.load(run_dir)
    d = tmp_path_factory.mktemp("reference")
    df = pd.read_csv(tiny_manifest)
    train = df[df["split"] == "train"].copy()
    train["image_path"] = [str(tiny_manifest.parent / p) for p in train["image_path"]]
    held = syn.sample(20, seed=123)
    rows = []
    for k in range(len(held)):
        path = save(held.images[k].numpy(), d / f"held{k}.nii.gz")
        c = held.conditions.iloc[k]
        rows.append({"image_id": f"held{k}", "image_path": str(path), "subject_id": f"h{k}",
                     "split": "val", "source": "real", "label": int(c["label"]), "sex": c["sex"]})  # fmt: skip
    cols = ["image_id", "image_path", "subject_id", "split", "source", "label", "sex"]
    pd.concat([train[cols], pd.DataFrame(rows)]).to_csv(d / "manifest.csv", index=False)
    return d / "manifest.csv"


def _gated(reference: Path) -> dict[str, Any]:
    return {**SMALL, "reference": reference, "quantile": 0.1}


@pytest.fixture(scope="module")
def gated(
    run_dir: Path, rejecting_reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """48 images in-process through the rejecting gate: the reference output."""
    out = tmp_path_factory.mktemp("gated") / "out"
    generate(run_dir, 48, out, **_gated(rejecting_reference), progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), except those carrying a time."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel not in TIMED:
                out[rel] = p.read_bytes()
    return out


def _same(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k] != fb[k]]
    assert not differ, f"files differ: {differ[:5]}"
    sa = json.loads((a / "generate.json").read_text())
    sb = json.loads((b / "generate.json").read_text())
    assert sa["arguments"] == sb["arguments"] and sa["dataset_id"] == sb["dataset_id"]


# ------------------------------------------------------------------------------- outputs
def test_in_process_dataset(run_dir: Path, tmp_path: Path) -> None:
    from medgen._internal.provenance import file_sha256
    from medgen.cohort import Cohort

    out = tmp_path / "out"
    manifest = generate(run_dir, 37, out, **SMALL, progress=False)
    assert manifest == out / "manifest.csv"
    cohort = Cohort.from_manifest(manifest)
    df = cohort.df
    assert list(df.columns[:5]) == ["image_id", "image_path", "subject_id", "split", "source"]
    assert list(df.columns[5:]) == ["label", "sex", "seed", "item", "draw", "model_id", "sha256"]
    assert len(df) == 37 and df["image_id"].is_unique and set(df["source"]) == {"synthetic"}
    assert (df["image_id"] == df["subject_id"]).all() and df["item"].tolist() == list(range(37))
    # balanced: item i gets cell i mod 4 of (label, sex), so the counts differ by at most one
    cells = df.groupby(["label", "sex"]).size()
    assert sorted(cells.tolist()) == [9, 9, 9, 10] and len(cells) == 4
    assert all(
        file_sha256(Path(p)) == h for p, h in zip(df["image_path"], df["sha256"], strict=True)
    )
    assert (out / "shards" / "shard-00004.csv").is_file() and not (
        out / "shards" / "shard-00005.csv"
    ).exists()
    parquet = pd.read_parquet(out / "manifest.parquet")
    pd.testing.assert_frame_equal(parquet, pd.read_csv(manifest, keep_default_na=False))
    card = json.loads((out / "dataset_card.json").read_text())
    assert "not for diagnosis" in (out / "dataset_card.md").read_text()
    assert card["generation"]["n_delivered"] == 37 and card["generation"]["n_rejected"] == 0
    dist = pd.DataFrame(card["condition_distribution"]).set_index(["condition", "value"])
    assert dist.loc[("sex", "F"), "delivered"] == dist.loc[("sex", "F"), "requested"] == 19
    assert card["generator"]["weights_sha256"] == Synthesizer.load(run_dir).weights_sha256
    assert card["evaluation"] is None and "bibtex" in card["citation"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["executor"]["kind"] == "in-process" and prov["arguments"]["n"] == 37
    assert prov["training_data"]["manifest_sha256"] and "torch" in prov["versions"]
    assert check_dataset(out).ok
    # the same call again: complete, nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert generate(run_dir, 37, out, **SMALL, progress=False) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_where_and_conditions_table(run_dir: Path, tmp_path: Path) -> None:
    a = pd.read_csv(generate(run_dir, 6, tmp_path / "a", where={"label": 1}, progress=False))
    assert a["label"].tolist() == [1] * 6 and set(a["sex"]) <= {"F", "M"}
    table = pd.DataFrame({"label": ["0", "1", "1", ""], "sex": ["M", "F", "", "F"]})
    table.to_csv(tmp_path / "conditions.csv", index=False)
    b = pd.read_csv(
        generate(
            run_dir, None, tmp_path / "b", conditions=tmp_path / "conditions.csv", progress=False
        )
    )
    assert b["label"].tolist()[:3] == [0, 1, 1] and b["sex"].tolist()[:2] == ["M", "F"]
    assert b["sex"].iloc[3] == "F" and len(b) == 4  # empty cells are drawn


def test_requested_condition_distribution(run_dir: Path) -> None:
    from medgen.batch._card import condition_distribution

    syn = Synthesizer.load(run_dir)
    combos = syn.combinations
    # where: the drawn condition is requested as the training combinations of label=1 have it
    dist = condition_distribution(syn, 10, where={"label": 1}, cells=[], table=None)
    ones = combos[combos["label"] == 1]
    share_f = ones.loc[ones["sex"] == 0, "count"].sum() / ones["count"].sum()
    assert (
        dist.loc[("label", "1"), "requested"] == 10 and dist.loc[("label", "0"), "requested"] == 0
    )
    assert dist.loc[("sex", "F"), "requested"] == pytest.approx(10 * share_f)
    # balanced cells are requested exactly, even a combination never seen in training
    syn.combinations = combos[~((combos["label"] == 1) & (combos["sex"] == 0))]
    cells = [{"label": a, "sex": b} for a in (0, 1) for b in ("F", "M")]
    dist = condition_distribution(syn, 9, where=None, cells=cells, table=None)
    assert dist["requested"].tolist() == [5.0, 4.0, 5.0, 4.0]  # label 0, 1; sex F, M


def test_replacements_exact_n_and_counted(gated: Path) -> None:
    df = pd.read_csv(gated / "manifest.csv")
    assert len(df) == 48 and df["image_id"].is_unique
    rejected = pd.read_csv(gated / "rejected.csv")
    n_rejected = int(df["draw"].sum())
    assert n_rejected > 0 and len(rejected) == n_rejected and rejected["near_copy"].all()
    # each replaced item's rejected draws are 0..draw-1
    for item, draw in df.loc[df["draw"] > 0, ["item", "draw"]].itertuples(index=False):
        assert sorted(rejected.loc[rejected["item"] == item, "draw"]) == list(range(draw))
    card = json.loads((gated / "dataset_card.json").read_text())
    assert card["generation"]["n_rejected"] == n_rejected
    assert card["memorisation_gate"]["quantile"] == 0.1
    assert f"{n_rejected} draws rejected" in (gated / "dataset_card.md").read_text()


def test_two_local_dask_workers_give_the_same_bytes(
    run_dir: Path, rejecting_reference: Path, gated: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "dask"
    generate(run_dir, 48, out, **_gated(rejecting_reference), workers=2, progress=False)
    _same(gated, out)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["executor"]["kind"] == "dask-local" and prov["executor"]["workers"] == 2
    assert prov["executor"]["torch_threads"] == 1


@pytest.mark.slow
def test_one_local_dask_worker_gives_the_same_bytes(
    run_dir: Path, rejecting_reference: Path, gated: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "dask1"
    generate(run_dir, 48, out, **_gated(rejecting_reference), workers=1, progress=False)
    _same(gated, out)


def test_ldm_bytes_do_not_depend_on_the_callers_threads(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """The tiny LDM's outputs differ in the last bits between 1 and 2 torch threads; every
    shard runs with one (in-process too), so the caller's setting does not matter."""
    import torch

    syn = Synthesizer("ldm", ("label", "sex"), autoencoder_steps=30, unet_channels=(8, 16),
                      num_train_timesteps=100, num_inference_steps=5, **TINY)  # fmt: skip
    syn.fit(tiny_manifest, run_dir=tmp_path / "ldm", config={**CONFIG, "epochs": 4}, progress=False)
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}"
            generate(tmp_path / "ldm", 8, out, balance="label", shard_size=4, progress=False)
            assert torch.get_num_threads() == threads  # restored
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    _same(*outs)
    gen = json.loads((outs[0] / "generate.json").read_text())["arguments"]
    assert gen["guidance_scale"] == 2.0 and gen["num_inference_steps"] == 5


def test_killed_runs_resume_to_the_same_bytes(
    run_dir: Path, rejecting_reference: Path, gated: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SIGKILL at random points (after a random number of files appeared under shards/), three
    times, in a subprocess; then a resume gives exactly the files of the uninterrupted run."""
    out = tmp_path / "killed"
    kwargs = {**_gated(rejecting_reference), "progress": False}
    total = sum(1 for _ in (gated / "shards").rglob("*"))
    # children fork from a fresh server (no torch threads started), one torch thread each
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "monai", "medgen.batch._generate", "medgen.batch._shard",
                                "medgen.generative.synthesis", "medgen.io"])  # fmt: skip
    rng = random.Random(15)
    interrupted = 0
    for _ in range(3):
        target = rng.randint(1, total - 1)
        child = ctx.Process(target=generate, args=(run_dir, 48, out), kwargs=kwargs)
        child.start()
        deadline = time.monotonic() + 120
        while child.is_alive() and time.monotonic() < deadline:
            if (out / "shards").is_dir() and sum(1 for _ in (out / "shards").rglob("*")) >= target:
                break
            time.sleep(0.002)
        child.kill()
        child.join()
        assert child.exitcode == -9 or child.exitcode == 0
        parts = len(list((out / "shards").glob("shard-*[0-9].csv")))
        interrupted += not (out / "run_complete.json").exists() and 0 < parts < 6
    assert interrupted >= 1
    generate(run_dir, 48, out, **kwargs)
    _same(gated, out)
    assert check_dataset(out).ok


def test_disk_full_keeps_finished_shards_and_resumes(
    run_dir: Path, rejecting_reference: Path, gated: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import medgen.batch._shard as shard

    real = shard._save_item
    calls = {"n": 0}

    def full_disk(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 20:  # after two shards and a half
            raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))
        real(*args, **kwargs)

    monkeypatch.setattr(shard, "_save_item", full_disk)
    out = tmp_path / "full"
    with pytest.raises(MedgenRuntimeError, match=r"No space left on device.*the 2 finished shards of 6 are kept.*rerun the same command"):  # fmt: skip
        generate(run_dir, 48, out, **_gated(rejecting_reference), progress=False)
    kept = {p.name: p.read_bytes() for p in (out / "shards").glob("shard-*[0-9].csv")}
    assert sorted(kept) == ["shard-00000.csv", "shard-00001.csv"]
    monkeypatch.setattr(shard, "_save_item", real)
    generate(run_dir, 48, out, **_gated(rejecting_reference), progress=False)
    _same(gated, out)


def test_check_finds_a_deleted_and_a_corrupted_file(gated: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    out = tmp_path / "copy"
    shutil.copytree(gated, out)
    df = pd.read_csv(out / "manifest.csv")
    (out / df["image_path"][3]).unlink()
    corrupt = out / df["image_path"][17]
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    report = check_dataset(out)
    assert not report.ok and report.n_rows == 48
    problems = dict(zip(report.problems["image_id"], report.problems["problem"], strict=True))
    assert problems[df["image_id"][3]] == "file missing"
    assert problems[df["image_id"][17]].startswith("sha256 differs from the manifest")
    assert len(problems) == 2
    res = CliRunner().invoke(_app(), ["synth", "generate", "--check", str(out)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "2 problem(s)" in lines[0] and df["image_id"][3] in lines[0]
    # repair: drop the two shards' parts and rerun the same command
    for k in (0, 2):
        (out / "shards" / f"shard-0000{k}.csv").unlink()
    generate(_run_of(gated), 48, out, **_gated_of(gated), progress=False)
    assert check_dataset(out).ok
    _same(gated, out)


def _run_of(out: Path) -> Path:
    return Path(json.loads((out / "generate.json").read_text())["paths"]["run"])


def _gated_of(out: Path) -> dict[str, Any]:
    ref = Path(json.loads((out / "generate.json").read_text())["paths"]["reference"])
    return _gated(ref)


def test_dicom_marking_and_unique_uids(run_dir: Path, tmp_path: Path) -> None:
    from medgen.io import load

    out = tmp_path / "dicom"
    df = pd.read_csv(generate(run_dir, 6, out, format="dicom", shard_size=4, progress=False))
    uids: dict[str, list[str]] = {
        "StudyInstanceUID": [],
        "SeriesInstanceUID": [],
        "SOPInstanceUID": [],
    }
    for row in df.itertuples(index=False):
        files = sorted((out / row.image_path).iterdir())
        assert len(files) == 1
        ds = pydicom.dcmread(files[0])
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert str(ds.PatientName) == ds.PatientID == f"SYNTHETIC^{row.item:06d}"
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientBirthDate == ""
        assert f"item {row.item}" in ds.DerivationDescription
        for k, v in uids.items():
            v.append(str(getattr(ds, k)))
        img = load(out / row.image_path)
        assert img.meta["synthetic"] is True and tuple(img.shape) == (1, 32, 32, 1)
    all_uids = [u for v in uids.values() for u in v]
    assert len(set(all_uids)) == len(all_uids) == 18
    assert check_dataset(out).ok


def test_manifest_mixes_with_real_rows_in_classify_train(
    run_dir: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    from medgen.classify import train
    from medgen.cohort import Cohort

    syn_manifest = generate(run_dir, 16, tmp_path / "syn", **SMALL, split="train", progress=False)
    synthetic = Cohort.from_manifest(syn_manifest).df
    real = Cohort.from_manifest(tiny_manifest).df
    mixed = pd.concat([real, synthetic], ignore_index=True)
    cohort = Cohort.from_manifest(mixed)
    assert (cohort.df["source"] == "synthetic").sum() == 16
    clf = train(
        cohort,
        model="densenet",
        model_kwargs={"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
        epochs=1,
        batch_size=16,
        augment="none",
        patience=None,
        calibrate=False,
        device="cpu",
        distributed=False,
        progress=False,
        seed=0,
    )
    seen = set(clf.seen_image_ids[0])  # the images of the first (only) epoch
    assert set(synthetic["image_id"]) <= seen and seen - set(synthetic["image_id"])
    assert clf.metrics["n_train"] == len(seen)


# ------------------------------------------------------------------------------- bad input
def test_n_must_be_positive(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MedgenValueError, match=r"n \(the number of images\) must be a positive integer, not 0"):  # fmt: skip
        generate(run_dir, 0, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unseen_condition_values(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MedgenValueError, match=r"condition sex='X' was not seen in training; known values of 'sex': \['F', 'M'\]"):  # fmt: skip
        generate(run_dir, 4, tmp_path / "o", where={"sex": "X"})
    with pytest.raises(MedgenValueError, match=r"\['site'\] are not conditions of this model"):
        generate(run_dir, 4, tmp_path / "o", balance=("label", "site"))
    with pytest.raises(MedgenValueError, match=r"condition label='7' was not seen in training"):
        generate(run_dir, None, tmp_path / "o", conditions=pd.DataFrame({"label": ["7"]}))
    with pytest.raises(ConfigError, match="fixed by where and balanced by balance"):
        generate(run_dir, 4, tmp_path / "o", where={"label": 1}, balance="label")
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder(run_dir: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        try:
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:  # root (with CAP_DAC_OVERRIDE) writes anywhere; the disk-full test still runs
            (ro / "probe").unlink()
            pytest.skip("this user can write into a read-only folder")
        with pytest.raises(OutputPathError, match=r"cannot be written .* fix its permissions"):
            generate(run_dir, 4, ro, progress=False)
        with pytest.raises(OutputPathError, match="cannot be written"):
            generate(run_dir, 4, ro / "sub", progress=False)
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


def test_unreachable_scheduler_fails_fast(run_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    t0 = time.monotonic()
    with pytest.raises(MedgenRuntimeError, match=r"scheduler='tcp://127.0.0.1:9': no Dask scheduler answered within 1 s .*dask scheduler"):  # fmt: skip
        generate(run_dir, 4, tmp_path / "o", scheduler="tcp://127.0.0.1:9", scheduler_timeout=1.0, progress=False)  # fmt: skip
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="workers and scheduler are alternatives"):
        generate(run_dir, 4, tmp_path / "o", workers=2, scheduler="tcp://127.0.0.1:9")


def test_without_dask_workers_say_how_to_install(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'medgen\[dask\]'"):
        generate(run_dir, 4, tmp_path / "o", workers=2, progress=False)
    assert not (tmp_path / "o").exists()


def test_not_a_synthesizer_run(tmp_path: Path) -> None:
    from medgen.generative import Denoiser

    run = Denoiser(channels=(4, 8)).save(tmp_path / "denoise")
    with pytest.raises(ConfigError, match=r"holds a 'denoise' model, not a 'synthesizer' model"):
        generate(run, 4, tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedgenFileNotFoundError, match="not a trained synthesizer run"):
        generate(tmp_path / "empty", 4, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_other_arguments_into_a_finished_folder_are_refused(gated: Path) -> None:
    run, kw = _run_of(gated), _gated_of(gated)
    before = _files(gated)
    with pytest.raises(RunFolderError, match=r"holds a generation with other arguments \(n: 48 in the folder, 50 now; seed: 0 in the folder, 1 now\)"):  # fmt: skip
        generate(run, 50, gated, **{**kw, "seed": 1}, progress=False)
    with pytest.raises(RunFolderError, match=r"format: 'nifti' in the folder, 'dicom' now"):
        generate(run, 48, gated, **{**kw, "format": "dicom"}, progress=False)
    assert _files(gated) == before


def test_foreign_files_and_inputs_are_refused(run_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not part of a medgen run"):
        generate(run_dir, 4, mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # no lock file made there
    with pytest.raises(OutputPathError, match="lies inside the input"):
        generate(run_dir, 4, run_dir / "synthetic", progress=False)


# ------------------------------------------------------------------------------- the CLI
def _app() -> Any:
    import typer

    from medgen._internal.cli import MedgenGroup
    from medgen.generative._synth_cli import register

    app = typer.Typer(cls=MedgenGroup, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return app


def test_cli_generate_and_check(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner, app, out = CliRunner(), _app(), tmp_path / "out"
    args = ["synth", "generate", str(run_dir), "-n", "5", "-o", str(out), "--where", "label=1",
            "--shard-size", "2", "--no-progress"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "5 images ->" in res.output and "0 near-copies of training images rejected" in res.output
    df = pd.read_csv(out / "manifest.csv")
    assert df["label"].tolist() == [1] * 5
    res = runner.invoke(app, ["synth", "generate", "--check", str(out)])
    assert res.exit_code == 0 and "5 images, ids unique" in res.output
    res = runner.invoke(app, [*args[:4], "0", *args[5:]])
    assert (
        res.exit_code == 2 and "Error: -n must be a positive number of images, not 0." in res.output
    )
    res = runner.invoke(app, [*args[:4], "6", *args[5:]])
    assert res.exit_code == 2 and "n: 5 in the folder, 6 now" in res.output
    res = runner.invoke(app, ["synth", "generate", "--check", str(out), "-n", "3"])
    assert res.exit_code == 2 and "takes no other arguments; drop -n" in res.output
    res = runner.invoke(app, ["synth", "generate", str(run_dir), "-n", "2", "-o", str(tmp_path / "w"), "--workers", "2", "--scheduler", "tcp://x:1"])  # fmt: skip
    assert res.exit_code == 2 and "alternatives" in res.output
