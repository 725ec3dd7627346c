"""Synthesis metrics: FID/KID against MONAI and hand formulas, PRDC on hand-built sets, the
real-vs-real floor, memorisation, the per-subgroup table and conditioning fidelity."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.errors import MedgenValueError, MetricWarning
from medgen.generative import _synthesis
from medgen.generative.synthesis_metrics import (
    METRICS,
    PRDC,
    conditioning_fidelity,
    count_near_copies,
    frechet_distance,
    kernel_inception_distance,
    memorisation,
    prdc,
    quality_table,
    real_vs_real_floor,
)


def _gauss(n: int, d: int, seed: int, loc: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=loc, size=(n, d))


# ------------------------------------------------------------------ FID


def test_fid_matches_monai() -> None:
    from monai.metrics import FIDMetric

    real, fake = _gauss(300, 6, 0), _gauss(200, 6, 1, loc=0.3) * 1.5
    ours = frechet_distance(real, fake)
    monai = float(FIDMetric()(torch.from_numpy(fake), torch.from_numpy(real)))
    assert ours == pytest.approx(monai, rel=1e-8, abs=1e-10)


def test_fid_exact_for_shift_and_scale() -> None:
    real = _gauss(250, 5, 2)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(real, real + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    # fake = a * real: FID = (1 - a)^2 (|mu|^2 + tr S)
    a = 2.0
    mu, cov = real.mean(0), np.cov(real, rowvar=False)
    expected = (1 - a) ** 2 * (mu @ mu + np.trace(cov))
    assert frechet_distance(real, a * real) == pytest.approx(expected, rel=1e-8)


def test_fid_defined_when_covariance_is_singular() -> None:
    real, fake = _gauss(5, 10, 3), _gauss(6, 10, 4)  # N < D
    value = frechet_distance(real, fake)
    assert np.isfinite(value) and value > 0


@pytest.mark.parametrize("kind", ["ndarray", "float32", "tensor", "list"])
def test_fid_input_types(kind: str) -> None:
    real, fake = _gauss(40, 3, 5), _gauss(30, 3, 6, loc=1.0)
    conv: dict[str, Any] = {
        "ndarray": lambda x: x,
        "float32": lambda x: x.astype(np.float32),
        "tensor": lambda x: torch.from_numpy(x).requires_grad_(),
        "list": lambda x: x.tolist(),
    }
    expected = frechet_distance(real, fake)
    got = frechet_distance(conv[kind](real), conv[kind](fake))
    assert got == pytest.approx(expected, rel=1e-5 if kind == "float32" else 1e-12)


def test_fid_errors_name_argument_and_fix() -> None:
    with pytest.raises(MedgenValueError) as err:
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    assert str(err.value) == (
        "frechet_distance: the arrays must have the same number of columns, but real_features "
        "has 3, fake_features has 2; extract every set with the same feature extractor (or "
        "resample the images to one grid)."
    )
    with pytest.raises(MedgenValueError, match=r"fake_features must be a 2-D \(N, D\) array"):
        frechet_distance(np.zeros((4, 3)), np.zeros(3))
    with pytest.raises(MedgenValueError, match="real_features has 1 row"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    bad = np.zeros((4, 3))
    bad[2, 1] = np.nan
    with pytest.raises(
        MedgenValueError, match=r"row\(s\) with NaN or infinite values \(first: \[2\]\)"
    ):
        frechet_distance(bad, np.zeros((4, 3)))


# ------------------------------------------------------------------ KID


def test_unbiased_mmd_matches_monai_linear_kernel() -> None:
    from monai.metrics import MMDMetric

    x, y = _gauss(30, 4, 7), _gauss(30, 4, 8, loc=0.5)
    ours = _synthesis.mmd2_unbiased(x, y, kernel=lambda a, b: a @ b.T)
    monai = float(MMDMetric()(torch.from_numpy(x), torch.from_numpy(y)))
    assert ours == pytest.approx(monai, rel=1e-10)


def test_kid_one_subset_equals_the_double_loop() -> None:
    x, y = _gauss(12, 3, 9), _gauss(12, 3, 10, loc=0.4)
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1) ** 3)

    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    res = kernel_inception_distance(x, y, subsets=1, subset_size=m)  # the whole sets
    assert res.mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert res.std == 0.0 and res.subset_size == m and res.values.shape == (1,)


def test_kid_near_zero_for_one_distribution_and_deterministic() -> None:
    real, fake = _gauss(400, 8, 11), _gauss(400, 8, 12)
    a = kernel_inception_distance(real, fake, subsets=30, subset_size=200, seed=3)
    b = kernel_inception_distance(real, fake, subsets=30, subset_size=200, seed=3)
    assert a.mean == b.mean and np.array_equal(a.values, b.values)
    assert abs(a.mean) < 3 * a.std / np.sqrt(30) + 0.01
    far = kernel_inception_distance(real, fake + 0.5, subsets=30, subset_size=200, seed=3)
    assert far.mean > 10 * abs(a.mean) and far.mean > 0
    capped = kernel_inception_distance(real[:50], fake, subsets=2)
    assert capped.subset_size == 50 and capped.seed == 0


def test_kid_rejects_bad_options() -> None:
    x = _gauss(10, 2, 0)
    with pytest.raises(MedgenValueError, match=r"subset_size must be an int >= 2, not 1"):
        kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(MedgenValueError, match="seed must be a non-negative int"):
        kernel_inception_distance(x, x, seed=-1)


# ------------------------------------------------------------------ PRDC


def _prdc_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al.'s formulas on full distance matrices (their reference code, in numpy)."""
    from scipy.spatial.distance import cdist

    rr, ff, fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
    r_rad = np.sort(rr, axis=1)[:, k]
    f_rad = np.sort(ff, axis=1)[:, k]
    inside = fr < r_rad[None, :]
    return {
        "precision": float(inside.any(axis=1).mean()),
        "recall": float((fr < f_rad[:, None]).any(axis=0).mean()),
        "density": float(inside.sum() / (k * len(fake))),
        "coverage": float((fr.min(axis=0) < r_rad).mean()),
    }


