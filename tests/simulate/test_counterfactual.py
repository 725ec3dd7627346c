"""Counterfactual renders: every subject also scanned at every other site (issue 14)."""

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
    with pytest.raises(ConfigError, match=r"counterfactual attribute 'sex'.*supported: \['site'\]"):
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
