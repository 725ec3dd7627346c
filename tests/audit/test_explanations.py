"""medgen.audit explanations: pointing game, energy in the lesion, random baseline, per group."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.audit._explanations import (
    ExplanationAudit,
    energy_fraction,
    explanations,
    pointing_hit,
    random_maps,
    score_explanation,
)
from medgen.errors import MedgenValueError, MetricWarning

TINY_NET = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
}


def _mask(shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    m = np.zeros(shape)
    m[20:26, 4:10] = 1.0  # 36 pixels, off centre
    return m


# -- per-image scores ----------------------------------------------------------------------------


def test_pointing_game_is_one_inside_and_zero_outside() -> None:
    mask = _mask()
    inside = np.zeros((32, 32))
    inside[22, 6] = 1.0
    outside = np.zeros((32, 32))
    outside[5, 28] = 1.0
    assert score_explanation(inside, mask)["pointing"] == 1.0
    assert score_explanation(outside, mask)["pointing"] == 0.0
    # a smooth blob whose peak is in the lesion, and the same blob moved away
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 23) ** 2 + (xx - 7) ** 2) / 20.0)
    assert pointing_hit(blob, mask) == 1.0
    assert pointing_hit(np.roll(blob, 12, axis=1), mask) == 0.0
    # channel axes are ignored; torch tensors are accepted
    assert pointing_hit(torch.as_tensor(inside)[None], mask[None]) == 1.0


def test_pointing_ties_and_tolerance() -> None:
    mask = _mask()
    flat = np.full((32, 32), 0.3)  # every pixel is a maximum: the area fraction
    assert pointing_hit(flat, mask) == pytest.approx(36 / 1024)
    near = np.zeros((32, 32))
    near[19, 6] = 1.0  # one pixel above the lesion
    assert pointing_hit(near, mask) == 0.0
    assert pointing_hit(near, mask, tolerance=1.0) == 1.0
    assert np.isnan(pointing_hit(near, np.zeros((32, 32))))


def test_energy_fraction_equals_a_hand_computation() -> None:
    s = np.array([[0.9, -0.5, 0.1], [0.2, 0.0, 0.4], [-1.0, 0.3, 0.1]])
    m = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0]])
    # positive part inside: 0.9 + 0 + 0.4 + 0 = 1.3; positive part total: 0.9+0.1+0.2+0.4+0.3+0.1
    assert energy_fraction(s, m) == pytest.approx(1.3 / 2.0)
    assert score_explanation(s, m, n_random=0)["energy"] == pytest.approx(0.65)
    assert np.isnan(energy_fraction(-np.abs(s), m))  # no positive energy: undefined
    # a constant map (GradCAM's all-zero map: no evidence anywhere) scores like a uniform map
    flat = score_explanation(np.zeros((3, 3)), m, n_random=0)
    assert flat["energy"] == flat["pointing"] == pytest.approx(4 / 9)
    assert flat["flat_map"] == 1.0 and score_explanation(s, m, n_random=0)["flat_map"] == 0.0
    with pytest.raises(MedgenValueError, match=r"saliency map shape \(3, 3\) and mask shape"):
        energy_fraction(s, np.ones((4, 4)))


def test_random_baseline_is_near_the_mask_area_fraction() -> None:
    mask = _mask()
    area = 36 / 1024
    rng = np.random.default_rng(0)
    r = score_explanation(np.zeros((32, 32)), mask, n_random=600, rng=rng)
    assert r["area_fraction"] == pytest.approx(area)
    se = np.sqrt(area * (1 - area) / 600)  # binomial standard error of the hit rate
    assert abs(r["pointing_random"] - area) < 4 * se
    assert abs(r["energy_random"] - area) < 0.15 * area
    maps = random_maps((32, 32), 3, rng=np.random.default_rng(1), sigma=2.0)
    assert maps.shape == (3, 32, 32)
    assert np.allclose(maps.reshape(3, -1).min(1), 0) and np.allclose(maps.reshape(3, -1).max(1), 1)
    # smooth: neighbouring pixels are strongly correlated
    assert np.corrcoef(maps[0, :, :-1].ravel(), maps[0, :, 1:].ravel())[0, 1] > 0.8


# -- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clf(tiny_manifest: Path):  # type: ignore[no-untyped-def]
    from medgen.classify import train

    return train(
        tiny_manifest,
        **TINY_NET,
        epochs=2,
        batch_size=16,
        augment="none",
        seed=0,
        progress=False,
    )


def test_explanations_by_sex_on_the_tiny_preset(
    tiny_clf, tiny_manifest: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import medgen.io

    df = pd.read_csv(tiny_manifest)
    lesion = [
        bool(np.asarray(medgen.io.load(tiny_manifest.parent / p)).any()) for p in df["mask_path"]
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        res = explanations(tiny_clf, tiny_manifest, by="sex", split=None, n_boot=200, seed=0)
    assert isinstance(res, ExplanationAudit)
    assert res.provenance["method"] == "gradcam"
    # only images with a lesion are scored, the others are listed as skipped
    assert sorted(res.per_image["image_id"]) == sorted(df.loc[lesion, "image_id"])
    assert sorted(res.skipped["image_id"]) == sorted(df.loc[~np.array(lesion), "image_id"])
    assert set(res.skipped["reason"]) == {"empty mask (no lesion)"}
    pi = res.per_image
    assert pi["pointing"].between(0, 1).all() and pi["energy"].between(0, 1).all()
    np.testing.assert_allclose(pi["area_fraction"], pi["mask_voxels"] / (32 * 32))
    # the per-image scores are those of the maps Classifier.explain returns
    row = df[df["image_id"] == pi["image_id"].iloc[0]].iloc[0]
    img = medgen.io.load(tiny_manifest.parent / row["image_path"])
    msk = medgen.io.load(tiny_manifest.parent / row["mask_path"])
    sal = tiny_clf.explain(img[None], class_idx=1)[0]
    ref = score_explanation(sal, msk, n_random=0)
    # the audit explains images in batches, this check one at a time: float32 convolutions sum in
    # a different order with the batch size, so the maps agree to ~1e-6 relative, not bitwise
    assert pi["pointing"].iloc[0] == pytest.approx(ref["pointing"])
    assert pi["energy"].iloc[0] == pytest.approx(ref["energy"], rel=1e-4)
    # per group: means of the per-image table, with CIs around them
    bg = res.by_group
    for sex in ("F", "M"):
        rows = pi[pi["sex"] == sex]
        for metric in ("pointing", "energy", "energy_random", "area_fraction"):
            r = bg.loc[("sex", sex, metric)]
            assert r["n"] == len(rows)
            assert r["value"] == pytest.approx(rows[metric].mean())
            assert r["low"] - 1e-12 <= r["value"] <= r["high"] + 1e-12
    assert bg.loc[("overall", "all", "pointing"), "n"] == len(pi)
    assert 0 <= bg.loc[("sex", "F", "energy_gain"), "p_value"] <= 1
    t = res.tests
    assert set(t.index.get_level_values("metric")) == {
        "pointing",
        "energy",
        "pointing_gain",
        "energy_gain",
        "flat_map",
    }
    ref_group = t["reference_group"].iloc[0]
    assert ref_group == pi["sex"].value_counts().idxmax()
    r = t.iloc[1]
    assert r["difference"] == pytest.approx(r["value"] - r["reference_value"])
    assert r["difference_low"] <= r["difference"] <= r["difference_high"]
    assert (t["p_adjusted"] >= t["p_value"] - 1e-12).all()
    # same seed, same numbers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        again = explanations(tiny_clf, tiny_manifest, by="sex", split=None, n_boot=200, seed=0)
    pd.testing.assert_frame_equal(again.by_group, res.by_group)
    page = res.to_html(tmp_path / "explanations.html")
    assert "Where does the model look, for whom?" in page
    assert page.count("<img") >= 2 and "http" not in page.split("<h1>")[1]
    files = res.to_csv(tmp_path / "tables")
    assert {f.name for f in files} >= {"explanations_by_group.csv", "explanations_tests.csv"}
    back = pd.read_csv(tmp_path / "tables" / "explanations_per_image.csv")
    assert len(back) == len(pi)


def test_vit_explanations_use_rollout(tiny_manifest: Path) -> None:
    from medgen.classify import Classifier, build_model

    kw = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}
    net = build_model(
        "vit", spatial_dims=2, in_channels=1, num_classes=2, image_size=(32, 32), model_kwargs=kw
    )
    clf = Classifier(
        net,
        config={
            "model": "vit",
            "spatial_dims": 2,
            "in_channels": 1,
            "image_size": [32, 32],
            "classes": [0, 1],
            "target": "label",
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        res = explanations(clf, tiny_manifest, by=["sex"], split="train", n_boot=50, seed=1)
    assert res.provenance["method"] == "rollout"
    assert len(res.per_image) > 0 and res.per_image["energy"].notna().all()


# -- bad input --------------------------------------------------------------------------------------


def _copy_cohort(tiny_manifest: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame, int]:
    root = tmp_path / "cohort"
    shutil.copytree(tiny_manifest.parent, root)
    df = pd.read_csv(root / "manifest.csv")
    i = int(np.flatnonzero((df["lesion_fraction"] > 0) & (df["split"] == "test"))[0])
    return root, df, i


def test_mask_of_another_shape_is_an_error_naming_file_and_shapes(
    tiny_clf, tiny_manifest: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import medgen.io

    root, df, i = _copy_cohort(tiny_manifest, tmp_path)
    small = np.zeros((1, 16, 16), dtype=np.float32)
    small[0, 8, 8] = 1
    medgen.io.save(small, root / "masks" / "small_mask.nii.gz", format="nifti", affine=np.eye(4))
    df.loc[i, "mask_path"] = "masks/small_mask.nii.gz"
    df.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(MedgenValueError) as err:
        explanations(tiny_clf, root / "manifest.csv", n_boot=0)
    msg = str(err.value)
    assert "small_mask.nii.gz" in msg and "(column 'mask_path')" in msg
    assert "mask shape (1, 16, 16) vs image shape (1, 32, 32)" in msg


def test_mask_with_another_affine_is_an_error(
    tiny_clf, tiny_manifest: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import medgen.io

    root, df, i = _copy_cohort(tiny_manifest, tmp_path)
    mask = medgen.io.load(root / df.loc[i, "mask_path"])
    shifted = np.asarray(mask.affine, dtype=np.float64).copy()
    shifted[0, 3] += 12.0  # same grid size, moved 12 mm
    medgen.io.save(
        np.asarray(mask), root / "masks" / "moved_mask.nii.gz", format="nifti", affine=shifted
    )
    df.loc[i, "mask_path"] = "masks/moved_mask.nii.gz"
    df.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(MedgenValueError, match=r"moved_mask\.nii\.gz.*mask affine") as err:
        explanations(tiny_clf, root / "manifest.csv", n_boot=0)
    assert "image affine" in str(err.value)


def test_bad_arguments(tiny_clf, tiny_manifest: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MedgenValueError, match=r"mask_column='lesion_path': no such column"):
        explanations(tiny_clf, tiny_manifest, "lesion_path")
    with pytest.raises(MedgenValueError, match=r"by='ethnicity': no such column"):
        explanations(tiny_clf, tiny_manifest, by="ethnicity")
    with pytest.raises(MedgenValueError, match="Did you mean 'gradcam'"):
        explanations(tiny_clf, tiny_manifest, method="gradcm")
    with pytest.raises(MedgenValueError, match="no rows with split"):
        explanations(tiny_clf, tiny_manifest, split="holdout")


def test_overlay_figure_of_a_volume_shows_the_slice_with_most_lesion() -> None:
    import base64

    from medgen.audit._explanations import _figure

    rng = np.random.default_rng(0)
    vol = rng.random((1, 12, 12, 6))
    mask = np.zeros((1, 12, 12, 6))
    mask[0, 3:6, 3:6, 4] = 1
    png = base64.b64decode(_figure(vol, vol, mask, "3D"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
