"""Tests of medgen.simulate: config validation, cohort statistics, output files, determinism."""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.simulate import (
    BiasConfig,
    SimulationConfig,
    iter_subjects,
    preset,
    simulate,
)
from medgen.simulate._bias import draw_cohort


def _hashes(folder: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.nii.gz"))
    }


# ------------------------------------------------------------------ config
def test_config_roundtrip_dict_and_yaml(tmp_path: pathlib.Path) -> None:
    cfg = preset("demo")
    again = SimulationConfig.from_dict(cfg.to_dict())
    assert again == cfg
    path = tmp_path / "demo.yaml"
    cfg.to_yaml(path)
    assert SimulationConfig.from_yaml(path) == cfg
    assert SimulationConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"population": {"sex": {"F": 0.5, "M": 0.6}}},
            "population.sex: proportions must sum to 1",
        ),
        ({"disease": {"prevalence": 1.5}}, "disease.prevalence must be in [0, 1], not 1.5"),
        (
            {"biases": [{"mechanism": "shortcut", "attribute": "ethnicity", "group": "A"}]},
            "biases[0]: unknown attribute 'ethnicity'",
        ),
        (
            {"biases": [{"mechanism": "shortcut", "attribute": "sex", "group": "X"}]},
            "attribute 'sex' has no group 'X'",
        ),
        ({"biases": [{"mechanism": "shortcutt"}]}, "Did you mean 'shortcut'?"),
        ({"sites": [{"contrast": "t3"}]}, "sites[0].contrast must be one of"),
        ({"anatomy": {"modee": "2d"}}, "anatomy: unknown field 'modee'"),
        (
            {"biases": [{"mechanism": "acquisition_shift", "params": {"site": "nowhere"}}]},
            "params['site'] must name a configured site",
        ),
        ({"split": {"train": 0.9}}, "split fractions must sum to 1"),
    ],
)
def test_bad_config_raises_named_error(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimulationConfig.from_dict(data)
    assert message in str(info.value)


def test_bad_config_writes_nothing(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="prevalence"):
        simulate({"disease": {"prevalence": -0.1}}, out, progress=False)
    assert not out.exists()


def test_unknown_preset_lists_names() -> None:
    known = r"\['demo', 'demo-underrep', 'demo3d', 'tiny', 'tiny-underrep'\]"
    with pytest.raises(ConfigError, match=rf"known presets are {known}"):
        preset("tinny")


# ------------------------------------------------------------------ cohort table
def test_group_sizes_and_prevalence_within_sampling_error() -> None:
    cfg = SimulationConfig.from_dict(
        {
            "population": {
                "n_subjects": 4000,
                "sex": {"F": 0.3, "M": 0.7},
                "attributes": {"handedness": {"R": 0.8, "L": 0.2}},
            },
            "sites": [
                {"name": "a", "proportion": 0.25},
                {"name": "b", "proportion": 0.75},
            ],
            "disease": {"prevalence": 0.3, "prevalence_by": {"sex": {"F": 0.1, "M": 0.5}}},
        }
    )
    table, _ = draw_cohort(cfg, seed=1)
    n = len(table)

    def within(observed: float, expected: float, count: int) -> None:
        se = np.sqrt(expected * (1 - expected) / count)
        assert abs(observed - expected) < 4 * se, (observed, expected)

    within((table["sex"] == "F").mean(), 0.3, n)
    within((table["handedness"] == "L").mean(), 0.2, n)
    within((table["site"] == "a").mean(), 0.25, n)
    for sex, prev in (("F", 0.1), ("M", 0.5)):
        sub = table[table["sex"] == sex]
        within(sub["label_true"].mean(), prev, len(sub))
    assert table["age"].between(20, 90).all()
    assert set(table["split"]) == {"train", "val", "test"}
    within((table["split"] == "train").mean(), 0.7, n)


def test_bias_mechanisms_realised_in_table() -> None:
    cfg = SimulationConfig.from_dict(
        {
            "population": {"n_subjects": 3000, "attributes": {"grp": {"a": 0.5, "b": 0.5}}},
            "sites": [{"name": "s1", "proportion": 0.5}, {"name": "s2", "proportion": 0.5}],
            "disease": {"prevalence": 0.5},
            "biases": [
                {
                    "mechanism": "under_representation",
                    "attribute": "grp",
                    "group": "b",
                    "strength": 0.6,
                },
                {"mechanism": "under_diagnosis", "attribute": "sex", "group": "F", "strength": 0.5},
                {
                    "mechanism": "acquisition_shift",
                    "attribute": "sex",
                    "group": "M",
                    "strength": 0.8,
                    "params": {"site": "s2"},
                },
                {"mechanism": "shortcut", "attribute": "grp", "group": "a", "strength": 0.9},
                {"mechanism": "presentation", "attribute": "sex", "group": "F", "strength": 0.4},
            ],
        }
    )
    t, gt = draw_cohort(cfg, seed=0)
    # under-representation: b's share 0.5*0.4 / (0.5 + 0.2) = 0.2857
    assert abs((t["grp"] == "b").mean() - 0.2 / 0.7) < 0.03
    f_pos = t[(t["sex"] == "F") & (t["label_true"] == 1)]
    assert abs(f_pos["label"].mean() - 0.5) < 0.06
    m_pos = t[(t["sex"] == "M") & (t["label_true"] == 1)]
    assert (m_pos["label"] == 1).all()
    assert abs((t[t["sex"] == "M"]["site"] == "s2").mean() - 0.9) < 0.03  # 0.8 + 0.2*0.5
    assert abs((t[t["sex"] == "F"]["site"] == "s2").mean() - 0.5) < 0.05
    a = t[t["grp"] == "a"]
    assert abs(a[a["label"] == 1]["marker"].mean() - 0.9) < 0.04
    assert a[a["label"] == 0]["marker"].sum() == 0
    assert t[t["grp"] == "b"]["marker"].sum() == 0
    assert set(t[t["sex"] == "F"]["presentation"]) == {0.6}
    assert set(t[t["sex"] == "M"]["presentation"]) == {1.0}
    by_name = {g["mechanism"]: g for g in gt}
    assert by_name["under_diagnosis"]["n_relabelled_negative"] == int(
        ((t["sex"] == "F") & (t["label_true"] == 1) & (t["label"] == 0)).sum()
    )
    assert by_name["acquisition_shift"]["site_share_in_group"] > 0.85


# ------------------------------------------------------------------ images
def test_tiny_output_files_and_geometry(tiny_manifest: pathlib.Path) -> None:
    import medgen.io

    out = tiny_manifest.parent
    m = pd.read_csv(tiny_manifest)
    cfg = preset("tiny")
    assert len(m) == cfg.population.n_subjects
    for col in (
        "image_id",
        "image_path",
        "subject_id",
        "split",
        "source",
        "label",
        "severity",
        "sex",
        "age",
        "age_group",
        "site",
        "handedness",
        "mask_path",
    ):
        assert col in m.columns
    assert (m["source"] == "simulated").all()
    assert m["image_id"].is_unique
    assert ((m["severity"] > 0) == (m["label_true"] == 1)).all()
    row = m[m["label_true"] == 1].iloc[0]
    img = medgen.io.load(out / row["image_path"])
    assert tuple(img.shape) == (1, 32, 32)
    spacing = 192.0 / 32
    np.testing.assert_allclose(np.asarray(img.meta["spacing"])[:2], [spacing, spacing])
    aff = np.asarray(img.affine)
    # slice height recorded in the manifest is the world z of the image
    np.testing.assert_allclose(aff[2, 3], row["slice_z_mm"], atol=1e-3)
    mask = medgen.io.load(out / row["mask_path"])
    np.testing.assert_allclose(np.asarray(mask.affine), aff)
    assert float(mask.sum()) > 0
    # lesions are brighter than the rest of the brain on FLAIR
    arr, msk = np.asarray(img[0]), np.asarray(mask[0]) > 0
    brain = arr > 0.3 * arr.max()
    assert arr[msk].mean() > arr[brain & ~msk].mean()
    side = json.loads((out / "simulation.json").read_text())
    assert side["seed"] == cfg.seed
    assert side["config"] == cfg.to_dict()
    assert side["ground_truth"]["biases"][0]["mechanism"] == "presentation"
    assert "numpy" in side["versions"]


def test_same_seed_byte_identical_and_other_seed_differs(
    tiny_manifest: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    again = simulate(preset("tiny"), tmp_path / "again", progress=False)
    assert _hashes(tiny_manifest.parent) == _hashes(again.parent)
    assert tiny_manifest.read_bytes() == again.read_bytes()
    cfg = preset("tiny")
    cfg.population.n_subjects = 5
    other = simulate(cfg, tmp_path / "other", seed=cfg.seed + 1, progress=False)
    first = _hashes(tiny_manifest.parent)
    for name, digest in _hashes(other.parent).items():
        if name.startswith("images/"):
            assert first[name] != digest


def test_3d_mode_volume_and_atrophy_disease() -> None:
    cfg = SimulationConfig.from_dict(
        {
            "population": {"n_subjects": 2},
            "anatomy": {"mode": "3d", "fov_mm": 192.0, "spacing_mm": 6.0},
            "disease": {"effect": "atrophy", "prevalence": 1.0, "severity": [1.0, 1.0]},
        }
    )
    subjects = list(iter_subjects(cfg, seed=0))
    s = subjects[0]
    assert s.image.shape == (32, 32, 32)
    assert s.mask.shape == (32, 32, 32) and s.mask.sum() > 0
    np.testing.assert_allclose(np.diag(s.affine)[:3], [6.0, 6.0, 6.0])


def test_3d_nifti_output_loads_as_volume(tmp_path: pathlib.Path) -> None:
    import medgen.io

    cfg = SimulationConfig.from_dict(
        {"population": {"n_subjects": 2}, "anatomy": {"mode": "3d", "spacing_mm": 8.0}}
    )
    manifest = simulate(cfg, tmp_path, progress=False)
    row = pd.read_csv(manifest).iloc[0]
    img = medgen.io.load(tmp_path / row["image_path"])
    assert tuple(img.shape) == (1, 24, 24, 24)
    np.testing.assert_allclose(np.asarray(img.meta["spacing"]), [8.0, 8.0, 8.0])
    # the grid is centred on the brain: the centre voxel maps near MNI (0, -18, 8) mm
    centre = np.asarray(img.affine) @ np.array([11.5, 11.5, 11.5, 1.0])
    np.testing.assert_allclose(centre[:3], [0.0, -18.0, 8.0], atol=1e-6)


def test_age_drives_atrophy_and_ventricles() -> None:
    """Older subjects (same seed, noise off) have less grey matter signal and more CSF."""
    from medgen.simulate._simulate import render_subject

    cfg = SimulationConfig.from_dict(
        {
            "sites": [{"noise_sigma": 0.0, "bias_field": 0.0, "contrast": "t1"}],
            "anatomy": {"intensity_jitter": 0.0},
        }
    )
    row = {
        "subject_id": "x",
        "sex": "F",
        "age": 25.0,
        "site": "site_A",
        "severity": 0.0,
        "presentation": 1.0,
        "marker": 0,
        "label_true": 0,
        "label": 0,
    }
    young = render_subject(cfg, row, 0, seed=0).image
    old = render_subject(cfg, {**row, "age": 85.0}, 0, seed=0).image
    brain = young > 0.05
    # T1: CSF is dark, so atrophy (GM -> CSF) and larger ventricles lower the mean brain signal
    assert old[brain].mean() < young[brain].mean() - 0.02
    assert (old[brain] < 0.3).sum() > 1.2 * (young[brain] < 0.3).sum()


def test_bias_naming_a_user_attribute_roundtrips() -> None:
    cfg = preset("tiny")
    cfg.biases.append(
        BiasConfig(mechanism="shortcut", attribute="handedness", group="L", strength=1.0)
    )
    cfg.validate()
    t, gt = draw_cohort(cfg, seed=0)
    left_pos = t[(t["handedness"] == "L") & (t["label"] == 1)]
    assert (left_pos["marker"] == 1).all()
    assert gt[-1]["marker_rate_positives"] == 1.0


# ------------------------------------------------------------------ DICOM and CLI
def test_dicom_output_carries_attributes_and_scan_recovers_them(tmp_path: pathlib.Path) -> None:
    import medgen.io

    cfg = preset("tiny")
    cfg.population.n_subjects = 6
    manifest = simulate(cfg, tmp_path / "dcm", format="dicom", progress=False)
    m = pd.read_csv(manifest)
    row = m.iloc[0]
    img = medgen.io.load(manifest.parent / row["image_path"])
    assert tuple(img.shape) == (1, 32, 32, 1)
    assert img.meta["PatientSex"] == row["sex"]
    assert img.meta["PatientAge"] == f"{int(row['age']):03d}Y"
    assert img.meta["InstitutionName"] == row["site"]
    assert img.meta["Manufacturer"] == row["manufacturer"]
    found, errors = medgen.io.scan(manifest.parent / "images")
    assert errors.empty and len(found) == len(m)
    by_sex = found.sort_values("image_path")["sex"].tolist()
    assert by_sex == m.sort_values("image_path")["sex"].tolist()
    # the institution is pseudonymised by default (one pseudonym per site), named on request
    assert found["site"].nunique() == m["site"].nunique()
    assert set(found["site"]).isdisjoint(set(m["site"]))
    named, _ = medgen.io.scan(manifest.parent / "images", retain=["institution_identity"])
    assert set(named["site"]) == set(m["site"])


def test_cli_simulate_tiny_and_bad_config(tmp_path: pathlib.Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--preset",
            "tiny",
            "-o",
            str(out),
            "--seed",
            "5",
            "--n-subjects",
            "6",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    side = json.loads((out / "simulation.json").read_text())
    assert side["seed"] == 5 and side["n_subjects"] == 6
    assert len(pd.read_csv(out / "manifest.csv")) == 6

    bad = tmp_path / "bad.yaml"
    bad.write_text("population:\n  sex: {F: 0.5, M: 0.4}\n")
    result = runner.invoke(app, ["simulate", "--config", str(bad), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "population.sex: proportions must sum to 1" in result.output
    assert not (tmp_path / "x").exists()


def test_example_yaml_with_every_mechanism_records_ground_truth() -> None:
    from medgen.simulate import BIAS_MECHANISMS

    path = pathlib.Path(__file__).parents[2] / "medgen/simulate/examples/all_mechanisms.yaml"
    cfg = SimulationConfig.from_yaml(path)
    table, gt = draw_cohort(cfg, cfg.seed)
    assert {g["mechanism"] for g in gt} == set(BIAS_MECHANISMS)
    by_name = {g["mechanism"]: g for g in gt}
    assert by_name["under_representation"]["effective_proportion"] == pytest.approx(0.25)
    shift = by_name["acquisition_shift"]
    assert shift["site_share_in_group"] > shift["site_share_outside_group"] + 0.4
    short = by_name["shortcut"]
    assert short["marker_rate_positives"] > short["marker_rate_negatives"] + 0.5
    young = table[table["age_group"] == "20-49"]["label_true"].mean()
    old = table[table["age_group"] == "70-90"]["label_true"].mean()
    assert old > young + 0.2


def test_manifest_is_a_valid_cohort(tiny_manifest: pathlib.Path) -> None:
    from medgen import Cohort

    cohort = Cohort.from_manifest(tiny_manifest)
    assert len(cohort.df) == preset("tiny").population.n_subjects
    # splits are subject level and all three are present
    assert set(cohort.df["split"]) == {"train", "val", "test"}
    assert cohort.df.groupby("subject_id")["split"].nunique().max() == 1


def test_conditional_attribute_distribution() -> None:
    cfg = SimulationConfig.from_dict(
        {
            "population": {
                "n_subjects": 4000,
                "attributes": {"smoker": {"yes": 0.2, "no": 0.8}},
                "conditional": {"smoker": {"sex": {"M": {"yes": 0.5, "no": 0.5}}}},
            }
        }
    )
    t, _ = draw_cohort(cfg, seed=0)
    rate = t.groupby("sex")["smoker"].apply(lambda s: (s == "yes").mean())
    assert abs(rate["F"] - 0.2) < 0.03 and abs(rate["M"] - 0.5) < 0.04
    with pytest.raises(ConfigError, match="cannot condition on 'site'"):
        SimulationConfig.from_dict(
            {
                "population": {
                    "attributes": {"smoker": {"yes": 0.2, "no": 0.8}},
                    "conditional": {"smoker": {"site": {"site_A": {"yes": 1.0, "no": 0.0}}}},
                }
            }
        )
    with pytest.raises(ConfigError, match="must be those of"):
        SimulationConfig.from_dict(
            {
                "population": {
                    "attributes": {"smoker": {"yes": 0.2, "no": 0.8}},
                    "conditional": {"smoker": {"sex": {"F": {"yes": 0.5, "maybe": 0.5}}}},
                }
            }
        )


def test_rerun_needs_overwrite_and_leaves_no_stale_images(tmp_path: pathlib.Path) -> None:
    """A smaller rerun into a used folder must not leave the larger run's images behind."""
    out = tmp_path / "sim"
    big = preset("tiny")
    big.population.n_subjects = 6
    simulate(big, out, progress=False)
    small = preset("tiny")
    small.population.n_subjects = 3
    with pytest.raises(MedgenValueError, match=r"already holds a simulation.*overwrite=True"):
        simulate(small, out, progress=False)
    assert len(pd.read_csv(out / "manifest.csv")) == 6  # the refused run changed nothing
    (out / "notes.txt").write_text("mine")
    manifest = simulate(small, out, progress=False, overwrite=True)
    listed = set(pd.read_csv(manifest)["image_path"])
    assert {f"images/{p.name}" for p in (out / "images").iterdir()} == listed
    assert len(listed) == 3
    assert (out / "notes.txt").read_text() == "mine"  # files that are not outputs survive


def test_never_clears_a_folder_that_is_not_a_simulation(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "scan.nii.gz").write_bytes(b"precious")
    for overwrite in (False, True):
        with pytest.raises(MedgenValueError, match=r"holds no previous simulation"):
            simulate(preset("tiny"), data, progress=False, overwrite=overwrite)
    assert (data / "scan.nii.gz").read_bytes() == b"precious"
    assert sorted(p.name for p in data.iterdir()) == ["scan.nii.gz"]


# ------------------------------------------------------------------ interrupted runs
_KILLABLE = """
import sys
from medgen.simulate import preset, simulate
cfg = preset("tiny")
cfg.population.n_subjects = int(sys.argv[2])
simulate(cfg, sys.argv[1], progress=False)
"""


def _start_and_kill(out: pathlib.Path, n: int, after_images: int) -> None:
    """Run a simulation in a subprocess and SIGKILL it once ``after_images`` images exist."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(out), str(n)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            images = out / "images"
            if (
                images.is_dir()
                and len([p for p in images.iterdir() if not p.name.startswith(".")]) >= after_images
            ):
                break
            if proc.poll() is not None:
                pytest.fail("the simulation finished before it could be interrupted")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def test_a_killed_simulation_reruns_into_its_folder(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "sim"
    _start_and_kill(out, n=40, after_images=3)
    assert not (out / "manifest.csv").exists()  # killed: no manifest, no completion marker
    from medgen._internal.runs import check_complete

    with pytest.raises(MedgenValueError, match="holds no finished run"):
        check_complete(out, what="simulation")
    cfg = preset("tiny")
    cfg.population.n_subjects = 40
    manifest = simulate(cfg, out, progress=False)  # the same command again: restarts cleanly
    clean = simulate(cfg, tmp_path / "uninterrupted", progress=False)
    assert _hashes(out) == _hashes(clean.parent)
    assert manifest.read_bytes() == clean.read_bytes()
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers == [] and not (out / "simulation.started.json").exists()
    check_complete(out, what="simulation")


def test_an_interrupted_simulation_with_other_settings_needs_overwrite(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "sim"
    _start_and_kill(out, n=40, after_images=2)
    other = preset("tiny")
    other.population.n_subjects = 5
    with pytest.raises(MedgenValueError, match="interrupted simulation with other settings"):
        simulate(other, out, progress=False)
    manifest = simulate(other, out, progress=False, overwrite=True)
    assert len(pd.read_csv(manifest)) == 5 and len(list((out / "images").iterdir())) == 5


def test_two_simulations_into_one_folder_the_second_fails_fast(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys
    import time

    from medgen.errors import RunLockedError

    out = tmp_path / "sim"
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(out), "60"])
    try:
        while not (out / "simulation.started.json").exists():
            assert proc.poll() is None
            time.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            simulate(preset("tiny"), out, progress=False)
        assert time.perf_counter() - t0 < 5
    finally:
        proc.kill()
        proc.wait()
