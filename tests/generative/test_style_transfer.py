"""The learned, reference-conditioned style transfer (medgen.generative.style, issue 14) on a
three-site variant of the tiny preset with site counterfactuals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import StyleTransfer, load
from medgen.generative.style import evaluate_style_transfer
from medgen.generative.translation import _scaled, foreground_mask, transfer_style

TINY: dict[str, Any] = {
    "channels": (4, 8),
    "style_channels": (4, 8),
    "n_quantiles": 8,
    "style_hidden": 8,
    "patch_size": 32,
    "lr_g": 1e-2,
    "gain_init": 0.1,
}
ENGINE: dict[str, Any] = {
    "epochs": 2,
    "steps_per_epoch": 30,
    "batch_size": 4,
    "ema_decay": None,
    "device": "cpu",
}
SITES = ["site_A", "site_B", "site_C"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset (32x32) with a third site (T2, another scale), 30 subjects (seed 1), every
    subject rendered at the other two sites."""
    from medgen.simulate import preset, simulate

    cfg = preset("tiny")
    cfg.population.n_subjects = 30
    c = copy.deepcopy(cfg.sites[0])
    c.name, c.contrast, c.manufacturer = "site_C", "t2", "MockMed"
    c.intensity_scale, c.blur_fwhm_mm, c.noise_sigma = 1.0, 1.5, 0.03
    cfg.sites[0].proportion, cfg.sites[1].proportion, c.proportion = 0.4, 0.3, 0.3
    cfg.sites.append(c)
    out = tmp_path_factory.mktemp("style_cf")
    return Path(simulate(cfg.validate(), out, seed=1, progress=False, counterfactual=("site",)))


@pytest.fixture(scope="module")
def cohort(manifest: Path) -> Any:
    from medgen.cohort import Cohort

    return Cohort.from_manifest(manifest)


@pytest.fixture(scope="module")
def model(cohort: Any) -> StyleTransfer:
    return StyleTransfer(**TINY).fit(cohort, config=ENGINE)


def _image(cohort: Any, site: str, split: str = "test", k: int = 0) -> Any:
    from medgen.io import load as load_image

    df = cohort.df
    rows = df[(df["split"] == split) & df["counterfactual_of"].isna() & (df["site"] == site)]
    return load_image(rows.iloc[k]["image_path"])


