"""pix2pix, disease progression, the target-site rate, style transfer by a reference and 3D
translation (issue 14), on the tiny preset with site and severity counterfactuals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import Translator, evaluate_translation, load
from medgen.generative.translation import (
    PAIR_COLUMN,
    counterfactual_score_test,
    foreground_mask,
    robust_range,
    transfer_style,
)

A, B = {"site": "site_A"}, {"site": "site_B"}
TINY_PIX2PIX: dict[str, Any] = {"channels": (4, 8), "discriminator_channels": 4}
ENGINE: dict[str, Any] = {"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def cohort(simulate_counterfactual: Any) -> Any:
    from medgen.cohort import Cohort

    return Cohort.from_manifest(simulate_counterfactual("tiny_cf_sev", 40, ("site", "severity")))


@pytest.fixture(scope="module")
def pix2pix(cohort: Any) -> Translator:
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX)
    return t.fit(cohort, config=ENGINE)


def _pair_manifest(
    cohort: Any, folder: Path, *, crop: bool = False, shift: bool = False, only_a: bool = False
) -> Path:
    """The factual rows with a ``pair_path`` column (each site_A row: its site_B render), no
    counterfactual rows or column; ``crop`` writes the first pair's target cropped, ``shift``
    with another affine; ``only_a`` keeps the site_A rows only."""
    import medgen.io

    folder.mkdir(parents=True, exist_ok=True)
    df = cohort.df
    cf = df[df["counterfactual_of"].notna() & (df["site"] == "site_B")]
    cf = cf[cf["image_id"].str.endswith("-cf-site_B")]
    pair = dict(zip(cf["counterfactual_of"], cf["image_path"], strict=True))
    fact = df[df["counterfactual_of"].isna()].drop(columns="counterfactual_of").copy()
    fact[PAIR_COLUMN] = [pair.get(i, "") for i in fact["image_id"]]
    if only_a:
        fact = fact[fact["site"] == "site_A"]
    if crop or shift:
        first = fact[(fact[PAIR_COLUMN] != "") & (fact["split"] == "train")].index[0]
        img = medgen.io.load(fact.loc[first, PAIR_COLUMN])
        affine = img.affine.numpy().copy()
        if shift:
            affine[0, 3] += 12.0
        data = img[:, :, :16] if crop else img
        medgen.io.save(data, folder / "changed.nii.gz", affine=affine)
        fact.loc[first, PAIR_COLUMN] = "changed.nii.gz"
    fact.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_pix2pix_trains_on_counterfactual_pairs(pix2pix: Translator, tmp_path: Path) -> None:
    h = pix2pix.history
    assert pix2pix.steps_trained == 20 and len(h) == 2
    assert h[-1]["l1"] < h[0]["l1"] and h[-1]["loss_d"] > 0  # the PatchGAN trained too
    again = load(pix2pix.save(tmp_path / "p2p"))
    assert isinstance(again, Translator) and again.model == "pix2pix"
    assert again.pix2pix_options == TINY_PIX2PIX or again.pix2pix_options["channels"] == [4, 8]
    x = np.random.default_rng(2).normal(300, 50, (32, 32)).astype(np.float32)
    np.testing.assert_allclose(again.apply(x), pix2pix.apply(x), rtol=1e-5, atol=1e-3)
    d = pix2pix.description
    assert d == again.description and len(d) <= 64
    assert d.startswith("medgen translator pix2pix 2D site_A->site_B w=")
    assert d.endswith(pix2pix.weights_sha256[:12])
    assert Translator("histogram", source=A, target=B).description != d


def test_learned_run_folder_resumes(cohort: Any, pix2pix: Translator, tmp_path: Path) -> None:
    from medgen.errors import RunFolderError

    run = tmp_path / "run"
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX)
    t.fit(cohort, run_dir=run, config={**ENGINE, "epochs": 1})
    assert t.steps_trained == 10 and (run / "checkpoint.pt").is_file()
    assert load(run).steps_trained == 10
    with pytest.raises(RunFolderError):
        Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX).fit(
            cohort, run_dir=run, config=ENGINE
        )
    again = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX)
    again.fit(cohort, run_dir=run, config=ENGINE, resume=True)
    # 10 steps, then 10 more: the same model as 20 steps in one go
    assert again.steps_trained == 20 and again.weights_sha256 == pix2pix.weights_sha256
    assert load(run).weights_sha256 == pix2pix.weights_sha256
    with pytest.raises(ConfigError, match=r"resume \(CLI --resume\).*'histogram' has no"):
        Translator("histogram", source=A, target=B).fit(cohort, run_dir=run, resume=True)


def test_pix2pix_ct_range_and_geometry(pix2pix: Translator) -> None:
    import torch
    from monai.data import MetaTensor

    rng = np.random.default_rng(0)
    ct = np.full((32, 32), -1024.0, np.float32)
    yy, xx = np.mgrid[:32, :32]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 12**2
    ct[body] = 40 + 20 * rng.standard_normal(body.sum())
    ct[(yy - 16) ** 2 + (xx - 16) ** 2 < 3**2] = 3000.0
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    img = MetaTensor(torch.from_numpy(ct)[None], affine=torch.from_numpy(affine))
    out = pix2pix.apply(img)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    assert out.meta["translation"]["model"] == "pix2pix"
    arr = out.numpy()[0]
    assert arr.min() >= -1024 and arr.max() <= 3000 and arr.max() - arr.min() > 2000


def test_pix2pix_pair_column_finds_the_same_pairs(
    cohort: Any, pix2pix: Translator, tmp_path: Path
) -> None:
    manifest = _pair_manifest(cohort, tmp_path, only_a=True)  # source = every row: allowed
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX)
    t.fit(manifest, config=ENGINE)
    # the same training-split pairs, whether linked by counterfactual_of or by pair_path
    assert t.data_hash == pix2pix.data_hash and t.steps_trained == 20
    assert t.weights_sha256 == pix2pix.weights_sha256  # and a deterministic fit


def test_pix2pix_bad_pairs(cohort: Any, tmp_path: Path) -> None:
    t = Translator("pix2pix", source=A, target=B, patch_size=16, pix2pix=TINY_PIX2PIX)
    with pytest.raises(MedgenValueError, match=r"paired training needs aligned pairs.*shape"):
        t.fit(_pair_manifest(cohort, tmp_path / "c", crop=True), config=ENGINE)
    with pytest.raises(MedgenValueError, match=r"aligned pairs.*different affines"):
        t.fit(_pair_manifest(cohort, tmp_path / "s", shift=True), config=ENGINE)
    factual = cohort.df[cohort.df["counterfactual_of"].isna()].drop(columns="counterfactual_of")
    with pytest.raises(MedgenValueError, match=r"neither a 'pair_path' column"):
        t.fit(type(cohort).from_manifest(factual), config=ENGINE)
    with pytest.raises(MedgenValueError, match=r"no training-split image.*counterfactual render"):
        Translator("pix2pix", source=A, target={"site": "site_Z"}).fit(cohort)
    with pytest.raises(MedgenValueError, match=r"target_images\[0\] \(8, 8\)"):
        t.fit_images([np.ones((16, 16))], [np.ones((8, 8))])
    with pytest.raises(ConfigError, match="pix2pix option 'l1' is unknown"):
        Translator("pix2pix", source=A, target=B, pix2pix={"l1": 1.0})


def test_training_never_sees_counterfactuals(cohort: Any) -> None:
    factual = cohort.select(counterfactual_of=None)
    for model in ("histogram", "nyul"):
        with_cf = Translator(model, source={"label": 0}, target={"label": 1}).fit(cohort)
        without = Translator(model, source={"label": 0}, target={"label": 1}).fit(factual)
        assert with_cf.data_hash == without.data_hash


def test_evaluate_pix2pix_and_baselines(cohort: Any, pix2pix: Translator) -> None:
    table = evaluate_translation(pix2pix, cohort, baselines=("histogram", "nyul"))
    assert list(dict.fromkeys(table["method"])) == ["identity", "histogram", "nyul", "pix2pix"]
    assert table.groupby("method").size().nunique() == 1
    assert table["truth_id"].str.endswith("-cf-site_B").all()  # not a severity render
    means = table.groupby("method")["psnr"].mean()
    assert means["histogram"] > means["identity"]
    with pytest.raises(ConfigError, match="baselines must hold"):
        evaluate_translation(pix2pix, cohort, baselines=("histogramm",))


def test_disease_progression_evaluation(cohort: Any) -> None:
    healthy, diseased = {"label": 0}, {"label": 1}
    forward = Translator("histogram", source=healthy, target=diseased).fit(cohort)
    table = evaluate_translation(forward, cohort, split="train", truth={"severity": 1.0})
    assert table["truth_id"].str.endswith("-cf-severity-1").all()
    ident = table[table["method"] == "identity"]
    # the healthy image and its severity-1 render: the same anatomy away from the lesions,
    # different inside them
    assert ident["psnr_outside"].min() > 40 and (ident["psnr_lesion"] < 35).all()
    assert (ident["psnr_outside"] > ident["psnr_lesion"] + 10).all()
    assert ident["lesion_contrast_ratio"].abs().max() < 0.5  # no lesion in the identity
    backward = Translator("histogram", source=diseased, target=healthy).fit(cohort)
    table = evaluate_translation(backward, cohort, split="train")
    assert table["truth_id"].str.endswith("-cf-severity-0").all()
    assert table["lesion_contrast_ratio"].isna().all()  # the truth has no lesion
    assert table["psnr_lesion"].notna().all()  # the source's lesions: should disappear


def test_progression_between_severity_bins(cohort: Any) -> None:
    mild, severe = {"severity": {"min": 0.01, "max": 0.6}}, {"severity": {"min": 0.6}}
    t = Translator("histogram", source=mild, target=severe).fit(cohort)
    df = cohort.df[(cohort.df["split"] == "train") & cohort.df["counterfactual_of"].isna()]
    from medgen.io import load as load_image

    sev = df["severity"]
    bins = [df[(sev >= 0.01) & (sev <= 0.6)], df[sev >= 0.6]]
    assert all(len(b) > 0 for b in bins)
    a, b = ([load_image(p).numpy()[0] for p in d["image_path"]] for d in bins)
    same = Translator("histogram", source=mild, target=severe).fit_images(a, b)
    assert same.data_hash == t.data_hash  # the bins select exactly these training rows
    assert t.description.startswith("medgen translator histogram 2D 0.01..0.6->0.6..")
    table = evaluate_translation(t, cohort, split="train")
    assert table["truth_id"].str.endswith("-cf-severity-1").all()  # the render in the bin
    with pytest.raises(ConfigError, match=r"a range is a dict with numeric 'min' and/or 'max'"):
        Translator("histogram", source={"severity": {"low": 0}}, target=severe)


def test_counterfactual_score_test(cohort: Any) -> None:
    t = Translator("histogram", source={"label": 0}, target={"label": 1}).fit(cohort)
    table = counterfactual_score_test(lambda x: float(x.mean()), t, cohort, steps=3)
    assert table.groupby("image").size().eq(3).all()
    summary = table.attrs["summary"]
    # the mean moves linearly with alpha: rank correlation +-1, up exactly when T(x) is brighter
    from medgen.io import load as load_image

    rows = cohort.df[(cohort.df["split"] == "test") & cohort.df["counterfactual_of"].isna()]
    rows = rows[rows["label"] == 0]
    ups = [
        t.apply(load_image(p).numpy()[0]).mean() > load_image(p).numpy()[0].mean()
        for p in rows["image_path"]
    ]
    assert summary["n_images"] == len(rows) and summary["rising_fraction"] == np.mean(ups)
    assert abs(summary["mean_spearman"]) == pytest.approx(abs(2 * np.mean(ups) - 1))
    with pytest.raises(ConfigError, match="steps must be an integer >= 2"):
        counterfactual_score_test(lambda x: 0.0, t, cohort, steps=1)


def test_target_site_rate(cohort: Any) -> None:
    t = Translator("histogram", source=A, target=B).fit(cohort)
    table = evaluate_translation(t, cohort, split="val", target_classifier=True)
    info = table.attrs["target_classifier"]
    assert {"target_score", "target_rate"} <= set(table.columns)
    assert set(table["target_rate"]) <= {0.0, 1.0}
    rate = table.groupby("method")["target_rate"].mean()
    # the classifier (trained on the real site_A and site_B training images) tells the sites
    # apart: it calls the truth (site_B renders) site_B far more often than the site_A images
    assert info["accuracy_val"] > 0.6 and info["n_train"] == 28
    assert info["truth_rate"] > rate["identity"] + 0.5, (info, rate)


def test_style_transfer_by_reference(cohort: Any) -> None:
    from skimage.exposure import match_histograms

    from medgen.io import load as load_image

    paths = list(cohort.select(counterfactual_of=None, split="test").df["image_path"][:2])
    x, ref = (load_image(p).numpy()[0] for p in paths)
    lo, hi = robust_range(x)
    u = (x - lo) / (hi - lo)
    r = (ref - robust_range(ref)[0]) / (robust_range(ref)[1] - robust_range(ref)[0])
    expected = u.astype(np.float64)
    fg = foreground_mask(u)
    quantiles = np.quantile(r[foreground_mask(r)], np.linspace(0, 1, 1024))
    expected[fg] = match_histograms(u[fg].astype(np.float64), quantiles)
    expected = lo + np.clip(expected, min(u.min(), 0), max(u.max(), 1)) * (hi - lo)
    np.testing.assert_allclose(transfer_style(x, ref), expected, rtol=1e-5, atol=1e-3)
    unfitted = Translator("histogram", source=A, target=B)
    img = load_image(paths[0])
    out = unfitted.apply(img, reference=ref)
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=1e-5, atol=1e-3)
    assert out.meta["translation"]["reference"] is True
    with pytest.raises(ConfigError, match=r"reference=.*model='histogram'.*transfer_style"):
        Translator("nyul", source=A, target=B).apply(x, reference=ref)


def test_2d_model_on_volumes_needs_slices(pix2pix: Translator) -> None:
    rng = np.random.default_rng(3)
    vol = rng.normal(100, 20, (32, 32, 3)).astype(np.float32)
    with pytest.raises(MedgenValueError, match=r"works on 2D images.*pass slices=True"):
        pix2pix.apply(vol)
    out = pix2pix.apply(vol, slices=True)
    lo, hi = robust_range(vol)
    for k in range(3):  # each slice translated in the volume's own scale
        u = (vol[..., k] - lo) / (hi - lo)
        exp = pix2pix.translate_scaled(u)
        exp = np.clip(
            exp, min((vol - lo).min() / (hi - lo), 0), max((vol - lo).max() / (hi - lo), 1)
        )
        np.testing.assert_allclose(out[..., k], lo + exp * (hi - lo), rtol=1e-3, atol=0.2)


@pytest.mark.parametrize("model", ["pix2pix", "cyclegan"])
def test_3d_patches_and_sliding_window(model: str) -> None:
    rng = np.random.default_rng(4)
    zz, yy, xx = np.mgrid[:20, :20, :20]
    sphere = ((zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 < 7**2).astype(np.float32)
    a = [
        sphere * rng.uniform(0.8, 1.2) + 0.05 * rng.standard_normal(sphere.shape) for _ in range(3)
    ]
    b = [1.0 - 0.5 * x for x in a]  # an inverted contrast, on the same grid
    opts = {"channels": (4, 8), "discriminator_channels": 4}
    extra = {"cyclegan": {**opts, "pool_size": 2}} if model == "cyclegan" else {"pix2pix": opts}
    t = Translator(model, source=A, target=B, spatial_dims=3, patch_size=16, **extra)
    config = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 2, "device": "cpu"}
    t.fit_images(a, b, config=config)
    out = t.apply(a[0] * 1000.0)
    assert out.shape == (20, 20, 20) and np.isfinite(out).all()
    assert out.min() >= (a[0] * 1000).min() - 1e-3 and out.max() <= (a[0] * 1000).max() + 1e-3
    with pytest.raises(MedgenValueError, match="train with spatial_dims=2 for 2D images"):
        t.apply(np.zeros((20, 20), np.float32))


def test_per_slice_table_of_volumes(cohort: Any, tmp_path: Path) -> None:
    """3D cohorts: ``per_slice=True`` adds one row per foreground slice, scored on that slice
    alone (checked against the definitions), after each volume's own row (slice NaN)."""
    from skimage.metrics import peak_signal_noise_ratio

    from medgen.cohort import Cohort
    from medgen.generative.translation import MIN_SLICE_FOREGROUND
    from medgen.io import load as load_image
    from medgen.simulate import preset, simulate

    cfg = preset("demo3d")
    cfg.population.n_subjects = 12
    cfg.anatomy.spacing_mm = 8.0
    c3d = Cohort.from_manifest(
        simulate(cfg, tmp_path / "c3d", seed=0, progress=False, counterfactual=("site",))
    )
    sites = sorted(c3d.df["site"].unique())
    t = Translator("histogram", source={"site": sites[0]}, target={"site": sites[1]})
    t.fit(c3d)
    whole = evaluate_translation(t, c3d, split="train")
    table = evaluate_translation(t, c3d, split="train", per_slice=True)
    vol_rows = table[table["slice"].isna()].drop(columns="slice").reset_index(drop=True)
    assert vol_rows.equals(whole)  # the volume rows are the table without per_slice
    sl = table[table["slice"].notna() & (table["method"] == "identity")]
    first = sl.iloc[0]
    truth = load_image(c3d.df.set_index("image_id").loc[first["truth_id"], "image_path"]).numpy()[0]
    x = load_image(c3d.df.set_index("image_id").loc[first["image_id"], "image_path"]).numpy()[0]
    k = int(first["slice"])
    lo, hi = robust_range(truth[..., k])
    tu = (truth[..., k] - lo) / (hi - lo)
    lo, hi = robust_range(x[..., k])
    xu = (x[..., k] - lo) / (hi - lo)
    fg = foreground_mask(tu)
    assert fg.sum() >= MIN_SLICE_FOREGROUND
    expected = peak_signal_noise_ratio(tu[fg], xu[fg], data_range=1.0)
    assert first["psnr"] == pytest.approx(expected, rel=1e-5)
    per_image = sl.groupby("image_id")["slice"].count()
    assert (per_image > 1).all() and (per_image < truth.shape[-1] + 1).all()
    with pytest.raises(MedgenValueError, match="per_slice=True scores the slices of volumes"):
        evaluate_translation(
            Translator("histogram", source=A, target=B).fit(cohort), cohort, per_slice=True
        )