def test_prdc_identical_sets() -> None:
    x = _gauss(60, 4, 13)
    res = prdc(x, x, k=5)
    assert (res.precision, res.recall, res.coverage) == (1.0, 1.0, 1.0)
    assert res.density == 1.0  # each ball holds its centre and k - 1 others, strictly


def test_prdc_far_disjoint_sets() -> None:
    res = prdc(_gauss(40, 3, 14), _gauss(40, 3, 15, loc=100.0), k=3)
    assert res.as_dict() == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_by_hand_on_a_line() -> None:
    # reals 0..3 (k=1 radii all 1); fakes 0.5, 10, 11 (radii 9.5, 1, 1)
    res = prdc(np.arange(4.0)[:, None], np.array([[0.5], [10.0], [11.0]]), k=1)
    # 0.5 lies in the balls of reals 0 and 1; 10 and 11 in none -> precision 1/3, density 2/3;
    # the ball of 0.5 (radius 9.5) holds every real -> recall 1 (an outlier inflates recall);
    # reals 0 and 1 have a sample within 1, reals 2 and 3 do not -> coverage 1/2
    assert res == PRDC(precision=1 / 3, recall=1.0, density=2 / 3, coverage=0.5, k=1)


@pytest.mark.parametrize("block_bytes", [None, 8])  # one block, or blocks of one row
def test_prdc_matches_reference_formulas(
    block_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block_bytes is not None:
        monkeypatch.setattr(_synthesis, "BLOCK_BYTES", block_bytes)
    real, fake = _gauss(70, 5, 16), _gauss(50, 5, 17, loc=0.4) * 1.3
    got = prdc(real, fake, k=4).as_dict()
    ref = _prdc_reference(real, fake, 4)
    assert got == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("case", ["lattice", "offset"])
def test_prdc_exact_at_the_ball_boundary(case: str) -> None:
    """Exact ties (integer lattice) and features far from 0 (large matrix-product round-off)."""
    rng = np.random.default_rng(19)
    if case == "lattice":
        grid = np.stack(np.meshgrid(np.arange(6.0), np.arange(6.0)), -1).reshape(-1, 2)
        real, fake = grid, grid[rng.permutation(36)[:20]] + np.array([0.0, 1.0])
    else:
        real, fake = 1e4 + _gauss(60, 8, 20) * 1e-2, 1e4 + _gauss(60, 8, 21) * 1e-2
    for k in (1, 3, 5):
        assert prdc(real, fake, k=k).as_dict() == pytest.approx(
            _prdc_reference(real, fake, k), abs=1e-12
        )


def test_prdc_needs_more_rows_than_k() -> None:
    with pytest.raises(
        MedgenValueError, match=r"fake_features has 5 row\(s\) but needs at least 6"
    ):
        prdc(_gauss(10, 2, 0), _gauss(5, 2, 1), k=5)
    with pytest.raises(MedgenValueError, match="k must be an int >= 1, not 0"):
        prdc(_gauss(10, 2, 0), _gauss(10, 2, 1), k=0)


# ------------------------------------------------------------------ floor


def test_floor_uses_disjoint_halves_of_size_n() -> None:
    x = np.arange(40.0).reshape(20, 2)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(a: np.ndarray, b: np.ndarray) -> float:
        seen.append((a, b))
        return 1.5

    assert real_vs_real_floor(x, record, n=7, seed=1) == 1.5
    a, b = seen[0]
    assert a.shape == b.shape == (7, 2)
    assert not set(a[:, 0].tolist()) & set(b[:, 0].tolist())
    real_vs_real_floor(x, record, n=7, seed=1)
    assert np.array_equal(seen[1][0], a)  # same seed, same halves


def test_floor_by_name_and_errors() -> None:
    x = _gauss(200, 4, 18)
    fid = real_vs_real_floor(x, "fid", seed=0)
    assert fid == real_vs_real_floor(x, "fid", seed=0) and 0 < fid < 1
    assert 0.5 < real_vs_real_floor(x, "coverage", k=5) <= 1.0
    with pytest.raises(MedgenValueError) as err:
        real_vs_real_floor(x, "frechet")
    assert "unknown metric 'frechet'" in str(err.value) and str(list(METRICS)) in str(err.value)
    with pytest.raises(MedgenValueError, match="Did you mean 'recall'"):
        real_vs_real_floor(x, "recal")
    with pytest.raises(
        MedgenValueError, match=r"n=150 needs 2 \* n = 300 real rows .* pass n <= 100"
    ):
        real_vs_real_floor(x, "fid", n=150)


# ------------------------------------------------------------------ memorisation


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8))


