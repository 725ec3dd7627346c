"""The detail-weighted L1 of pix2pix (``Pix2PixConfig.detail_weight``, issue 14): the weight map,
bitwise-unchanged training at 0, a Translator run with the option, old run folders, bad values;
and the mask-weighted variant (``lesion_weight``), which reads only the training rows' masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.generative import Translator, load
from medgen.generative.objectives._common import lesion_contrast_loss
from medgen.generative.objectives.paired import Pix2PixConfig, detail_weight_map

A, B = {"site": "site_A"}, {"site": "site_B"}
TINY: dict[str, Any] = {"channels": (4, 8), "discriminator_channels": 4}
ENGINE: dict[str, Any] = {"epochs": 2, "steps_per_epoch": 5, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def cohort(simulate_counterfactual: Any) -> Any:
    from medgen.cohort import Cohort

    return Cohort.from_manifest(simulate_counterfactual("tiny_cf_site", 16, ("site",)))


def _fit(cohort: Any, engine: dict[str, Any] = ENGINE, **options: Any) -> Translator:
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix={**TINY, **options})
    return t.fit(cohort, config=engine)


def test_weight_map_flat_edge_and_blob() -> None:
    flat = torch.full((2, 1, 24, 24), 0.7)
    assert torch.equal(detail_weight_map(flat, 5.0), torch.ones_like(flat))
    y = torch.zeros(1, 1, 24, 24)
    y[..., 10:13, 10:13] = 1.0  # a 3-pixel blob
    y[..., :, 20:] = 0.5  # an edge
    w = detail_weight_map(y, 2.0)
    assert w.shape == y.shape and bool((w >= 1.0).all())
    background = w[0, 0, :4, :4]  # flat, beyond the kernels of both
    assert torch.allclose(background, torch.ones_like(background), atol=1e-3)
    assert w[0, 0, 11, 11] > 3.0 and w[0, 0, 5, 20] > 2.0
    assert torch.equal(detail_weight_map(y, 0.0), torch.ones_like(y))
    # linear in the weight above 1; 3D works the same
    w4 = (detail_weight_map(y, 4.0) - 1).numpy()
    np.testing.assert_allclose(w4, 2 * (w - 1).numpy(), rtol=1e-5, atol=1e-6)
    cube = torch.zeros(1, 1, 12, 12, 12)
    cube[..., 5:8, 5:8, 5:8] = 1.0
    w3 = detail_weight_map(cube, 1.0)
    assert bool((w3 >= 1).all()) and w3[0, 0, 6, 6, 6] > w3[0, 0, 0, 0, 0] + 1


def test_weight_map_finds_simulated_lesions(cohort: Any) -> None:
    from medgen.generative.objectives._common import unit_range
    from medgen.generative.translation import NORM_PERCENTILES, foreground_mask
    from medgen.io import load as load_image

    df = cohort.df
    rows = df[(df["site"] == "site_B") & df["mask_path"].notna()]
    images, lesions = [], []
    for _, r in rows.iterrows():
        lesion = load_image(r["mask_path"]).numpy()[0] > 0
        if lesion.sum() >= 3:
            images.append(unit_range(load_image(r["image_path"]).numpy()[0], NORM_PERCENTILES))
            lesions.append(lesion)
    assert len(images) >= 3
    w = detail_weight_map(torch.from_numpy(np.stack(images)[:, None]), 1.0).numpy()[:, 0]
    les = np.stack(lesions)
    fg = np.stack([foreground_mask(x) for x in images]) & ~les
    # lesion pixels of the blurred, noisy site_B renders weigh more than the rest of the brain
    assert w[les].mean() > 1.3 * w[fg].mean()


def test_zero_detail_weight_is_todays_training(cohort: Any) -> None:
    plain = _fit(cohort)
    zero = _fit(cohort, detail_weight=0.0, detail_sigma=3.0)
    assert zero.weights_sha256 == plain.weights_sha256  # bitwise the same weights
    detail = _fit(cohort, detail_weight=2.0)
    assert detail.weights_sha256 != plain.weights_sha256
    assert detail.data_hash == plain.data_hash  # same pairs, another loss


def test_translator_with_detail_weight_trains_saves_loads(cohort: Any, tmp_path: Path) -> None:
    t = _fit(cohort, {**ENGINE, "steps_per_epoch": 10}, detail_weight=2.0, detail_sigma=1.5)
    h = t.history
    assert t.steps_trained == 20 and h[-1]["l1"] < h[0]["l1"]  # the weighted L1 falls
    cfg = t.pix2pix_config()
    assert cfg.detail_weight == 2.0 and cfg.detail_sigma == 1.5
    again = load(t.save(tmp_path / "p2p"))
    assert isinstance(again, Translator)
    assert again.pix2pix_config().detail_weight == 2.0
    assert again.weights_sha256 == t.weights_sha256
    x = np.random.default_rng(1).normal(300, 50, (32, 32)).astype(np.float32)
    np.testing.assert_allclose(again.apply(x), t.apply(x), rtol=1e-5, atol=1e-3)


def test_old_config_without_the_option_loads_as_before(cohort: Any, tmp_path: Path) -> None:
    folder = _fit(cohort).save(tmp_path / "old")
    config = json.loads((Path(folder) / "config.json").read_text())
    options = config["model"]["pix2pix"]
    assert "detail_weight" not in options and "detail_sigma" not in options  # an old layout
    again = load(folder)
    assert isinstance(again, Translator)
    assert again.pix2pix_config().detail_weight == 0.0


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"detail_weight": -1.0}, "detail_weight"),
        ({"detail_weight": "2"}, "detail_weight"),
        ({"detail_sigma": 0.0}, "detail_sigma"),
        ({"detail_sigma": float("nan")}, "detail_sigma"),
        ({"lesion_weight": -0.5}, "lesion_weight"),
        ({"lesion_adv_weight": -1.0}, "lesion_adv_weight"),
        ({"lesion_adv_weight": 1.0, "adv_weight": 0.0}, "lesion_adv_weight"),
        ({"lesion_contrast_weight": -1.0}, "lesion_contrast_weight"),
        ({"lesion_contrast_weight": "1"}, "lesion_contrast_weight"),
        ({"lesion_contrast_warmup_steps": -1}, "lesion_contrast_warmup_steps"),
        ({"lesion_contrast_warmup_steps": 2.5}, "lesion_contrast_warmup_steps"),
    ],
)
def test_bad_detail_options(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=rf"Pix2PixConfig.*{name}"):
        Translator("pix2pix", source=A, target=B, pix2pix=options)
    with pytest.raises(ConfigError, match=name):
        Pix2PixConfig(**options)


def test_paired_patches_cut_the_mask_with_the_pair() -> None:
    from medgen.generative.objectives.paired import paired_patches

    a = np.arange(24 * 24, dtype=np.float32).reshape(24, 24)
    mask = (a % 7 == 0).astype(np.float32)
    rng = np.random.default_rng(0)
    batch = paired_patches([(a, 2 * a, mask)], 3, 8, rng)
    assert set(batch) == {"input", "target", "mask"}
    x, m = batch["input"].numpy()[:, 0], batch["mask"].numpy()[:, 0]
    np.testing.assert_array_equal(m, (x % 7 == 0).astype(np.float32))  # the same window
    np.testing.assert_array_equal(batch["target"].numpy()[:, 0], 2 * x)
    assert set(paired_patches([(a, a)], 2, 8, rng)) == {"input", "target"}


def test_lesion_weight_reads_training_masks_only(cohort: Any, tmp_path: Path) -> None:
    import medgen.io
    from medgen.errors import MedgenValueError

    options = {**TINY, "lesion_weight": 10.0}
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=options)
    t.fit(cohort, config=ENGINE)
    a, _, masks = t._pairs(cohort)
    assert masks is not None and len(masks) == len(a) and any(m.any() for m in masks)
    plain = _fit(cohort)
    assert t.steps_trained == 10 and t.weights_sha256 != plain.weights_sha256
    assert t.data_hash != plain.data_hash  # the masks are part of the training data
    # the test and validation rows' masks are never read: all-lesion masks there change nothing
    df = cohort.df.copy()
    medgen.io.save(np.ones((1, *a[0].shape), np.float32), tmp_path / "all.nii.gz")
    df.loc[df["split"] != "train", "mask_path"] = str(tmp_path / "all.nii.gz")
    manifest = tmp_path / "manifest.csv"
    df.to_csv(manifest, index=False)
    same = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=options)
    same.fit(manifest, config=ENGINE)
    assert same.data_hash == t.data_hash and same.weights_sha256 == t.weights_sha256
    df.loc[df["split"] == "train", "mask_path"] = str(tmp_path / "all.nii.gz")  # and these are
    df.to_csv(manifest, index=False)
    other = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=options)
    assert other.fit(manifest, config=ENGINE).data_hash != t.data_hash
    with pytest.raises(ConfigError, match="lesion_contrast_weight > 0\\) need lesion masks"):
        t.fit_images([np.ones((16, 16))], [np.ones((16, 16))])
    medgen.io.save(np.ones((1, 8, 8), np.float32), tmp_path / "small.nii.gz")
    df.loc[df["split"] == "train", "mask_path"] = str(tmp_path / "small.nii.gz")
    df.to_csv(manifest, index=False)
    with pytest.raises(MedgenValueError, match=r"lesion mask .*small.nii.gz has shape \(8, 8\)"):
        other.fit(manifest, config=ENGINE)
    df["mask_path"] = np.nan
    df.to_csv(manifest, index=False)
    with pytest.raises(MedgenValueError, match=r"no training pair has one.*'mask_path'"):
        t.fit(manifest, config=ENGINE)


def test_lesion_cells_and_masked_lsgan() -> None:
    from medgen.generative.objectives._common import masked_lsgan
    from medgen.generative.objectives.paired import lesion_cells

    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 3:5, 26:28] = 1.0  # a 2x2 lesion in the top-right cell of a 4x4 grid
    cells = lesion_cells(mask, (4, 4))
    assert cells.shape == (2, 1, 4, 4)
    assert cells.sum() == 1 and cells[0, 0, 0, 3] == 1  # the second image has none
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = masked_lsgan(logits, cells, real=True)
    assert float(loss.detach()) == pytest.approx(float((logits[0, 0, 0, 3].detach() - 1) ** 2))
    loss.backward()
    assert logits.grad is not None
    outside = logits.grad.clone()
    outside[0, 0, 0, 3] = 0
    assert float(outside.abs().sum()) == 0.0  # only the lesion cell pulls the generator
    fake = masked_lsgan(logits.detach(), cells, real=False)
    assert float(fake) == pytest.approx(float(logits[0, 0, 0, 3] ** 2))
    assert float(masked_lsgan(logits, torch.zeros_like(cells), real=True)) == 0.0
    cube = torch.zeros(1, 1, 8, 8, 8)
    cube[..., 0, 0, 0] = 1.0
    assert lesion_cells(cube, (2, 2, 2)).sum() == 1


def test_lesion_adversarial_term_trains_on_masks(cohort: Any) -> None:
    options = {"lesion_adv_weight": 1.0, "adv_weight": 0.1, "adv_warmup_steps": 0}
    t = _fit(cohort, **options)
    _, _, masks = t._pairs(cohort)
    assert masks is not None  # the term reads the training rows' masks, as lesion_weight does
    lesion = [epoch["adv_lesion"] for epoch in t.history]
    assert len(lesion) == 2 and all(np.isfinite(v) and v > 0 for v in lesion)
    plain = _fit(cohort, adv_weight=0.1, adv_warmup_steps=0)
    assert all("adv_lesion" not in epoch for epoch in plain.history)
    assert plain.weights_sha256 != t.weights_sha256 and plain.data_hash != t.data_hash


def _contrast_by_hand(img: np.ndarray, mask: np.ndarray, ring: int = 2) -> float:
    """A patch's lesion contrast the slow way: mean inside, minus mean outside the mask grown
    by a (2 ring + 1)-wide square (scipy's grey dilation)."""
    from scipy import ndimage

    grown = ndimage.grey_dilation(mask, size=(2 * ring + 1,) * mask.ndim, mode="constant")
    inside, outside = mask, 1.0 - grown
    return float((img * inside).sum() / inside.sum() - (img * outside).sum() / outside.sum())


@pytest.mark.parametrize("shape", [(12, 12), (8, 8, 8)])
def test_lesion_contrast_loss_matches_its_definition(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(3, 1, *shape)), rng.normal(size=(3, 1, *shape))
    mask = np.zeros((3, 1, *shape))
    mask[0, 0, 2:5, 3:6] = 1.0  # a block lesion (a slab in 3D)
    mask[1, 0, 1, 1] = 0.5  # one soft pixel; patch 2 has no lesion and does not count
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in
         (("p", pred), ("y", target), ("m", mask))}  # fmt: skip
    got = float(lesion_contrast_loss(t["p"], t["y"], t["m"]))
    want = np.mean(
        [
            abs(
                _contrast_by_hand(pred[i, 0], mask[i, 0])
                - _contrast_by_hand(target[i, 0], mask[i, 0])
            )
            for i in (0, 1)
        ]
    )
    assert got == pytest.approx(want, rel=1e-5)
    # a constant offset changes no contrast; a lesion-only change does, by exactly its size
    assert float(lesion_contrast_loss(t["y"] + 0.3, t["y"], t["m"])) == pytest.approx(0, abs=1e-6)
    brighter = t["y"] + 0.25 * (t["m"] > 0.9).float()
    assert float(lesion_contrast_loss(brighter, t["y"], t["m"])) == pytest.approx(0.25 / 2)
    none = lesion_contrast_loss(t["p"].requires_grad_(), t["y"], torch.zeros_like(t["m"]))
    none.backward()
    assert float(none) == 0.0 and t["p"].grad is not None  # no lesion: 0, still differentiable


