"""Streaming cohorts larger than memory: ``train(cache=None | "disk")`` and streamed prediction
give what the in-memory tensor path gives, on the simulator's tiny preset (80 32x32 slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.classify import Classifier, train
from medgen.classify._data import StreamImages, load_images
from medgen.cohort import Cohort
from medgen.errors import ConfigError, MedgenValueError

TINY_NET = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
}
#: two short epochs, augmented (so the augmentation stream is compared too), calibrated
RUN = {
    **TINY_NET,
    "epochs": 2,
    "steps_per_epoch": 4,
    "batch_size": 8,
    "lr": 1e-2,
    "augment": "light",
    "patience": None,
    "seed": 5,
    "progress": False,
}


def _cache_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir() if p.is_file()
    }


@pytest.fixture(scope="module")
def in_memory(tiny_manifest: Path) -> Classifier:
    return train(tiny_manifest, **RUN)


@pytest.fixture(scope="module")
def disk_run(
    tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Classifier, Path]:
    cache = tmp_path_factory.mktemp("cache") / "disk"  # missing: train creates it
    return train(tiny_manifest, **RUN, cache="disk", cache_dir=cache), cache


def _assert_same_model(a: Classifier, b: Classifier) -> None:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=1e-6, msg=name)
    assert a.seen_image_ids == b.seen_image_ids
    assert b.temperature == pytest.approx(a.temperature, abs=1e-6)
    pd.testing.assert_frame_equal(
        a.history.drop(columns="seconds"), b.history.drop(columns="seconds"), atol=1e-6
    )


def test_stream_without_cache_trains_the_same_model(
    in_memory: Classifier, tiny_manifest: Path
) -> None:
    _assert_same_model(in_memory, train(tiny_manifest, **RUN, cache=None))


def test_stream_from_disk_cache_trains_the_same_model(
    in_memory: Classifier, disk_run: tuple[Classifier, Path]
) -> None:
    _assert_same_model(in_memory, disk_run[0])


def test_loader_workers_do_not_change_the_model(
    in_memory: Classifier, disk_run: tuple[Classifier, Path], tiny_manifest: Path
) -> None:
    _assert_same_model(
        in_memory, train(tiny_manifest, **RUN, cache="disk", cache_dir=disk_run[1], num_workers=1)
    )


def test_a_different_seed_gives_a_different_model(
    in_memory: Classifier, tiny_manifest: Path
) -> None:  # the equality above is not vacuous
    other = train(tiny_manifest, **{**RUN, "seed": 6}, cache=None)
    a, b = in_memory.net.state_dict(), other.net.state_dict()
    assert any(not torch.allclose(a[k].float(), b[k].float()) for k in a)


def test_disk_cache_holds_every_image_once_and_a_second_run_only_reads_it(
    disk_run: tuple[Classifier, Path], tiny_manifest: Path
) -> None:
    clf, cache = disk_run
    before = _cache_files(cache)
    n_train, n_val = clf.metrics["n_train"], clf.metrics["n_val"]
    seen = {i for ep in clf.seen_image_ids for i in ep}
    # validation reads all of val; training visited ``seen``; nothing else is cached
    assert len(before) == len(seen) + n_val
    assert len(seen) < n_train  # steps_per_epoch capped the epochs
    again = train(tiny_manifest, **RUN, cache="disk", cache_dir=cache)
    assert _cache_files(cache) == before  # same entries, none rewritten
    _assert_same_model(clf, again)


def test_disk_cache_entries_are_the_preprocessed_images(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    co = Cohort.from_manifest(tiny_manifest)
    ids = co.df["image_id"].astype(str).tolist()[:6][::-1]  # not manifest order
    ref = load_images(co, ids, image_size=(16, 16), spatial_dims=2)
    assert ref.shape == (6, 1, 16, 16)
    cache = tmp_path / "c"
    for _ in range(2):  # cold, then warm
        src = StreamImages(
            co, ids, image_size=(16, 16), spatial_dims=2, cache="disk", cache_dir=cache
        )
        got = torch.cat(list(src.sequential(4)))
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # another size is another entry, not a stale hit
    src32 = StreamImages(co, ids, image_size=None, spatial_dims=2, cache="disk", cache_dir=cache)
    assert src32.shape == (1, 32, 32)
    assert len(_cache_files(cache)) == 7  # only the first image is read up front
    assert torch.cat(list(src32.sequential(4))).shape == (6, 1, 32, 32)
    assert len(_cache_files(cache)) == 12


@pytest.mark.parametrize(("cache", "workers"), [(None, 0), ("disk", 0), (None, 1)])
def test_streamed_predictions_equal_in_memory_ones(
    in_memory: Classifier, tiny_manifest: Path, tmp_path: Path, cache: str | None, workers: int
) -> None:
    ref = in_memory.predict(tiny_manifest, cache="memory", batch_size=16, progress=False)
    got = in_memory.predict(
        tiny_manifest,
        cache=cache,
        cache_dir=tmp_path / "c" if cache == "disk" else None,
        num_workers=workers,
        batch_size=16,
        progress=False,
    )
    pd.testing.assert_frame_equal(got, ref, rtol=0, atol=1e-7)
    assert len(got) == len(pd.read_csv(tiny_manifest))


def test_streamed_training_refuses_mixed_sizes(tiny_manifest: Path, tmp_path: Path) -> None:
    import nibabel as nib

    df = pd.read_csv(tiny_manifest)
    train_rows = df.index[df["split"] == "train"]
    df["image_path"] = df["image_path"].map(lambda p: str(tiny_manifest.parent / p))
    img = nib.load(df.loc[train_rows[3], "image_path"])
    big = np.kron(np.asarray(img.dataobj), np.ones((2, 2)))
    nib.save(nib.Nifti1Image(big.astype(np.float32), img.affine), tmp_path / "big.nii.gz")
    df.loc[train_rows[3], "image_path"] = str(tmp_path / "big.nii.gz")
    co = Cohort.from_manifest(df, root=tiny_manifest.parent)
    with pytest.raises(MedgenValueError, match=r"different sizes.*\(1, 64, 64\).*image_size"):
        train(co, **{**RUN, "steps_per_epoch": None, "epochs": 1}, cache=None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cache": "disk"}, r"cache='disk' needs cache_dir=.*--cache-dir"),
        ({"cache": "ram"}, r"cache must be 'memory'.*not 'ram'"),
        ({"cache": None, "cache_dir": "somewhere"}, r"cache_dir='somewhere' is only used with"),
        ({"cache": None, "num_workers": -1}, r"num_workers must be an integer >= 0.*not -1"),
    ],
)
def test_bad_cache_options_name_the_argument(tiny_manifest: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        train(tiny_manifest, **RUN, **kwargs)


def test_cache_dir_that_is_a_file_is_named(tiny_manifest: Path, tmp_path: Path) -> None:
    file = tmp_path / "cache.bin"
    file.write_bytes(b"not a folder")
    with pytest.raises(ConfigError, match=rf"cache_dir '{file}' is a file, not a folder"):
        train(tiny_manifest, **RUN, cache="disk", cache_dir=file)
    with pytest.raises(ConfigError, match=r"is a file, not a folder"):
        StreamImages(
            Cohort.from_manifest(tiny_manifest),
            ["x"],
            image_size=None,
            spatial_dims=2,
            cache="disk",
            cache_dir=file,
        )
    assert file.read_bytes() == b"not a folder"


def test_cache_dir_inside_the_run_folder_is_refused(tiny_manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"lies inside the run folder"):
        train(tiny_manifest, **RUN, cache="disk", cache_dir=run / "cache", out_dir=run)
    assert not (run / "cache").exists()


def test_cli_train_streams_from_disk_cache(tiny_manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    cache = tmp_path / "cache"
    args = ["train", str(tiny_manifest), "-o", str(tmp_path / "run"), "--model", "densenet"]
    args += ["--epochs", "1", "--batch-size", "16", "--no-progress", "--augment", "none"]
    res = CliRunner().invoke(app, [*args, "--cache", "disk", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    assert len(_cache_files(cache)) == len(pd.read_csv(tiny_manifest).query("split != 'test'"))
    bad = CliRunner().invoke(app, [*args, "--cache", "ssd"])
    assert bad.exit_code != 0
    assert "--cache must be memory" in bad.output and "Traceback" not in bad.output


DDP_SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from medgen.classify import train
mode = sys.argv[3]
clf = train(sys.argv[1], model="densenet",
            model_kwargs={"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
            epochs=2, steps_per_epoch=3, batch_size=4, augment="light", patience=None,
            calibrate=False, seed=0, progress=False, cache=mode,
            cache_dir=sys.argv[4] if mode == "disk" else None)
rank = int(os.environ["RANK"])
state = {k: v.double().sum().item() for k, v in clf.net.state_dict().items()}
with open(os.path.join(sys.argv[2], f"{sys.argv[3]}{rank}.json"), "w") as fh:
    json.dump({"world": clf.config["world_size"], "seen": clf.seen_image_ids, "state": state}, fh)
"""


@pytest.mark.slow
def test_ddp_streams_each_rank_its_shard_with_the_in_memory_result(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_stream.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    got = {}
    for mode in ("memory", "disk"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", "2", str(script), str(tiny_manifest), str(tmp_path), mode]
        cmd += [str(tmp_path / "cache")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[mode] = [json.loads((tmp_path / f"{mode}{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):
        mem, disk = got["memory"][r], got["disk"][r]
        assert disk["world"] == 2
        assert disk["seen"] == mem["seen"]
        assert disk["state"] == pytest.approx(mem["state"], rel=1e-9, abs=1e-9)
    assert not set(got["disk"][0]["seen"][0]) & set(got["disk"][1]["seen"][0])  # sharded
    params = [k for k in got["disk"][0]["state"] if "running_" not in k and "num_batches" not in k]
    for k in params:  # replicas stay in sync (BatchNorm running stats are per rank)
        assert got["disk"][0]["state"][k] == pytest.approx(got["disk"][1]["state"][k], rel=1e-9)
    assert any((tmp_path / "cache").iterdir())