def test_memorisation_flags_a_planted_copy_and_few_new_samples() -> None:
    train_px, hold_px, new_px = _images(200, 20), _images(400, 21), _images(200, 22)

    def features(px: np.ndarray) -> np.ndarray:  # a stand-in feature extractor
        return px.reshape(len(px), -1)[:, :16] * 2.0

    train_f, hold_f, new_f = features(train_px), features(hold_px), features(new_px)
    sample_px = np.concatenate([train_px[[42]], new_px])
    sample_f = np.concatenate([train_f[[42]], new_f])
    memo = memorisation(
        train_f,
        sample_f,
        hold_f,
        train_pixels=train_px,
        sample_pixels=sample_px,
        holdout_pixels=hold_px,
        quantile=0.05,
    )
    assert memo.index.name == "sample" and len(memo) == 201
    first = memo.loc[0]
    assert first["feature_train_index"] == 42 and first["pixel_train_index"] == 42
    assert first["feature_distance"] == pytest.approx(0.0, abs=1e-6)
    assert first["pixel_distance"] == pytest.approx(0.0, abs=1e-9)
    assert bool(first["near_copy"]) and bool(first["feature_near_copy"])
    assert first["feature_quantile"] == 0.0 and first["feature_ratio"] < 1e-5
    assert memo["near_copy"].iloc[1:].mean() <= 0.15  # new samples: about 2 x 5 % at most
    assert memo["feature_ratio"].iloc[1:].median() == pytest.approx(1.0, abs=0.3)
    assert memo.attrs["quantile"] == 0.05 and memo.attrs["pixel_metric"] == "ncc"
    assert memo.attrs["feature_threshold"] > 0


def test_memorisation_ncc_sees_through_intensity_changes() -> None:
    train, hold = _images(50, 23), _images(50, 24)
    feats = np.random.default_rng(25)
    tf, hf, sf = feats.normal(size=(50, 4)), feats.normal(size=(50, 4)), feats.normal(size=(2, 4))
    samples = np.concatenate([3.0 * train[[5]] + 1.0, _images(1, 26)])
    ncc = memorisation(
        tf, sf, hf, train_pixels=train, sample_pixels=samples, holdout_pixels=hold, quantile=0.1
    )
    assert ncc.loc[0, "pixel_train_index"] == 5 and bool(ncc.loc[0, "pixel_near_copy"])
    assert ncc.loc[0, "pixel_distance"] == pytest.approx(0.0, abs=1e-12)
    rmse = memorisation(
        tf,
        sf,
        hf,
        train_pixels=train,
        sample_pixels=samples,
        holdout_pixels=hold,
        quantile=0.1,
        pixel_metric="rmse",
    )
    assert not bool(rmse.loc[0, "pixel_near_copy"])  # the rescaled copy is far in RMSE