def test_lesion_contrast_term_trains_on_masks(cohort: Any) -> None:
    t = _fit(cohort, lesion_contrast_weight=2.0)
    _, _, masks = t._pairs(cohort)
    assert masks is not None and t.pix2pix_config().needs_masks
    contrast = [epoch["contrast_lesion"] for epoch in t.history]
    assert len(contrast) == 2 and all(np.isfinite(v) and v > 0 for v in contrast)
    plain = _fit(cohort)
    zero = _fit(cohort, lesion_contrast_weight=0.0)
    assert zero.weights_sha256 == plain.weights_sha256  # off: bitwise today's training
    assert all("contrast_lesion" not in epoch for epoch in plain.history)
    assert plain.weights_sha256 != t.weights_sha256 and plain.data_hash != t.data_hash


def test_lesion_contrast_warmup_starts_the_term_late(cohort: Any) -> None:
    late = _fit(cohort, lesion_contrast_weight=2.0, lesion_contrast_warmup_steps=5)
    on = [epoch.get("contrast_lesion") for epoch in late.history]  # 5 steps an epoch
    assert on[0] is None or not np.isfinite(on[0])  # epoch 1: steps 0-4, before the warm-up
    assert on[1] is not None and np.isfinite(on[1]) and on[1] > 0
    plain = _fit(cohort)
    never = _fit(cohort, lesion_contrast_weight=2.0, lesion_contrast_warmup_steps=10)
    assert never.weights_sha256 == plain.weights_sha256  # off for all 10 steps: unchanged
