"""Counterfactual renders: every subject also scanned at every other site, with every other
contrast and at other disease severities (issue 14)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.simulate import preset, render_subject, simulate

#: SHA-256 of manifest.csv and of the pixel data of every image and mask (decompressed) of
#: ``preset("tiny")`` with 12 subjects, seed 0, written by the simulator *before* counterfactuals
#: existed: the default output must not change.
MANIFEST_SHA256 = "2f4f42f30ac658d53f22807796e0fb65765c5aec4f9c32d3231c0c2439d3dfaf"
PIXELS_SHA256 = "b51f1ef144cf611712e6bc7704d1d4731cfdf1ec8971be8d278d582826ac9b2c"


def _cfg():  # type: ignore[no-untyped-def]
    cfg = preset("tiny")
    cfg.population.n_subjects = 12
    return cfg


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _pixels_sha(out: Path, names: list[str] | None = None) -> str:
    h = hashlib.sha256()
    files = sorted(out.glob("*/*.nii.gz"))
    if names is not None:
        files = [p for p in files if p.relative_to(out).as_posix() in names]
    for p in files:
        h.update(p.relative_to(out).as_posix().encode())
        h.update(_pixels(p).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(
        _cfg(), tmp_path_factory.mktemp("cf"), seed=0, progress=False, counterfactual=("site",)
    )


def test_default_output_unchanged(tmp_path: Path) -> None:
    manifest = simulate(_cfg(), tmp_path, seed=0, progress=False)
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == MANIFEST_SHA256
    assert _pixels_sha(tmp_path) == PIXELS_SHA256
    assert "counterfactual" not in json.loads((tmp_path / "simulation.json").read_text())


def test_factual_rows_and_files_equal_the_default(cf_run: Path) -> None:
    df = pd.read_csv(cf_run, keep_default_na=False)
    factual = df[df["counterfactual_of"] == ""].drop(columns="counterfactual_of")
    assert len(factual) == 12 and len(df) == 24  # two sites: one counterfactual each
    assert hashlib.sha256(factual.to_csv(index=False).encode()).hexdigest() == MANIFEST_SHA256
    names = [*factual["image_path"], *factual["mask_path"]]
    assert _pixels_sha(cf_run.parent, names) == PIXELS_SHA256
    side = json.loads((cf_run.parent / "simulation.json").read_text())
    assert side["n_subjects"] == 12 and side["counterfactual"]["n_images"] == 12


def test_counterfactual_rows_link_and_share_anatomy(cf_run: Path) -> None:
    from medgen import Cohort

    cohort = Cohort.from_manifest(cf_run)  # valid: a subject may have several images
    df = cohort.df
    cf = df[df["counterfactual_of"].notna()]
    by_id = df.set_index("image_id")
    root = cf_run.parent
    for _, row in cf.iterrows():
        fact = by_id.loc[row["counterfactual_of"]]
        assert row["image_id"] == f"{row['subject_id']}-cf-{row['site']}"
        assert row["site"] != fact["site"] and row["subject_id"] == fact["subject_id"]
        for col in ("split", "label", "severity", "sex", "age", "lesion_count", "source"):
            assert row[col] == fact[col], col
        np.testing.assert_array_equal(
            _pixels(root / row["mask_path"]), _pixels(root / fact["mask_path"])
        )
        a, b = _pixels(root / row["image_path"]), _pixels(root / fact["image_path"])
        assert a.shape == b.shape and not np.allclose(a, b)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.5  # same anatomy, other scanner
    assert (cf["lesion_count"] > 0).any()
    factual = cohort.select(counterfactual_of=None)
    assert len(factual.df) == 12 and factual.df["image_id"].str.endswith("-0").all()


def test_render_subject_site_argument() -> None:
    from medgen.simulate._bias import draw_cohort

    cfg = _cfg()
    table, _ = draw_cohort(cfg, 0)
    i = int(table.index[np.argmax(table["severity"].to_numpy())])
    row = table.loc[i].to_dict()
    same = render_subject(cfg, row, i, 0, site=row["site"])
    base = render_subject(cfg, row, i, 0)
    np.testing.assert_array_equal(same.image, base.image)
    other = "site_B" if row["site"] == "site_A" else "site_A"
    cf = render_subject(cfg, row, i, 0, site=other)
    assert cf.record["site"] == other and cf.mask.any()
    np.testing.assert_array_equal(cf.mask, base.mask)
    assert cf.params["lesions"] == base.params["lesions"]
    with pytest.raises(ConfigError, match="site 'site_Z' is not a site of the config"):
        render_subject(cfg, row, i, 0, site="site_Z")


def test_bad_counterfactual_and_resume_fingerprint(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"counterfactual attribute 'sex'.*supported: \['site', 'contrast', 'severity'\]",
    ):
        simulate(_cfg(), tmp_path / "a", progress=False, counterfactual=("sex",))
    with pytest.raises(ConfigError, match="Did you mean 'site'"):
        simulate(_cfg(), tmp_path / "a", progress=False, counterfactual="sites")
    with pytest.raises(ConfigError, match="counterfactual must be a sequence"):
        simulate(_cfg(), tmp_path / "a", progress=False, counterfactual=3)  # type: ignore[arg-type]
    # an interrupted default run is not finished by a counterfactual run (settings differ)
    out = tmp_path / "b"
    out.mkdir()
    fingerprint = {"config": _cfg().to_dict(), "seed": 0, "format": "nifti"}
    (out / "simulation.started.json").write_text(json.dumps(fingerprint))
    with pytest.raises(MedgenValueError, match="counterfactual differ"):
        simulate(_cfg(), out, seed=0, progress=False, counterfactual=("site",))
    simulate(_cfg(), out, seed=0, progress=False)  # same settings: restarted cleanly


def test_cli_counterfactual(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    args = ["simulate", "--preset", "tiny", "--n-subjects", "3", "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--counterfactual", "site", "--no-progress"])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "o" / "manifest.csv")
    assert len(df) == 6 and df["counterfactual_of"].notna().sum() == 3


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(
        _cfg(),
        tmp_path_factory.mktemp("cf2"),
        seed=0,
        progress=False,
        counterfactual=("contrast", "severity"),
    )


def test_contrast_counterfactuals(other_run: Path) -> None:
    df = pd.read_csv(other_run, keep_default_na=False)
    factual = df[df["counterfactual_of"] == ""].drop(columns="counterfactual_of")
    assert hashlib.sha256(factual.to_csv(index=False).encode()).hexdigest() == MANIFEST_SHA256
    cf = df[df["image_id"].str.contains("-cf-contrast-")]
    assert len(cf) == 12 * 2  # the tiny sites are FLAIR: a T1 and a T2 render each
    by_id = df.set_index("image_id")
    root = other_run.parent
    for _, row in cf.iterrows():
        fact = by_id.loc[row["counterfactual_of"]]
        assert row["image_id"] == f"{row['subject_id']}-cf-contrast-{row['contrast']}"
        assert row["site"] == fact["site"] and row["contrast"] != fact["contrast"]
        for col in ("split", "label", "severity", "lesion_count", "lesion_fraction"):
            assert row[col] == fact[col], col
        np.testing.assert_array_equal(
            _pixels(root / row["mask_path"]), _pixels(root / fact["mask_path"])
        )
    # T1 and T2 order the tissues oppositely: CSF (the ventricles) dark on T1, bright on T2
    sid = cf["subject_id"].iloc[0]
    t1 = _pixels(root / by_id.loc[f"{sid}-cf-contrast-t1", "image_path"])
    t2 = _pixels(root / by_id.loc[f"{sid}-cf-contrast-t2", "image_path"])
    brain = t1 > 0.3 * t1.max()
    assert np.corrcoef(t1[brain], t2[brain])[0, 1] < -0.3


def test_severity_counterfactuals(other_run: Path) -> None:
    df = pd.read_csv(other_run, keep_default_na=False)
    by_id = df.set_index("image_id")
    root = other_run.parent
    factual = df[df["counterfactual_of"] == ""]
    cf = df[df["image_id"].str.contains("-cf-severity-")]
    healthy = factual[factual["severity"] == 0]
    assert len(cf) == 3 * len(factual) - len(healthy)  # each of 0, 0.5, 1 but its own
    assert set(cf["severity"]) == {0.0, 0.5, 1.0}
    assert (cf["label"] == (cf["severity"] > 0).astype(int)).all()
    assert (cf["label_true"] == cf["label"]).all()
    for sid, fact in factual.set_index("subject_id").iterrows():
        x = _pixels(root / fact["image_path"])
        renders = {float(r["severity"]): r for _, r in cf[cf["subject_id"] == sid].iterrows()}
        if fact["severity"] == 0:  # healthy: the factual image is its severity-0 render
            assert set(renders) == {0.5, 1.0}
            renders[0.0] = fact
        else:
            assert by_id.loc[f"{sid}-cf-severity-0", "lesion_count"] == 0
        masks = {s: _pixels(root / r["mask_path"]) > 0 for s, r in renders.items()}
        assert not masks[0.0].any() and masks[1.0].any()
        assert masks[1.0].sum() >= masks[0.5].sum() > 0  # the same lesions, larger
        assert (masks[0.5] & ~masks[1.0]).sum() <= 2  # nested (a pixel of edge at most)
        img0 = _pixels(root / renders[0.0]["image_path"])
        img1 = _pixels(root / renders[1.0]["image_path"])
        far = ~_dilate(masks[1.0], 4)
        # the same anatomy, noise and bias field away from the lesions
        np.testing.assert_allclose(img0[far], img1[far], rtol=1e-3)  # lesion edge tails
        np.testing.assert_allclose(x[far], img0[far], rtol=1e-3)
        # lesions are hyperintense on FLAIR: brighter inside the mask at severity 1
        assert img1[masks[1.0]].mean() > img0[masks[1.0]].mean()


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage

    return np.asarray(ndimage.binary_dilation(mask, iterations=iterations))


def test_render_subject_contrast_and_severity_arguments() -> None:
    from medgen.simulate._bias import draw_cohort

    cfg = _cfg()
    table, _ = draw_cohort(cfg, 0)
    i = int(table.index[np.argmax(table["severity"].to_numpy())])
    row = table.loc[i].to_dict()
    base = render_subject(cfg, row, i, 0)
    np.testing.assert_array_equal(
        render_subject(cfg, row, i, 0, contrast="flair").image, base.image
    )
    np.testing.assert_array_equal(
        render_subject(cfg, row, i, 0, severity=float(row["severity"])).image, base.image
    )
    t1 = render_subject(cfg, row, i, 0, contrast="t1")
    assert t1.record["contrast"] == "t1" and t1.params["lesions"] == base.params["lesions"]
    with pytest.raises(ConfigError, match="contrast 't3' is not a contrast"):
        render_subject(cfg, row, i, 0, contrast="t3")
    with pytest.raises(ConfigError, match=r"severity must be a number in \[0, 1\]"):
        render_subject(cfg, row, i, 0, severity=1.5)


def test_cli_contrast_and_severity(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    args = ["simulate", "--preset", "tiny", "--n-subjects", "2", "-o", str(tmp_path / "o")]
    cf = ["--counterfactual", "contrast", "--counterfactual", "severity"]
    result = CliRunner().invoke(app, [*args, *cf, "--no-progress"])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(tmp_path / "o" / "manifest.csv")
    assert df["image_id"].str.contains("-cf-contrast-t2").sum() == 2
    assert df["image_id"].str.contains("-cf-severity-1").sum() == 2
    side = json.loads((tmp_path / "o" / "simulation.json").read_text())
    assert set(side["counterfactual"]["by_attribute"]) == {"contrast", "severity"}