def test_memorisation_errors_and_warnings() -> None:
    x = _gauss(120, 3, 27)
    with pytest.raises(MedgenValueError) as err:
        memorisation(x, x[:5], x[:50], sample_pixels=np.zeros((5, 4)))
    assert str(err.value) == (
        "memorisation: sample_pixels given but train_pixels, holdout_pixels missing; "
        "pixel-space distances need the training, sample and held-out images: pass all three "
        "or none."
    )
    with pytest.raises(MedgenValueError, match=r"quantile must be a number in \(0, 0.5\]"):
        memorisation(x, x[:5], x[:50], quantile=1.0)
    with pytest.raises(MedgenValueError, match="Did you mean 'rmse'"):
        memorisation(x, x[:5], x[:50], pixel_metric="rms")
    with pytest.warns(
        MetricWarning, match="3 held-out image\\(s\\) coincide with a training image"
    ):
        memorisation(x[:100], x[:5], np.concatenate([x[:3], x[100:]]), quantile=0.1)
    with pytest.warns(MetricWarning, match=r"20 held-out image\(s\) < 1 / quantile = 100"):
        memorisation(x[:100], x[:5], x[100:])


def test_count_near_copies_per_subgroup() -> None:
    memo = pd.DataFrame(
        {
            "feature_near_copy": [True, False, False, False, True],
            "pixel_near_copy": [False, True, False, False, True],
            "near_copy": [True, True, False, False, True],
        }
    )
    cond = pd.DataFrame({"sex": ["F", "F", "M", "M", "M"], "label": [1, 0, 1, 0, 0]})
    out = count_near_copies(memo, cond)
    assert out.index.names == ["attribute", "group"]
    assert out.index.tolist() == [
        ("overall", "all"),
        ("sex", "F"),
        ("sex", "M"),
        ("label", "0"),
        ("label", "1"),
    ]
    assert out["n_near_copies"].tolist() == [3, 2, 1, 2, 1]
    assert out["n_samples"].tolist() == [5, 2, 3, 3, 2]
    assert out.loc[("sex", "M"), "near_copy_rate"] == pytest.approx(1 / 3)
    assert out["n_pixel_near_copies"].tolist() == [2, 1, 1, 2, 0]
    assert count_near_copies(memo, cond, by="sex").shape[0] == 3
    with pytest.raises(MedgenValueError, match=r"has 5 row\(s\) but the features have 4"):
        count_near_copies(memo.iloc[:4], cond)


# ------------------------------------------------------------------ quality table


def _grouped(seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(240, 4))
    real_g = pd.DataFrame({"site": ["A", "B"] * 120, "sex": ["F"] * 120 + ["M"] * 120})
    fake = rng.normal(size=(120, 4))
    fake[60:] += 1.5  # site B samples are off
    fake_g = pd.DataFrame({"site": ["A"] * 60 + ["B"] * 60, "sex": ["F", "M"] * 60})
    return real, real_g, fake, fake_g


def test_quality_table_shape_and_reading() -> None:
    real, real_g, fake, fake_g = _grouped()
    t = quality_table(
        real, fake, real_groups=real_g, fake_groups=fake_g, kid_subsets=5, kid_subset_size=50
    )
    assert t.index.names == ["attribute", "group"]
    assert t.index.tolist() == [
        ("overall", "all"),
        ("site", "A"),
        ("site", "B"),
        ("sex", "F"),
        ("sex", "M"),
    ]
    expected = ["n_real", "n_fake", "n"] + [c for m in METRICS for c in (m, f"{m}_floor")]
    assert list(t.columns) == expected
    assert t.loc[("site", "A"), ["n_real", "n_fake", "n"]].tolist() == [120, 60, 60]
    assert t.loc[("overall", "all"), "n"] == 120
    a, b = t.loc[("site", "A")], t.loc[("site", "B")]
    assert a["fid"] < 3 * a["fid_floor"] + 0.2  # site A samples match the real data
    assert b["fid"] > 10 * b["fid_floor"] and b["precision"] < 0.5 < b["precision_floor"]
    assert t.attrs == {"seed": 0, "k": 5, "kid_subsets": 5, "kid_subset_size": 50}
    again = quality_table(
        real, fake, real_groups=real_g, fake_groups=fake_g, kid_subsets=5, kid_subset_size=50
    )
    pd.testing.assert_frame_equal(t, again)


def test_quality_table_small_group_is_nan_with_warning() -> None:
    real, real_g, fake, fake_g = _grouped()
    real_g = real_g.copy()
    real_g.loc[[0, 2, 4, 6], "site"] = "C"  # 4 real rows of a third site
    fake_g = fake_g.copy()
    fake_g.loc[:2, "site"] = "C"
    with pytest.warns(MetricWarning) as rec:
        t = quality_table(
            real,
            fake,
            real_groups=real_g,
            fake_groups=fake_g,
            by="site",
            metrics=("fid", "precision"),
        )
    row = t.loc[("site", "C")]
    assert row[["n_real", "n_fake", "n"]].tolist() == [4, 3, 2]
    assert (
        np.isfinite(row["fid"]) and np.isnan(row["precision"]) and np.isnan(row["precision_floor"])
    )
    assert [str(w.message) for w in rec] == [
        "quality_table: group 'C' of 'site' has 4 real and 3 generated rows, so n = "
        "min(n_real // 2, n_fake) = 2; too few for precision (FID/KID need n >= 2, PRDC n > k = "
        "5): reported as NaN."
    ]


