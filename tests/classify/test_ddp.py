"""DDP: the same ``train`` call under torchrun, 2 CPU processes on the gloo backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from medgen.classify import train
clf = train(sys.argv[1], model="densenet",
            model_kwargs={"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
            epochs=2, batch_size=4, augment="light", patience=None, calibrate=False,
            seed=0, progress=False)
rank = int(os.environ["RANK"])
checksum = float(sum(p.double().sum() for p in clf.net.parameters()))
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as fh:
    json.dump({"world": clf.config["world_size"], "seen": clf.seen_image_ids, "checksum": checksum}, fh)
"""


@pytest.fixture(scope="module")
def even_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medgen.simulate import preset, simulate

    path = simulate(preset("tiny"), tmp_path_factory.mktemp("tiny_ddp"), seed=1, progress=False)
    df = pd.read_csv(path)
    n_train = int((df["split"] == "train").sum())
    if n_train % 2:  # an even training split, so no rank pads with a repeated sample
        drop = df.index[df["split"] == "train"][0]
        df = df.drop(index=drop)
        df.to_csv(path, index=False)
    return path


def test_two_process_ddp_sees_each_sample_once_per_epoch(
    even_manifest: Path, tmp_path: Path
) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(even_manifest),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    df = pd.read_csv(even_manifest)
    train_ids = set(df.loc[df["split"] == "train", "image_id"].astype(str))
    assert len(r0["seen"]) == len(r1["seen"]) == 2
    for e0, e1 in zip(r0["seen"], r1["seen"], strict=True):
        assert len(e0) == len(e1) == len(train_ids) // 2
        assert not set(e0) & set(e1)
        assert set(e0) | set(e1) == train_ids
    assert r0["seen"][0] != r0["seen"][1]  # reshuffled every epoch
    assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-9)  # replicas stay in sync
