"""medgen.generative.Translator and evaluate_translation on the tiny preset with counterfactuals.

The counterfactual renders themselves (identical masks, other appearance, default output
unchanged) are tested in tests/simulate/test_counterfactual.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import Translator, evaluate_translation, load
from medgen.generative.translation import NORM_PERCENTILES, foreground_mask, robust_range

A, B = {"site": "site_A"}, {"site": "site_B"}
TINY_CYCLEGAN: dict[str, Any] = {
    "channels": (4, 8),
    "discriminator_channels": 4,
    "pool_size": 4,
}


@pytest.fixture(scope="module")
def cohort(simulate_counterfactual: Any) -> Any:
    from medgen.cohort import Cohort

    return Cohort.from_manifest(simulate_counterfactual("tiny_cf", 40, ("site",)))


@pytest.fixture(scope="module")
def histogram(cohort: Any) -> Translator:
    return Translator("histogram", source=A, target=B).fit(cohort)


@pytest.fixture(scope="module")
def cyclegan(cohort: Any) -> Translator:
    t = Translator("cyclegan", source=A, target=B, patch_size=16, cyclegan=TINY_CYCLEGAN)
    config = {"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "device": "cpu"}
    return t.fit(cohort, config=config)


def _source_image(cohort: Any) -> Any:
    from medgen.io import load as load_image

    row = cohort.select(split="test", counterfactual_of=None, **A).df.iloc[0]
    return load_image(row["image_path"])


def test_histogram_equals_skimage(cohort: Any, histogram: Translator) -> None:
    from skimage.exposure import match_histograms

    x = _source_image(cohort).numpy()[0]
    lo, hi = robust_range(x)
    assert (lo, hi) == tuple(np.percentile(x, NORM_PERCENTILES))
    u = (x - lo) / (hi - lo)
    fg = foreground_mask(u)
    expected = u.astype(np.float64)
    expected[fg] = match_histograms(u[fg].astype(np.float64), histogram._buffer())
    expected = np.clip(expected, min(u.min(), 0), max(u.max(), 1))  # the input's own span
    np.testing.assert_allclose(histogram.apply(x), lo + expected * (hi - lo), rtol=1e-5, atol=1e-3)
    # the reference: quantiles of the target training images' foreground, never counterfactuals
    assert len(histogram._buffer()) == 1024 and histogram.fitted
    factual = Translator("histogram", source=A, target=B).fit(cohort.select(counterfactual_of=None))
    assert factual.data_hash == histogram.data_hash
    np.testing.assert_array_equal(factual._buffer(), histogram._buffer())


def test_nyul_maps_percentiles_onto_target_landmarks(cohort: Any) -> None:
    t = Translator("nyul", source=A, target=B).fit(cohort)
    landmarks = t._buffer()
    assert landmarks.shape == (13,) and np.all(np.diff(landmarks) > 0)
    x = _source_image(cohort).numpy()[0]
    lo, hi = robust_range(x)
    u = (x - lo) / (hi - lo)
    out = (t.apply(x) - lo) / (hi - lo)
    # TorchIO's piecewise-linear map sends the image's foreground landmarks onto the target's
    percentiles = [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99]
    used = [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12]
    got = np.percentile(out[foreground_mask(u)], percentiles)[used]
    np.testing.assert_allclose(got, landmarks[used], atol=0.02)


def test_apply_keeps_geometry_and_types(cohort: Any, histogram: Translator) -> None:
    import torch
    from monai.data import MetaTensor

    img = _source_image(cohort)
    out = histogram.apply(img)
    assert isinstance(out, MetaTensor) and out.shape == img.shape and out.dtype == torch.float32
    assert torch.equal(out.affine, img.affine)
    assert out.meta["translation"] == {"model": "histogram", "source": A, "target": B}
    assert out.meta["filename_or_obj"] == img.meta["filename_or_obj"]
    plain = histogram.apply(img.as_tensor()[0])
    assert type(plain) is torch.Tensor and torch.allclose(plain, out.as_tensor()[0])
    np.testing.assert_allclose(histogram.apply(img.numpy()[0]), out.numpy()[0])


@pytest.mark.parametrize("model", ["histogram", "cyclegan"])
def test_ct_range_comes_back_in_range(
    model: str, histogram: Translator, cyclegan: Translator
) -> None:
    t = histogram if model == "histogram" else cyclegan
    rng = np.random.default_rng(0)
    ct = np.full((32, 32), -1024.0, np.float32)  # air around a "body" of soft tissue and bone
    yy, xx = np.mgrid[:32, :32]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 12**2
    ct[body] = 40 + 20 * rng.standard_normal(body.sum())
    ct[(yy - 16) ** 2 + (xx - 16) ** 2 < 3**2] = 3000.0
    out = t.apply(ct)
    assert out.dtype == np.float32 and out.shape == ct.shape
    span = 3000 + 1024
    assert out.min() >= -1024 and out.max() <= 3000
    assert out.max() - out.min() > 0.5 * span  # in HU, not squeezed into 0..1


def test_cyclegan_lowers_losses_and_round_trips(cyclegan: Translator, tmp_path: Path) -> None:
    h = cyclegan.history
    assert len(h) == 2 and h[-1]["loss_g"] < h[0]["loss_g"] and cyclegan.steps_trained == 20
    again = load(cyclegan.save(tmp_path / "run"))
    assert isinstance(again, Translator) and again.model == "cyclegan"
    assert again.source == A and again.target == B and again.steps_trained == 20
    x = np.random.default_rng(1).normal(100, 30, (32, 32)).astype(np.float32)
    np.testing.assert_allclose(again.apply(x), cyclegan.apply(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(MedgenValueError, match=r"works on 2D images.*slice by slice"):
        cyclegan.apply(np.zeros((32, 32, 4), np.float32))


def test_baseline_saves_and_loads(histogram: Translator, tmp_path: Path) -> None:
    again = load(histogram.save(tmp_path / "hist"))
    assert isinstance(again, Translator) and again.fitted
    np.testing.assert_array_equal(again._buffer(), histogram._buffer())


def test_evaluate_translation(cohort: Any, histogram: Translator) -> None:
    table = evaluate_translation(histogram, cohort)
    assert set(table["method"]) == {"identity", "histogram"}
    cols = {"image_id", "truth_id", "subject_id", "psnr", "ssim", "lesion_contrast_ratio", "sex"}
    assert cols <= set(table.columns)
    assert table["truth_id"].str.contains("-cf-site_B").all()
    means = table.groupby("method")[["psnr", "ssim"]].mean()
    assert means.loc["histogram", "psnr"] > means.loc["identity", "psnr"] + 1.0
    assert table["lesion_contrast_ratio"].notna().any()
    # the ratio's parts: the identity's contrast is that of the source image against the truth's
    lesion = table.dropna(subset=["lesion_contrast_ratio"])
    np.testing.assert_allclose(
        lesion["lesion_contrast"] / lesion["truth_lesion_contrast"],
        lesion["lesion_contrast_ratio"],
        rtol=1e-6,
    )
    assert table.loc[table["lesion_contrast_ratio"].isna(), "lesion_contrast"].isna().all()
    assert len(evaluate_translation(histogram, cohort, n=1)) == 2
    with pytest.raises(MedgenValueError, match="n must be a positive integer"):
        evaluate_translation(histogram, cohort, n=0)
    factual = cohort.select(counterfactual_of=None)
    factual = type(cohort).from_manifest(factual.df.drop(columns="counterfactual_of"))
    with pytest.raises(MedgenValueError, match="no 'counterfactual_of' column"):
        evaluate_translation(histogram, factual)


def test_bad_input(cohort: Any) -> None:
    with pytest.raises(ConfigError, match="source and target are the same selector"):
        Translator("histogram", source=A, target=dict(A))
    with pytest.raises(ConfigError, match=r"model must be one of.*Did you mean 'cyclegan'"):
        Translator("cyclegn", source=A, target=B)
    with pytest.raises(ConfigError, match="source must be a non-empty dict"):
        Translator("histogram", source={}, target=B)
    with pytest.raises(ConfigError, match="cyclegan option 'chanels' is unknown"):
        Translator("cyclegan", source=A, target=B, cyclegan={"chanels": (4, 8)})
    with pytest.raises(MedgenValueError, match=r"target=\{'site': 'site_Z'\} matches no"):
        Translator("histogram", source=A, target={"site": "site_Z"}).fit(cohort)
    with pytest.raises(MedgenValueError, match="matches every training-split row"):
        Translator("histogram", source={"source": "simulated"}, target=B).fit(cohort)
    with pytest.raises(MedgenValueError, match=r"column.*'scanner'.*does not have"):
        Translator("histogram", source={"scanner": "x"}, target=B).fit(cohort)
    with pytest.raises(MedgenValueError, match="both select"):
        Translator("histogram", source={"sex": "F"}, target=B).fit(cohort)
    with pytest.raises(MedgenValueError, match="not fitted"):
        Translator("nyul", source=A, target=B).apply(np.zeros((8, 8)))