def test_quality_table_without_groups_and_errors() -> None:
    real, real_g, fake, fake_g = _grouped()
    t = quality_table(real, fake, metrics=["coverage"], seed=np.random.default_rng(1))
    assert t.index.tolist() == [("overall", "all")] and t.attrs["seed"] is None
    with pytest.raises(MedgenValueError, match="fake_groups is missing"):
        quality_table(real, fake, real_groups=real_g)
    with pytest.raises(MedgenValueError, match=r"column 'sit' \(from by=\) is not in real_groups"):
        quality_table(real, fake, real_groups=real_g, fake_groups=fake_g, by="sit")
    with pytest.raises(MedgenValueError, match="Did you mean 'density'"):
        quality_table(real, fake, metrics=["densty"])
    holes = fake_g.copy()
    holes.loc[3, "sex"] = None
    with pytest.raises(
        MedgenValueError, match=r"column 'sex' of fake_groups has missing values \(rows \[3\]\)"
    ):
        quality_table(real, fake, real_groups=real_g, fake_groups=holes)


# ------------------------------------------------------------------ conditioning fidelity


def test_conditioning_fidelity_binary() -> None:
    cond = np.array(["healthy"] * 4 + ["lesion"] * 4)
    perfect = conditioning_fidelity(cond, [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    assert perfect.index.name == "condition"
    assert perfect.index.tolist() == ["overall", "healthy", "lesion"]
    assert perfect["auc"].tolist() == [1.0, 1.0, 1.0]
    assert perfect["accuracy"].tolist() == [1.0, 1.0, 1.0]
    assert perfect["n"].tolist() == [8, 4, 4]
    # scores ignore the condition: AUC 0.5, everything called "lesion"
    blind = conditioning_fidelity(cond, np.full(8, 0.7))
    assert blind["auc"].tolist() == [0.5, 0.5, 0.5]
    assert blind["accuracy"].tolist() == [0.5, 0.0, 1.0]


def test_conditioning_fidelity_multiclass_by_hand() -> None:
    cond = np.array([0, 0, 1, 1, 2, 2])
    score = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.2, 0.7, 0.1],  # a 0 called 1
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0.1, 0.2, 0.7],
            [0.5, 0.1, 0.4],  # a 2 called 0
        ]
    )
    out = conditioning_fidelity(cond, score)
    assert out["accuracy"].tolist() == pytest.approx([4 / 6, 0.5, 1.0, 0.5])
    from sklearn.metrics import roc_auc_score

    per_class = [roc_auc_score(cond == c, score[:, c]) for c in range(3)]
    assert out["auc"].iloc[1:].tolist() == pytest.approx(per_class)
    assert out.loc["overall", "auc"] == pytest.approx(roc_auc_score(cond, score, multi_class="ovr"))


def test_conditioning_fidelity_errors_and_undefined_auc() -> None:
    with pytest.raises(MedgenValueError, match=r"exactly 2 conditions, but there are 3"):
        conditioning_fidelity([0, 1, 2], [0.1, 0.5, 0.9])
    with pytest.raises(MedgenValueError, match="y_score has 2 columns but there are 3 conditions"):
        conditioning_fidelity([0, 1, 2], np.ones((3, 2)))
    with pytest.raises(MedgenValueError, match=r"holds \['2'\] not in labels=\[0, 1\]"):
        conditioning_fidelity([0, 1, 2], np.ones((3, 2)), labels=[0, 1])
    with pytest.warns(
        MetricWarning, match=r"AUC undefined \(NaN\) for condition\(s\) \['0', '1'\]"
    ):
        out = conditioning_fidelity([1, 1, 1], [0.9, 0.8, 0.2], labels=[0, 1])
    assert np.isnan(out.loc["overall", "auc"]) and out.loc["1", "accuracy"] == pytest.approx(2 / 3)
    assert out.loc["0", "n"] == 0


def test_no_warnings_on_clean_inputs() -> None:
    real, real_g, fake, fake_g = _grouped(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quality_table(real, fake, real_groups=real_g, fake_groups=fake_g, kid_subsets=2)
        memorisation(real[:120], fake, real[120:], quantile=0.01)
