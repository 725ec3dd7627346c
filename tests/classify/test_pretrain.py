"""Self-supervised pretraining (MAE for the ViT, SimCLR for CNNs) and fine-tuning with init=."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from medgen._internal.runs import COMPLETE, LOCK, run_state
from medgen.classify import Classifier, load_pretrained, pretrain, train
from medgen.classify._pretrain import nt_xent, patchify
from medgen.cli import app
from medgen.errors import ConfigError, RunFolderError

#: a tiny registry ViT (32x32 inputs of the tiny preset: 16 patches of 8x8)
VIT = {"patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2}
#: a tiny registry DenseNet
CNN = {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)}
FIT = {"batch_size": 16, "patience": None, "augment": "none", "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def mae_run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-epoch MAE run of the tiny ViT (read-only for the tests)."""
    out = tmp_path_factory.mktemp("mae") / "run"
    pretrain(
        tiny_manifest,
        method="mae",
        model="vit",
        model_kwargs=VIT,
        epochs=8,
        batch_size=16,
        seed=0,
        out_dir=out,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def contrastive_run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-epoch SimCLR run of the tiny DenseNet (read-only for the tests)."""
    out = tmp_path_factory.mktemp("simclr") / "run"
    pretrain(
        tiny_manifest,
        method="contrastive",
        model="densenet",
        model_kwargs=CNN,
        epochs=20,
        batch_size=16,
        lr=3e-3,
        seed=0,
        out_dir=out,
        progress=False,
    )
    return out


# -- the objectives ---------------------------------------------------------------------------


def test_mae_loss_decreases_and_encoder_matches_the_registry_vit(
    mae_run: Path, tiny_manifest: Path
) -> None:
    hist = pd.read_csv(mae_run / "metrics.csv")
    assert len(hist) == 8
    first, last = hist["train_loss"].iloc[0], hist["train_loss"].iloc[-1]
    assert last < 0.9 * first, hist["train_loss"].tolist()
    meta = json.loads((mae_run / "config.json").read_text())
    assert meta["kind"] == "medgen.pretrain" and meta["architecture"] == "vit"
    assert meta["input_size"] == [1, 32, 32]
    assert meta["config"]["masking_ratio"] == 0.75
    # the encoder has the registry ViT's geometry (mlp_dim: the registry's 4 x hidden)
    enc = meta["encoder"]
    assert (enc["patch_size"], enc["hidden_size"], enc["num_layers"], enc["num_heads"]) == (
        [8, 8],
        32,
        2,
        2,
    )
    assert enc["mlp_dim"] == 128
    # labels ignored, and only the train split seen
    df = pd.read_csv(tiny_manifest)
    assert meta["metrics"]["n_images"] == int((df["split"] == "train").sum())
    assert meta["config"]["split"] == ["train"]


def test_patchify_follows_the_patch_embedding_token_order() -> None:
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    p = patchify(x, (2, 3))
    assert p.shape == (2, 4, 6)
    # token 1 is grid cell (0, 1): rows 0-1, columns 3-5
    assert torch.equal(p[0, 1], x[0, 0, 0:2, 3:6].reshape(-1))
    # token 2 is grid cell (1, 0): rows 2-3, columns 0-2
    assert torch.equal(p[1, 2], x[1, 0, 2:4, 0:3].reshape(-1))


@pytest.mark.parametrize(("size", "patch"), [((8, 12), (2, 3)), ((4, 6, 8), (2, 3, 2))])
def test_patchify_matches_monai_patch_embedding(
    size: tuple[int, ...], patch: tuple[int, ...]
) -> None:
    """The loss's targets line up with MONAI's tokens (2D and 3D): an embedding whose only
    weight picks each patch's first voxel returns patchify's first column."""
    from monai.networks.blocks import PatchEmbeddingBlock

    pe = PatchEmbeddingBlock(
        in_channels=1,
        img_size=size,
        patch_size=patch,
        hidden_size=4,
        num_heads=1,
        proj_type="conv",
        pos_embed_type="none",
        spatial_dims=len(size),
    )
    with torch.no_grad():
        pe.patch_embeddings.weight.zero_()
        pe.patch_embeddings.bias.zero_()
        pe.patch_embeddings.weight[(0, 0) + (0,) * len(size)] = 1.0
    x = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = pe(x)[..., 0]
    assert torch.allclose(tokens, patchify(x, patch)[..., 0])


def test_nt_xent_is_low_for_matching_views_and_high_for_swapped_ones() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    aligned = float(nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g), 0.1))
    shuffled = float(nt_xent(z, z.roll(1, dims=0), 0.1))
    assert aligned < 0.1 < np.log(15) < shuffled


def test_contrastive_loss_decreases_and_the_projection_head_is_dropped(
    contrastive_run: Path,
) -> None:
    loss = pd.read_csv(contrastive_run / "metrics.csv")["train_loss"].to_numpy()
    assert len(loss) == 20
    assert loss[-3:].mean() < loss[:3].mean() - 0.1, loss.round(3).tolist()
    run = load_pretrained(contrastive_run)
    assert run.head == "class_layers.out"
    assert not any(k.startswith("class_layers.out") for k in run.state_dict)
    assert not any("projection" in k for k in run.state_dict)
    assert "features.conv0.weight" in run.state_dict


def test_mae_needs_a_vit(tiny_manifest: Path) -> None:
    with pytest.raises(ConfigError, match="method='contrastive' for a CNN"):
        pretrain(tiny_manifest, method="mae", model="densenet", epochs=1, progress=False)
    with pytest.raises(ConfigError, match="method='contrastive' for vit_hybrid"):
        pretrain(tiny_manifest, method="mae", model="vit_hybrid", epochs=1, progress=False)
    with pytest.raises(ConfigError, match="method must be one of mae, contrastive"):
        pretrain(tiny_manifest, method="byol", progress=False)


# -- init= -----------------------------------------------------------------------------------


def test_init_loads_the_mae_encoder_and_a_fresh_head(tiny_manifest: Path, mae_run: Path) -> None:
    run = load_pretrained(mae_run)
    # lr=0: the weights after one epoch are the initial ones
    common = {**FIT, "model": "vit", "model_kwargs": VIT, "epochs": 1, "lr": 0.0}
    clf = train(tiny_manifest, **common, init=mae_run, calibrate=False)
    fresh = train(tiny_manifest, **common, calibrate=False)
    got, scratch = clf.net.state_dict(), fresh.net.state_dict()
    for key in ("net.blocks.0.attn.qkv.weight", "net.patch_embedding.patch_embeddings.weight"):
        assert torch.equal(got[key], run.state_dict[key])
        assert not torch.equal(got[key], scratch[key])
    # the MAE encoder's final norm and class token moved onto the ViT's
    assert torch.equal(got["net.norm.weight"], run.state_dict["net.norm.weight"])
    assert not torch.equal(got["net.norm.weight"], torch.ones(32))
    # the head is not pretrained: it is the seeded fresh one
    assert torch.equal(
        got["net.classification_head.weight"], scratch["net.classification_head.weight"]
    )
    assert clf.config["init"] == str(mae_run)
    marker = json.loads((mae_run / COMPLETE).read_text())
    assert clf.provenance["init"]["weights_sha256"] == marker["files"]["model.safetensors"]


def test_init_from_contrastive_then_training_proceeds(
    tiny_manifest: Path, contrastive_run: Path, tmp_path: Path
) -> None:
    run = load_pretrained(contrastive_run)
    key = "features.conv0.weight"
    common = {**FIT, "model": "densenet", "model_kwargs": CNN}
    start = train(tiny_manifest, **common, epochs=1, lr=0.0, init=contrastive_run, calibrate=False)
    assert torch.equal(start.net.state_dict()[key], run.state_dict[key])
    clf = train(tiny_manifest, **common, epochs=2, init=contrastive_run, out_dir=tmp_path / "ft")
    assert not torch.equal(clf.net.state_dict()[key], run.state_dict[key])
    assert np.isfinite(clf.history["train_loss"]).all() and len(clf.history) == 2
    again = Classifier.load(tmp_path / "ft")
    assert again.config["init"] == str(contrastive_run)


def test_init_of_another_architecture_or_size_names_both(
    tiny_manifest: Path, mae_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clf"
    with pytest.raises(ConfigError) as err:
        train(tiny_manifest, **FIT, model="densenet", epochs=1, init=mae_run, out_dir=out)
    msg = str(err.value)
    assert "pretrained as architecture 'vit', input size 32x32" in msg
    assert "requested model is architecture 'densenet', input size 32x32" in msg
    assert run_state(out) == "empty"  # refused before any run file was written
    with pytest.raises(ConfigError) as err:
        train(
            tiny_manifest, **FIT, model="vit", model_kwargs=VIT, image_size=(16, 16), init=mae_run
        )
    assert "input size 32x32" in str(err.value) and "input size 16x16" in str(err.value)
    with pytest.raises(RunFolderError, match="not a classifier"):
        Classifier.load(mae_run)
    with pytest.raises(FileNotFoundError, match="is not a pretraining run"):
        train(tiny_manifest, **FIT, model="vit", model_kwargs=VIT, init=tmp_path / "nothing")


# -- run folders and the CLI -----------------------------------------------------------------


def test_a_folder_with_foreign_files_or_a_finished_run_is_refused(
    tiny_manifest: Path, tmp_path: Path, mae_run: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="not part of a medgen run"):
        pretrain(tiny_manifest, method="mae", model_kwargs=VIT, epochs=1, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    before = (mae_run / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        pretrain(tiny_manifest, method="mae", model_kwargs=VIT, epochs=1, out_dir=mae_run)
    assert (mae_run / "model.safetensors").read_bytes() == before
    assert (mae_run / COMPLETE).is_file() and (mae_run / LOCK).is_file()


def test_cli_pretrain_writes_a_loadable_run_that_train_init_uses(
    tiny_manifest: Path, tmp_path: Path, mae_run: Path
) -> None:
    runner = CliRunner()
    run = tmp_path / "simclr"
    args = ["--method", "contrastive", "--model", "densenet", "--epochs", "1"]
    r = runner.invoke(app, ["pretrain", str(tiny_manifest), "-o", str(run), *args, "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "contrastive on 56 images" in r.output
    loaded = load_pretrained(run)
    assert loaded.config["method"] == "contrastive" and loaded.config["split"] == ["train"]
    net = loaded.encoder(num_classes=3)
    key = "features.conv0.weight"
    assert torch.equal(net.state_dict()[key], loaded.state_dict[key])
    clf_dir = tmp_path / "clf"
    train_args = ["--model", "densenet", "--epochs", "1", "--batch-size", "16", "--no-progress"]
    r = runner.invoke(
        app, ["train", str(tiny_manifest), "-o", str(clf_dir), *train_args, "--init", str(run)]
    )
    assert r.exit_code == 0, r.output
    assert Classifier.load(clf_dir).config["init"] == str(run)
    r = runner.invoke(
        app,
        [
            "train",
            str(tiny_manifest),
            "-o",
            str(tmp_path / "bad"),
            *train_args,
            "--init",
            str(mae_run),
        ],
    )
    assert r.exit_code == 2
    assert "architecture 'vit'" in r.output and "architecture 'densenet'" in r.output
    assert "Traceback" not in r.output
