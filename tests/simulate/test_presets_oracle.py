"""Ground truth for the augmentation study: ``scarce_positives``, the ``*-underrep`` presets, and
the oracle generator :class:`medgen.simulate.SimulatedGenerator`."""

from __future__ import annotations

import hashlib
import json
import pathlib
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medgen.errors import (
    ConfigError,
    MedgenFileNotFoundError,
    MedgenValueError,
    OutputPathError,
)
from medgen.simulate import (
    PRESETS,
    SimulatedGenerator,
    SimulationConfig,
    preset,
    render_subject,
    simulate,
)
from medgen.simulate._bias import draw_cohort


def _without_scarcity(cfg: SimulationConfig) -> SimulationConfig:
    for b in cfg.biases:
        if b.mechanism == "scarce_positives":
            b.strength = 0.0
    return cfg


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pixels(path: pathlib.Path) -> bytes:
    return np.ascontiguousarray(nib.load(path).dataobj, dtype=np.float32).tobytes()


@pytest.fixture(scope="module")
def underrep(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The ``tiny-underrep`` preset simulated end to end (seed 0): its manifest path."""
    t0 = time.perf_counter()
    path = simulate(preset("tiny-underrep"), tmp_path_factory.mktemp("underrep"), progress=False)
    assert time.perf_counter() - t0 < 20
    return path


@pytest.fixture(scope="module")
def oracle_manifest(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """12 oracle subjects of ``tiny-underrep`` (6 F positives, 6 unconditioned), split train."""
    gen = SimulatedGenerator("tiny-underrep")
    where = pd.DataFrame({"label": [1] * 6 + [None] * 6, "sex": ["F"] * 6 + [None] * 6})
    samples = gen.sample(None, where, seed=3)
    return gen.write(samples, tmp_path_factory.mktemp("oracle") / "out", split="train")


# ------------------------------------------------------------------ the mechanism
def test_scarce_positives_drops_only_the_groups_training_positives() -> None:
    cfg = SimulationConfig.from_dict(
        {
            "population": {"n_subjects": 3000, "attributes": {"grp": {"a": 0.6, "b": 0.4}}},
            "disease": {"prevalence": 0.4},
            "biases": [
                {"mechanism": "scarce_positives", "attribute": "grp", "group": "b", "strength": 0.6}
            ],
        }
    )
    table, gt = draw_cohort(cfg, seed=5)
    full, _ = draw_cohort(_without_scarcity(SimulationConfig.from_dict(cfg.to_dict())), seed=5)
    assert len(full) == 3000 and (full.index == np.arange(3000)).all()
    # every remaining subject is drawn exactly as without the mechanism (same index, same values)
    pd.testing.assert_frame_equal(table, full.loc[table.index])
    dropped = full.drop(index=table.index)
    assert (dropped["grp"] == "b").all() and (dropped["label"] == 1).all()
    assert (dropped["split"] == "train").all()
    candidates = full[(full["grp"] == "b") & (full["label"] == 1) & (full["split"] == "train")]
    assert len(dropped) == round(0.6 * len(candidates))
    for name in ("val", "test"):  # held-out splits keep everyone
        pd.testing.assert_frame_equal(table[table["split"] == name], full[full["split"] == name])
    # ground truth
    (g,) = gt
    assert g["mechanism"] == "scarce_positives"
    assert g["n_positives_in_group_train"] == len(candidates)
    assert g["n_dropped"] == len(dropped)
    assert g["rate"] == pytest.approx(0.6, abs=0.01)
    kept = table[(table["grp"] == "b") & (table["label"] == 1)]
    assert g["n_positives_in_group_train_after"] == int((kept["split"] == "train").sum())
    assert g["n_positives_in_group_test_after"] == int((kept["split"] == "test").sum())
    assert g["n_in_group"] == int((table["grp"] == "b").sum())


def test_scarce_positives_strength_0_and_1() -> None:
    cfg = preset("tiny-underrep")
    cfg.biases[0].strength = 0.0
    table, gt = draw_cohort(cfg, seed=0)
    assert len(table) == 80 and gt[0]["n_dropped"] == 0
    cfg.biases[0].strength = 1.0
    table, gt = draw_cohort(cfg, seed=0)
    b_pos = (table["site"] == "site_B") & (table["label"] == 1)
    assert not (b_pos & (table["split"] == "train")).any() and gt[0]["rate"] == 1.0
    assert (b_pos & (table["split"] == "test")).any()


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        (
            {"mechanism": "scarce_positives", "attribute": "sex", "group": "F", "strength": 1.5},
            "biases[0].strength must be in [0, 1], not 1.5",
        ),
        (
            {"mechanism": "scarce_positives", "attribute": "sexx", "group": "F"},
            "biases[0]: unknown attribute 'sexx'",
        ),
        (
            {"mechanism": "scarce_positives", "attribute": "sex", "group": "W"},
            "attribute 'sex' has no group 'W'",
        ),
        (
            {"mechanism": "scarce_positives", "params": {"site": "x"}},
            "scarce_positives takes no parameters",
        ),
        ({"mechanism": "scarce_positive"}, "Did you mean 'scarce_positives'?"),
    ],
)
def test_scarce_positives_validation(bias: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SimulationConfig.from_dict({"biases": [bias]})
    assert message in str(info.value)


# ------------------------------------------------------------------ presets
def test_presets_validate_and_inject_what_they_say() -> None:
    for name, site in (("demo-underrep", "site_C"), ("tiny-underrep", "site_B")):
        assert name in PRESETS
        cfg = preset(name)
        assert SimulationConfig.from_dict(cfg.to_dict()) == cfg
        assert [(b.mechanism, b.attribute, b.group) for b in cfg.biases] == [
            ("scarce_positives", "site", site)
        ]
    assert preset("demo-underrep").biases[0].strength == 0.85
    # the presentation presets are unchanged
    (bias,) = preset("demo").biases
    assert (bias.mechanism, bias.attribute, bias.group, bias.strength) == (
        "presentation",
        "sex",
        "F",
        0.5,
    )
    # demo-underrep is demo without the presentation bias, with scarce positives
    demo, under = preset("demo").to_dict(), preset("demo-underrep").to_dict()
    # ... with its scarce site T1-like and lesions anywhere in white matter
    assert [x["contrast"] for x in under["sites"]] == ["flair", "flair", "t1"]
    assert under["disease"]["lesion_location"] == "uniform"
    for d in (demo, under):
        d.pop("name"), d.pop("biases")
        d["sites"][2].pop("contrast"), d["disease"].pop("lesion_location")
    assert demo == under
    # demo-underrep: site-C positives rare in training only (per subject of the site)
    table, gt = draw_cohort(preset("demo-underrep"), seed=0)
    rate = table.assign(c=table["site"] == "site_C").groupby(["split", "c"])["label"].mean()
    assert rate["train", True] < 0.25 * rate["train", False]
    assert rate["test", True] > 0.7 * rate["test", False]
    assert gt[0]["rate"] == pytest.approx(0.85, abs=0.01)
    assert (table["presentation"] == 1.0).all()
    # tiny-underrep keeps at least 2 positives of site B in training, whatever the seed
    for seed in range(10):
        t, _ = draw_cohort(preset("tiny-underrep"), seed=seed)
        assert ((t["site"] == "site_B") & (t["label"] == 1) & (t["split"] == "train")).sum() >= 2


def test_tiny_underrep_end_to_end_and_other_images_unchanged(underrep: pathlib.Path) -> None:
    from medgen import Cohort

    cohort = Cohort.from_manifest(underrep)
    m = pd.read_csv(underrep)
    side = json.loads((underrep.parent / "simulation.json").read_text())
    (g,) = side["ground_truth"]["biases"]
    assert g["mechanism"] == "scarce_positives" and g["n_dropped"] > 0
    assert len(m) == len(cohort.df) == 80 - g["n_dropped"] == side["n_subjects"]
    b_pos = m[(m["site"] == "site_B") & (m["label"] == 1)]
    assert (b_pos["split"] == "train").sum() == g["n_positives_in_group_train_after"] >= 2
    # each remaining subject's image is bitwise the image it has without the mechanism
    cfg0 = _without_scarcity(preset("tiny-underrep"))
    full, _ = draw_cohort(cfg0, seed=0)
    assert set(m["subject_id"]) < set(full["subject_id"])
    number = {sid: i for i, sid in zip(full.index, full["subject_id"], strict=True)}
    for row in m.to_dict("records"):
        i = number[row["subject_id"]]
        expected = render_subject(cfg0, full.loc[i].to_dict(), i, 0)
        written = np.asarray(nib.load(underrep.parent / row["image_path"]).dataobj)
        np.testing.assert_array_equal(written, expected.image)
        mask = np.asarray(nib.load(underrep.parent / row["mask_path"]).dataobj)
        np.testing.assert_array_equal(mask, expected.mask)


# ------------------------------------------------------------------ the oracle
def test_oracle_protocol_and_population() -> None:
    gen = SimulatedGenerator("tiny-underrep")
    assert gen.conditions == ("label", "sex", "age_group", "site", "handedness")
    assert gen.training_image_ids == []
    assert gen.simulation_seed == 0
    # the true population: no recruitment loss, the config's other mechanisms kept
    assert [b.strength for b in gen.population_config.biases] == [0.0]
    assert preset("tiny-underrep").biases[0].strength == 0.7  # the caller's config untouched
    pop = gen.sample(600, seed=0).subjects
    women = pop[pop["sex"] == "F"]
    assert abs(women["label"].mean() - 0.5) < 0.08
    biased = SimulatedGenerator(preset("tiny")).sample(4, {"label": 1, "sex": "F"}, seed=0)
    assert (biased.subjects["presentation"] == 0.5).all()  # presentation bias is the population's


def test_oracle_conditions_respected_and_deterministic() -> None:
    gen = SimulatedGenerator(preset("tiny-underrep"))
    where = pd.DataFrame(
        {
            "label": [1, 1, 0, "1", 1.0, np.nan],
            "sex": ["F", "M", "F", "F", None, "M"],
            "site": ["site_B", None, None, None, "site_A", None],
        }
    )
    s = gen.sample(None, where, seed=7)
    c = s.conditions
    assert list(c.index) == list(range(6)) and c.index.name == "sample"
    assert c["label"].tolist()[:5] == [1, 1, 0, 1, 1]
    assert c["sex"].tolist()[:4] == ["F", "M", "F", "F"] and c["sex"].iloc[5] == "M"
    assert c["site"].iloc[0] == "site_B" and c["site"].iloc[4] == "site_A"
    assert (s.subjects["label"] == c["label"]).all()
    assert s.subjects["subject_id"].is_unique
    assert s.subjects["subject_id"].str.startswith("oracle-s7-").all()
    again = gen.sample(None, where, seed=7)
    pd.testing.assert_frame_equal(s.subjects, again.subjects)
    for a, b in zip(s.iter_subjects(), again.iter_subjects(), strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    other = gen.sample(None, where, seed=8)
    assert not set(other.subjects["subject_id"]) & set(s.subjects["subject_id"])
    one = next(other.iter_subjects()).image
    assert not np.array_equal(one, next(s.iter_subjects()).image)
    # the dict form: the same condition for every image
    d = gen.sample(5, where={"label": 0, "age_group": "40-59"}, seed=1).conditions
    assert (d["label"] == 0).all() and (d["age_group"] == "40-59").all()


def test_oracle_write_manifest_ids_and_marking(
    oracle_manifest: pathlib.Path, underrep: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import medgen.io
    from medgen import Cohort

    syn = Cohort.from_manifest(oracle_manifest)
    m = pd.read_csv(oracle_manifest)
    real = pd.read_csv(underrep)
    assert len(m) == 12
    assert set(real.columns) <= set(m.columns)  # the simulated manifest's columns, and more
    assert (m["source"] == "synthetic").all() and (m["generator"] == "simulator-oracle").all()
    assert (m["split"] == "train").all() and (m["seed"] == 3).all()
    assert ((m["label"].iloc[:6] == 1) & (m["sex"].iloc[:6] == "F")).all()
    assert m["image_id"].is_unique and m["subject_id"].is_unique
    assert not set(m["image_id"]) & set(real["image_id"])
    assert not set(m["subject_id"]) & set(real["subject_id"])
    assert m["image_id"].str.startswith("oracle-s3-").all()
    # concatenates with the real rows into one valid cohort
    both = Cohort.concat([Cohort.from_manifest(underrep), syn])
    assert len(both.df) == len(real) + 12
    assert both.df.groupby("subject_id")["split"].nunique().max() == 1
    # marked synthetic, naming the oracle and its seed
    img = medgen.io.load(oracle_manifest.parent / m["image_path"].iloc[0])
    descrip = str(nib.load(oracle_manifest.parent / m["image_path"].iloc[0]).header["descrip"])
    assert "medgen:synthetic" in descrip and "medgen simulator oracle seed=3" in descrip
    assert tuple(img.shape) == (1, 32, 32)
    # new subjects, never a copy of a cohort image (pixels compared, not headers)
    cohort_images = {_pixels(underrep.parent / p) for p in real["image_path"]}
    assert not {_pixels(oracle_manifest.parent / p) for p in m["image_path"]} & cohort_images
    info = json.loads((oracle_manifest.parent / "synthesis.json").read_text())
    assert info["generator"] == "simulator-oracle" and info["n_written"] == 12
    # same seed, same request: the same files
    gen = SimulatedGenerator.from_simulation(underrep.parent)
    where = pd.DataFrame({"label": [1] * 6 + [None] * 6, "sex": ["F"] * 6 + [None] * 6})
    again = gen.write(gen.sample(None, where, seed=3), tmp_path / "again", split="train")
    for p in m["image_path"]:
        assert _digest(again.parent / p) == _digest(oracle_manifest.parent / p)
    assert again.read_bytes() == oracle_manifest.read_bytes()


def test_oracle_from_simulation_reads_config_and_seed(tmp_path: pathlib.Path) -> None:
    cfg = preset("tiny-underrep")
    cfg.population.n_subjects = 3
    path = simulate(cfg, tmp_path / "sim", seed=4, progress=False)
    gen = SimulatedGenerator.from_simulation(path)  # a file in the folder works too
    assert gen.simulation_seed == 4 and gen.config == cfg
    same = SimulatedGenerator(cfg, seed=4).sample(3, seed=0).subjects
    pd.testing.assert_frame_equal(gen.sample(3, seed=0).subjects, same)
    assert not gen.sample(3, seed=0).subjects.equals(SimulatedGenerator(cfg).sample(3).subjects)
    with pytest.raises(MedgenFileNotFoundError, match=r"holds no simulation\.json"):
        SimulatedGenerator.from_simulation(tmp_path)


def test_oracle_bad_input(tmp_path: pathlib.Path) -> None:
    gen = SimulatedGenerator("tiny-underrep")
    with pytest.raises(MedgenValueError, match=r"\['race'\] are not conditions.*'handedness'"):
        gen.sample(2, {"race": "A"})
    with pytest.raises(MedgenValueError, match=r"sex='W' is not a value.*\['F', 'M'\]"):
        gen.sample(2, {"sex": "W"})
    with pytest.raises(MedgenValueError, match="Did you mean 'site_A'"):
        gen.sample(2, {"site": "siteA"})
    with pytest.raises(MedgenValueError, match=r"label=2 is not a value.*\[0, 1\]"):
        gen.sample(2, {"label": 2})
    for n in (0, -3, None, 2.5, True):
        with pytest.raises(MedgenValueError, match="n must be a positive number"):
            gen.sample(n, {"label": 1})  # type: ignore[arg-type]
    with pytest.raises(MedgenValueError, match="n=3 but where has 2 rows"):
        gen.sample(3, pd.DataFrame({"label": [0, 1]}))
    with pytest.raises(MedgenValueError, match="where has no rows"):
        gen.sample(None, pd.DataFrame({"label": []}))
    with pytest.raises(MedgenValueError, match="seed must be a non-negative integer"):
        gen.sample(1, seed=-1)
    cfg = preset("tiny-underrep")
    cfg.sites[0].proportion, cfg.sites[1].proportion = 1.0, 0.0
    with pytest.raises(MedgenValueError, match="has probability 0"):
        SimulatedGenerator(cfg).sample(1, {"site": "site_B"})
    with pytest.raises(ConfigError, match="Unknown preset"):
        SimulatedGenerator("tinny")
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        SimulatedGenerator("tiny", seed=-2)
    samples = gen.sample(1, seed=0)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="not an empty folder"):
        gen.write(samples, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(MedgenValueError, match=r"split must be '' .* or 'train'"):
        gen.write(samples, tmp_path / "a", split="test")
    with pytest.raises(MedgenValueError, match="drawn by another SimulatedGenerator"):
        SimulatedGenerator("tiny").write(samples, tmp_path / "b")
    with pytest.raises(MedgenValueError, match="samples must be what"):
        gen.write(samples.conditions, tmp_path / "c")  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    path = gen.write(samples, empty)  # an empty folder is fine
    assert pd.read_csv(path, keep_default_na=False)["split"].tolist() == [""]