def _write(df: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _fixed_batch_l1(model: StyleTransfer, cohort: Any) -> float:
    """The foreground L1 of ``model`` on 32 fixed training triples."""
    import torch

    from medgen.generative.objectives.reference import masked_l1
    from medgen.generative.style import _triple_batch

    pairs, refs, _ = model._triples(cohort, "site", ())
    b = _triple_batch(pairs, refs, 32, 32, np.random.default_rng(123))
    with torch.no_grad():
        pred = model.networks()["generator"](
            b["input"], b["input_mask"], b["reference"], b["reference_mask"]
        )
    return float(masked_l1(pred, b["target"], b["target_mask"], 0.1)[0])


def test_fit_lowers_the_loss_on_training_triples(cohort: Any, model: StyleTransfer) -> None:
    h = model.history
    assert model.steps_trained == 60 and len(h) == 2 and model.fitted
    assert {"loss_g", "l1", "mse"} <= set(h[0])
    untrained = StyleTransfer(**TINY)
    untrained._build(seed=0)  # the weights fit() starts from
    assert _fixed_batch_l1(model, cohort) < 0.98 * _fixed_batch_l1(untrained, cohort)
    assert model.attribute == "site" and model.values == SITES and model.held_out == []
    assert model.data_hash is not None and len(model.data_hash) == 64


def test_apply_keeps_geometry_and_units(cohort: Any, model: StyleTransfer) -> None:
    import torch
    from monai.data import MetaTensor

    img, ref = _image(cohort, "site_A"), _image(cohort, "site_B")
    out = model.apply(img, ref)
    assert isinstance(out, MetaTensor) and out.shape == img.shape and out.dtype == torch.float32
    assert torch.equal(out.affine, img.affine)
    assert out.meta["filename_or_obj"] == img.meta["filename_or_obj"]
    assert out.meta["translation"] == {
        "model": "style-transfer",
        "weights_sha256": model.weights_sha256,
        "attribute": "site",
    }
    plain = model.apply(img.as_tensor()[0], ref.numpy()[0])
    assert type(plain) is torch.Tensor and torch.allclose(plain, out.as_tensor()[0])
    # CT numbers in, CT numbers out (scaled through the image's own robust range)
    rng = np.random.default_rng(0)
    ct = np.full((32, 32), -1024.0, np.float32)
    yy, xx = np.mgrid[:32, :32]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 12**2
    ct[body] = 40 + 20 * rng.standard_normal(int(body.sum()))
    ct[(yy - 16) ** 2 + (xx - 16) ** 2 < 3**2] = 3000.0
    y = model.apply(ct, ref.numpy()[0])
    assert y.dtype == np.float32 and y.shape == ct.shape
    assert y.min() >= -1024 and y.max() <= 3000 and y.max() - y.min() > 0.5 * 4024
    # any reference size; a content size not divisible by the network's down-sampling
    assert model.apply(ct[:30, :27], ref.numpy()[0, :20, :25]).shape == (30, 27)


def test_the_reference_matters(cohort: Any, model: StyleTransfer) -> None:
    x = _image(cohort, "site_A").numpy()[0]
    to_b = model.apply(x, _image(cohort, "site_B").numpy()[0])
    to_c = model.apply(x, _image(cohort, "site_C").numpy()[0])
    np.testing.assert_array_equal(to_b, model.apply(x, _image(cohort, "site_B").numpy()[0]))
    assert float(np.abs(to_b - to_c).max()) > 1e-3 * float(np.ptp(x))
    assert float(np.abs(to_b - x).max()) > 0  # not the identity after training


def test_save_load_round_trip(cohort: Any, model: StyleTransfer, tmp_path: Path) -> None:
    again = load(model.save(tmp_path / "st"))
    assert isinstance(again, StyleTransfer) and again.kind == "style-transfer"
    assert again.weights_sha256 == model.weights_sha256 and again.steps_trained == 60
    assert (again.attribute, again.values, again.data_hash) == (
        "site",
        SITES,
        model.data_hash,
    )
    assert again.config == model.config
    x, r = _image(cohort, "site_B").numpy()[0], _image(cohort, "site_C").numpy()[0]
    np.testing.assert_array_equal(again.apply(x, r), model.apply(x, r))
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["kind"] == "style-transfer" and config["model"]["options"]["channels"] == [4, 8]


def test_run_folder_and_held_out(cohort: Any, model: StyleTransfer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    held = StyleTransfer(**TINY).fit(cohort, config=ENGINE, run_dir=run, held_out=["site_C"])
    assert {"checkpoint.pt", "metrics.csv", "model.safetensors", "run_complete.json"} <= {
        p.name for p in run.iterdir()
    }
    assert held.values == ["site_A", "site_B"] and held.held_out == ["site_C"]
    assert held.data_hash != model.data_hash  # site_C is no reference or target any more
    again = load(run)
    assert isinstance(again, StyleTransfer) and again.held_out == ["site_C"]
    assert again.weights_sha256 == held.weights_sha256


def test_training_reads_only_the_training_split(
    cohort: Any, model: StyleTransfer, tmp_path: Path
) -> None:
    df = cohort.df
    train_a = df[(df["split"] == "train") & (df["site"] == "site_A")]["image_path"].iloc[0]
    changed = df.copy()
    not_train = changed["split"] != "train"  # factual and counterfactual test / val rows
    changed.loc[not_train, "image_path"] = train_a
    same = StyleTransfer(**TINY).fit(_write(changed, tmp_path / "a"), config=ENGINE)
    assert same.data_hash == model.data_hash and same.weights_sha256 == model.weights_sha256
    train = changed.index[(changed["split"] == "train") & (changed["image_path"] != train_a)]
    changed.loc[train[0], "image_path"] = train_a  # a training image: another data set
    other = StyleTransfer(**TINY).fit(_write(changed, tmp_path / "b"), config=ENGINE)
    assert other.data_hash != model.data_hash


def test_bad_inputs(cohort: Any, model: StyleTransfer, tmp_path: Path) -> None:
    df = cohort.df
    with pytest.raises(MedgenValueError, match=r"no 'counterfactual_of' column.*counterfactual="):
        StyleTransfer(**TINY).fit(_write(df.drop(columns="counterfactual_of"), tmp_path / "n"))
    with pytest.raises(MedgenValueError, match=r"attribute='sitee' is not a manifest.*'site'"):
        StyleTransfer(**TINY).fit(cohort, attribute="sitee")
    one = df[df["site"] == "site_A"]
    with pytest.raises(MedgenValueError, match=r"'site' has 1 value\(s\).*at least two"):
        StyleTransfer(**TINY).fit(_write(one, tmp_path / "one"))
    no_cf = df[df["counterfactual_of"].isna() | (df["split"] != "train")]
    with pytest.raises(MedgenValueError, match=r"no training triples"):
        StyleTransfer(**TINY).fit(_write(no_cf, tmp_path / "nocf"))
    with pytest.raises(ConfigError, match=r"held_out=\['site_D'\].*site_A"):
        StyleTransfer(**TINY).fit(cohort, held_out=["site_D"])
    with pytest.raises(ConfigError, match=r"option 'chanels' is unknown.*'channels'"):
        StyleTransfer(chanels=(4, 8))
    with pytest.raises(ConfigError, match=r"spatial_dims must be 2, not 3"):
        StyleTransfer(spatial_dims=3)
    with pytest.raises(ConfigError, match=r"patch_size must be an integer divisible"):
        StyleTransfer(channels=(4, 8), patch_size=15)
    with pytest.raises(MedgenValueError, match=r"smaller than patch_size=64"):
        StyleTransfer(channels=(4, 8)).fit(cohort, config=ENGINE)
    x = np.ones((32, 32), np.float32)
    with pytest.raises(MedgenValueError, match=r"not fitted; call fit"):
        StyleTransfer(**TINY).apply(x, x)
    with pytest.raises(MedgenValueError, match=r"image is a 3D image.*each slice"):
        model.apply(np.ones((32, 32, 4), np.float32), x)
    with pytest.raises(MedgenValueError, match=r"n must be a positive integer"):
        evaluate_style_transfer(model, cohort, n=0)


def test_evaluate_style_transfer(cohort: Any, model: StyleTransfer) -> None:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from medgen.io import load as load_image

    table = evaluate_style_transfer(model, cohort)
    df = cohort.df.set_index("image_id")
    test = df[(df["split"] == "test") & df["counterfactual_of"].isna()]
    assert len(table) == 3 * 2 * len(test)  # every test image, the two other sites, 3 methods
    assert list(table["method"].unique()) == ["identity", "reference-histogram", "style-transfer"]
    cols = ["image_id", "truth_id", "reference_id", "subject_id", "source_value"]
    cols += ["reference_value", "method", "psnr", "ssim", "lesion_contrast_ratio"]
    assert cols == list(table.columns[: len(cols)])
    assert (table["source_value"] != table["reference_value"]).all()
    refs = df.loc[table["reference_id"]]
    assert (refs["split"] == "test").all() and refs["counterfactual_of"].isna().all()
    assert (refs["site"].to_numpy() == table["reference_value"].to_numpy()).all()
    assert (refs["subject_id"].to_numpy() != table["subject_id"].to_numpy()).all()
    truths = df.loc[table["truth_id"]]
    assert (truths["counterfactual_of"].to_numpy() == table["image_id"].to_numpy()).all()
    assert (truths["site"].to_numpy() == table["reference_value"].to_numpy()).all()
    # the reference-histogram rows: transfer_style to that reference, scored directly
    for _, row in table[table["method"] == "reference-histogram"].head(4).iterrows():
        x = load_image(df.loc[row["image_id"], "image_path"]).numpy()[0]
        r = load_image(df.loc[row["reference_id"], "image_path"]).numpy()[0]
        truth = _scaled(load_image(df.loc[row["truth_id"], "image_path"]).numpy()[0])
        out, fg = _scaled(transfer_style(x, r)), foreground_mask(truth)
        assert row["psnr"] == pytest.approx(
            peak_signal_noise_ratio(truth[fg], out[fg], data_range=1.0)
        )
        _, smap = structural_similarity(truth, out, data_range=1.0, full=True, win_size=7)
        assert row["ssim"] == pytest.approx(float(np.mean(smap[fg])))
    # baselines only; the first n pairs; the same references for the same seed
    base = evaluate_style_transfer(None, cohort, n=3)
    assert len(base) == 6 and set(base["method"]) == {"identity", "reference-histogram"}
    first = table[table["method"] != "style-transfer"].head(6).reset_index(drop=True)
    assert base[["image_id", "reference_id", "psnr"]].equals(
        first[["image_id", "reference_id", "psnr"]]
    )
    identity = table[table["method"] == "identity"]
    assert identity["psnr"].mean() < table[table["method"] == "reference-histogram"]["psnr"].mean()
