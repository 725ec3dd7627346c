"""The augmentation study on the tiny preset: arms, pairing, deltas, report, run folder, bad input.

The synthetic manifest here is plumbing only: copies of real *training* images relabelled
``source = synthetic`` (two per real image, ``derived_from`` = the real subject). It exercises
how the study selects, counts and refuses synthetic rows, not whether synthesis helps.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medgen import Cohort
from medgen.apps._study import (
    StudyResult,
    augmentation_study,
    compare_arms,
    count_deficits,
)
from medgen.apps._study_arms import ArmSpec, ArmWarning, check_extra, plan_arm, prepare_data
from medgen.errors import ConfigError, ManifestError, MedgenValueError, RunFolderError

TINY = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
    "epochs": 1,
    "batch_size": 16,
    "augment": "none",
    "patience": None,
}
ARMS: tuple[Any, ...] = (
    "real",
    "reweight",
    "augment",
    "focal",
    "synthetic-balanced",
    "synthetic-only",
    {"name": "real-again"},  # the real arm under another name: must change nothing
)
NAMES = [
    "real",
    "reweight",
    "augment",
    "focal",
    "synthetic-balanced",
    "synthetic-only",
    "real-again",
]


@pytest.fixture(scope="module")
def cohort(tiny_manifest: Path) -> Cohort:
    return Cohort.from_manifest(tiny_manifest)


@pytest.fixture(scope="module")
def synthetic(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two copies of every real training image, written as a synthetic manifest."""
    folder = tmp_path_factory.mktemp("synthetic")
    train = cohort.df[cohort.df["split"] == "train"]
    rows = []
    for copy in ("a", "b"):
        for r in train.itertuples(index=False):
            name = f"syn-{r.image_id}-{copy}"
            shutil.copy(r.image_path, folder / f"{name}.nii.gz")
            rows.append(
                {
                    "image_id": name,
                    "image_path": f"{name}.nii.gz",
                    "subject_id": name,
                    "split": "",
                    "source": "synthetic",
                    "label": r.label,
                    "sex": r.sex,
                    "derived_from": r.subject_id,
                }
            )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def study(
    cohort: Cohort, synthetic: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StudyResult, Path]:
    out = tmp_path_factory.mktemp("study") / "run"
    res = augmentation_study(
        cohort,
        attributes=["sex"],
        arms=ARMS,
        synthetic=synthetic,
        seeds=(0, 1),
        classifier=TINY,
        n_boot=200,
        out_dir=out,
        device="cpu",
        progress=False,
    )
    return res, out


def _cells(df: pd.DataFrame) -> pd.Series:
    return df.assign(label=df["label"].astype(int).astype(str)).groupby(["label", "sex"]).size()


# ---------------------------------------------------------------------------------------------
# arms see the training rows they should


def test_arms_train_on_the_rows_they_should(
    study: tuple[StudyResult, Path], cohort: Cohort
) -> None:
    res, _ = study
    assert res.arms == NAMES and res.seeds == [0, 1]
    real = _cells(cohort.df[cohort.df["split"] == "train"])
    tc = res.training_counts
    assert tc is not None
    for arm in ("real", "reweight", "augment", "focal", "real-again"):
        for seed in (0, 1):
            got = tc.xs((arm, seed), level=("arm", "seed"))
            assert got["n_real"].to_dict() == real.to_dict()
            assert (got["n_extra"] == 0).all()
    # reweight: the same rows, every label x sex cell drawn equally often
    assert np.allclose(tc.xs("reweight", level="arm")["share"], 0.25)
    assert not np.allclose(tc.xs("real", level="arm")["share"], 0.25)
    # synthetic-balanced fills every cell up to the largest real cell, exactly
    fill = res.fill
    assert fill is not None
    deficit = real.max() - real
    for seed in (0, 1):
        bal = tc.xs(("synthetic-balanced", seed), level=("arm", "seed"))
        assert (bal["n"] == real.max()).all()
        assert bal["n_extra"].to_dict() == deficit.to_dict()
        assert fill.xs(seed, level="seed")["filled"].to_dict() == deficit.to_dict()
    # synthetic-only: no real row, every synthetic one (two copies of each real training image)
    only = tc.xs(("synthetic-only", 0), level=("arm", "seed"))
    assert (only["n_real"] == 0).all() and only["n_extra"].to_dict() == (2 * real).to_dict()


def test_deficit_rows_are_deterministic_in_the_seed(cohort: Cohort, synthetic: Path) -> None:
    data = prepare_data(cohort, target="label", attributes=["sex"])
    pool = check_extra(
        Cohort.from_manifest(synthetic).df, data, what="synthetic", need_attributes=True
    )
    spec = ArmSpec("synthetic-balanced", "synthetic-balanced")
    kw: dict[str, Any] = {"base_augment": "none", "augment_preset": "medium"}

    def chosen(pool_df: pd.DataFrame, seed: int) -> set[str]:
        plan = plan_arm(spec, data, seed=seed, synthetic=pool_df, **kw)
        rows = plan.rows
        return set(rows.loc[rows["source"] == "synthetic", "image_id"])

    shuffled = pool.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert chosen(pool, 0) == chosen(shuffled, 0)  # row order of the manifest does not matter
    deficits = count_deficits(cohort, target="label", attributes="sex")
    assert len(chosen(pool, 0)) == int(deficits["deficit"].sum())
    assert deficits.index.names == ["label", "sex"] and (deficits["deficit"] >= 0).all()
    # a short cell: an error by default, every row there is with shortage="warn"
    small = pool.groupby(["label", "sex"]).head(1)
    with pytest.raises(ManifestError, match=r"too few images .*needs \d+, the manifest has 1"):
        plan_arm(spec, data, seed=0, synthetic=small, **kw)
    with pytest.warns(ArmWarning, match="too few"):
        plan = plan_arm(spec, data, seed=0, synthetic=small, shortage="warn", **kw)
    assert plan.fill is not None
    assert (plan.fill["filled"] <= 1).all() and (plan.fill["filled"] < plan.fill["deficit"]).any()


# ---------------------------------------------------------------------------------------------
# deltas and pairing


def test_paired_deltas_equal_the_difference_of_the_audits(study: tuple[StudyResult, Path]) -> None:
    res, _ = study
    for arm in ("reweight", "synthetic-balanced"):
        for seed in (0, 1):
            by_seed = res.deltas_by_seed.xs((arm, seed), level=("arm", "seed"))
            a = res.metrics.xs(("real", seed), level=("arm", "seed"))
            b = res.metrics.xs((arm, seed), level=("arm", "seed"))
            for (attr, group, metric), row in by_seed.iterrows():
                want = b.loc[(attr, group), metric] - a.loc[(attr, group), metric]
                np.testing.assert_allclose(row["delta"], want, atol=1e-12)
        # over seeds: the mean of the per-seed differences, and their spread
        pooled = res.deltas.xs(arm, level="arm")
        per = res.deltas_by_seed.xs(arm, level="arm")
        per = per[per.index.get_level_values("metric").isin(res.settings["metrics"])]
        g = per.groupby(level=["attribute", "group", "metric"], sort=False)["delta"]
        np.testing.assert_allclose(pooled["delta"], g.mean().reindex(pooled.index), atol=1e-12)
        np.testing.assert_allclose(pooled["delta_sd"], g.std().reindex(pooled.index), atol=1e-12)


def test_identical_arms_report_zero_deltas_and_nothing_significant(
    study: tuple[StudyResult, Path],
) -> None:
    res, _ = study
    same = res.deltas.xs("real-again", level="arm")
    assert (same["delta"].fillna(0) == 0).all()
    assert not same["significant"].any() and (same["effect"] == "").all()
    assert "real-again" not in set(res.verdict.index.get_level_values("arm"))
    assert res.summary.loc["real-again", "n_improved"] == 0
    assert res.summary.loc["real-again", "n_worse"] == 0
    gaps = res.worst_group_deltas
    assert gaps is not None
    same_gap = gaps.xs("real-again", level="arm")
    assert (same_gap["delta"].fillna(0) == 0).all() and not same_gap["significant"].any()


def test_worst_group_deltas_are_paired_differences(study: tuple[StudyResult, Path]) -> None:
    """Point deltas of the worst group and the gap equal the difference of the two arms' worst
    group / gap (per seed, then averaged), with a CI around them."""
    res, _ = study
    gaps = res.worst_group_deltas
    assert gaps is not None
    assert gaps.index.names == ["arm", "attribute", "metric", "statistic"]
    w = res.worst_group
    for arm in ("reweight", "synthetic-balanced"):
        for metric, stat, col in [
            ("auc", "worst", "worst_group_auc"),
            ("auc", "gap", "auc_gap"),
            ("tpr", "gap", "tpr_gap"),
        ]:
            want = np.nanmean(
                [w.loc[(arm, s, "sex"), col] - w.loc[("real", s, "sex"), col] for s in (0, 1)]
            )
            row = gaps.loc[(arm, "sex", metric, stat)]
            if np.isnan(want):
                continue
            assert row["delta"] == pytest.approx(want, abs=1e-9)
            assert row["delta_low"] <= row["delta"] <= row["delta_high"]


def test_rows_are_paired_by_image_id_not_row_order(study: tuple[StudyResult, Path]) -> None:
    res, _ = study
    preds = {k: v for k, v in res.predictions.items() if k[0] in ("real", "reweight")}
    kw: dict[str, Any] = {"sensitive": ["sex"], "n_boot": 100, "seed": 5}
    ref = compare_arms(preds, **kw)
    shuffled = dict(preds)
    shuffled[("reweight", 0)] = preds[("reweight", 0)].sample(frac=1.0, random_state=1)
    assert not shuffled[("reweight", 0)]["image_id"].is_monotonic_increasing
    got = compare_arms(shuffled, **kw)
    pd.testing.assert_frame_equal(got.deltas, ref.deltas)
    pd.testing.assert_frame_equal(got.deltas_by_seed, ref.deltas_by_seed)
    # a different test set is refused, naming the images
    other = dict(preds)
    other[("reweight", 1)] = preds[("reweight", 1)].iloc[1:]
    missing = preds[("reweight", 1)]["image_id"].iloc[0]
    with pytest.raises(MedgenValueError, match=rf"not tested on the same rows.*{missing}"):
        compare_arms(other, **kw)
    relabelled = dict(preds)
    t = preds[("reweight", 0)].copy()
    t.loc[t.index[0], "y_true"] = 1 - t.loc[t.index[0], "y_true"]
    relabelled[("reweight", 0)] = t
    with pytest.raises(MedgenValueError, match="disagree on column 'y_true'"):
        compare_arms(relabelled, **kw)
    with pytest.raises(MedgenValueError, match="no prediction table of the baseline"):
        compare_arms({k: v for k, v in preds.items() if k[0] != "real"}, **kw)


# ---------------------------------------------------------------------------------------------
# tables, report, run folder


def test_tables_are_tidy_with_named_indexes(study: tuple[StudyResult, Path]) -> None:
    res, _ = study
    assert res.metrics.index.names == ["arm", "seed", "attribute", "group"]
    assert res.deltas.index.names == ["arm", "attribute", "group", "metric"]
    assert res.deltas_by_seed.index.names == ["arm", "seed", "attribute", "group", "metric"]
    assert res.worst_group.index.names == ["arm", "seed", "attribute"]
    assert res.worst_group_summary.index.names == ["arm", "attribute"]
    assert list(res.summary.index) == NAMES
    assert {"worst_group_auc", "worst_group_tpr", "auc_gap", "tpr_gap"} <= set(res.worst_group)
    assert set(res.deltas.index.get_level_values("arm")) == set(NAMES) - {"real"}
    assert (res.deltas["p_adjusted"].dropna() >= res.deltas["p_value"].dropna() - 1e-15).all()
    w = res.worst_group.xs(("real", 0, "sex"))
    groups = res.metrics.xs(("real", 0, "sex"), level=("arm", "seed", "attribute"))
    assert w["worst_group_auc"] == pytest.approx(groups["auc"].min())


def test_report_has_one_section_per_arm(study: tuple[StudyResult, Path]) -> None:
    res, out = study
    text = (out / "report.html").read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", text)
    assert titles[0] == "Does augmentation help, and whom?"
    assert [t for t in titles if t.startswith("Arm: ")] == [f"Arm: {a}" for a in NAMES]
    assert text.count("data:image/png;base64,") == 3  # forest, worst group, trade-off
    assert not re.search(r"https?://", text)
    for link in re.findall(r'href="([^"]+)"', text):  # the linked per-arm audits and tables
        assert (out / link).is_file(), link
    assert "Does augmentation help, and whom?" in res._repr_html_()


def test_out_dir_follows_the_run_folder_rules(
    study: tuple[StudyResult, Path], cohort: Cohort, tmp_path: Path
) -> None:
    res, out = study
    for arm in NAMES:
        for seed in (0, 1):
            p = pd.read_csv(out / "predictions" / f"{arm}-seed{seed}.csv")
            assert len(p) == res.settings["test_rows"]
    assert {f"{n}.csv" for n in res.tables()} == {p.name for p in (out / "tables").iterdir()}
    assert (out / "run_complete.json").is_file() and (out / "study.json").is_file()
    kw: dict[str, Any] = {"arms": ("real", "reweight"), "classifier": TINY, "progress": False}
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        augmentation_study(cohort, out_dir=out, **kw)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not part of a medgen run"):
        augmentation_study(cohort, out_dir=tmp_path, **kw)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# bad input: every error comes before anything trains


def _syn(synthetic: Path) -> pd.DataFrame:
    df = Cohort.from_manifest(synthetic).df
    return df


def test_leakage_is_refused_naming_the_subjects(cohort: Cohort, synthetic: Path) -> None:
    test_subject = cohort.df.loc[cohort.df["split"] == "test", "subject_id"].iloc[0]
    kw: dict[str, Any] = {"arms": ("real", "synthetic-balanced"), "classifier": TINY}
    leaky = _syn(synthetic)
    leaky.loc[0, "derived_from"] = test_subject
    with pytest.raises(ManifestError, match=rf"1 subjects of the test split \({test_subject}\)"):
        augmentation_study(cohort, synthetic=Cohort.from_manifest(leaky), **kw)
    leaky = _syn(synthetic)
    leaky.loc[0, "subject_id"] = test_subject
    with pytest.raises(ManifestError, match=rf"held-out subjects.*{test_subject}"):
        augmentation_study(cohort, synthetic=leaky, **kw)
    # derived_from may name an image path of a held-out subject too
    leaky = _syn(synthetic)
    path = cohort.df.loc[cohort.df["split"] == "val", "image_path"].iloc[0]
    leaky.loc[0, "derived_from"] = path
    with pytest.raises(ManifestError, match="of the val split"):
        augmentation_study(cohort, synthetic=leaky, **kw)


def test_bad_synthetic_manifests(cohort: Cohort, synthetic: Path) -> None:
    kw: dict[str, Any] = {"classifier": TINY}
    no_target = _syn(synthetic).drop(columns="label")
    with pytest.raises(ManifestError, match="has no column 'label' \\(the target\\)"):
        augmentation_study(cohort, arms=("real", "synthetic-only"), synthetic=no_target, **kw)
    no_sex = _syn(synthetic).drop(columns="sex")
    with pytest.raises(ManifestError, match="has no column 'sex'"):
        augmentation_study(cohort, arms=("real", "synthetic-balanced"), synthetic=no_sex, **kw)
    with pytest.raises(ConfigError, match="need synthetic images: pass synthetic="):
        augmentation_study(cohort, arms=("real", "synthetic-only"), **kw)
    in_test = _syn(synthetic).assign(split="test")
    with pytest.raises(ManifestError, match="extra rows only train"):
        augmentation_study(cohort, arms=("real", "synthetic-only"), synthetic=in_test, **kw)
    real_source = _syn(synthetic).assign(source="real")
    with pytest.raises(ConfigError, match="not 'synthetic'"):
        augmentation_study(cohort, arms=("real", "synthetic-only"), synthetic=real_source, **kw)


def test_arms_without_rows_and_bad_arms(cohort: Cohort, synthetic: Path) -> None:
    kw: dict[str, Any] = {"classifier": TINY}
    empty = _syn(synthetic).iloc[:0]
    with pytest.raises(ManifestError, match="synthetic manifest has no rows"):
        augmentation_study(cohort, arms=("real", "synthetic-only"), synthetic=empty, **kw)
    with pytest.raises(ManifestError, match="arm 'more': extra has no rows"):
        augmentation_study(cohort, arms=("real", {"name": "more", "extra": empty}), **kw)
    with pytest.raises(ConfigError, match="Did you mean 'reweight'"):
        augmentation_study(cohort, arms=("real", "reweigh"), **kw)
    with pytest.raises(ConfigError, match="must include 'real'"):
        augmentation_study(cohort, arms=("reweight", "augment"), **kw)
    with pytest.raises(ConfigError, match="unique"):
        augmentation_study(cohort, arms=("real", "augment", {"name": "x"}, {"name": "x"}), **kw)
    with pytest.raises(ConfigError, match="'seed' is set by the study"):
        augmentation_study(cohort, arms=("real", "augment"), classifier={**TINY, "seed": 1})
    with pytest.raises(ConfigError, match="already use"):
        augmentation_study(
            cohort, arms=("real", "augment"), classifier={**TINY, "augment": "medium"}
        )
    with pytest.raises(ConfigError, match=r"weight=.* must have source == 'synthetic'"):
        extra = cohort.df[cohort.df["split"] == "train"].iloc[:4].copy()
        extra["image_id"] = "x-" + extra["image_id"]
        extra["subject_id"] = "x-" + extra["subject_id"]
        augmentation_study(
            cohort, arms=("real", {"name": "more", "extra": extra, "weight": 0.3}), **kw
        )
    with pytest.raises(ConfigError, match="'focal' arm trains with focal_gamma=2"):
        augmentation_study(cohort, arms=("real", "focal"), classifier={**TINY, "focal_gamma": 1.0})


class CopyingSynthesizer:
    """A stand-in generator: "generates" an image of a cell by copying a real training image of
    that cell (round robin), and drops every ``drop_every``-th one as a memorisation gate would.
    Plumbing only: it exercises what the study asks for, writes and trains on."""

    conditions = ("label", "sex")

    def __init__(self, cohort: Cohort, *, drop_every: int = 0, trained_on: Any = None) -> None:
        train = cohort.df[cohort.df["split"] == "train"]
        self.by_cell = {k: g for k, g in train.groupby(["label", "sex"])}
        self.drop_every = drop_every
        self.training_image_ids = (
            train["image_id"].tolist() if trained_on is None else list(trained_on)
        )
        self.asked: list[pd.DataFrame] = []

    def sample(self, n: int | None, where: Any = None, *, seed: int = 0) -> Any:
        assert n is None and isinstance(where, pd.DataFrame)
        self.asked.append(where.copy())
        return where.assign(seed=seed)

    def write(self, samples: Any, out_dir: Any, *, split: str = "") -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True)
        rows = []
        for k, r in enumerate(samples.itertuples(index=False)):
            if self.drop_every and k % self.drop_every == self.drop_every - 1:
                continue
            cell = self.by_cell[(r.label, r.sex)]
            src = cell.iloc[k % len(cell)]
            name = f"gen-s{r.seed}-{k}"
            shutil.copy(src["image_path"], out / f"{name}.nii.gz")
            rows.append(
                {
                    "image_id": name,
                    "image_path": f"{name}.nii.gz",
                    "subject_id": name,
                    "split": split,
                    "source": "synthetic",
                    "label": r.label,
                    "sex": r.sex,
                }
            )
        pd.DataFrame(rows).to_csv(out / "manifest.csv", index=False)
        return out / "manifest.csv"


def test_synthesizer_generates_what_the_arms_need(cohort: Cohort, tmp_path: Path) -> None:
    gen = CopyingSynthesizer(cohort, drop_every=10)
    res = augmentation_study(
        cohort,
        arms=("real", "synthetic-balanced", "synthetic-only"),
        synthesizer=gen,
        synthesizer_seed=5,
        seeds=(0, 1),
        classifier=TINY,
        n_boot=50,
        out_dir=tmp_path / "run",
        arm_reports=False,
        device="cpu",
        progress=False,
    )
    real = _cells(cohort.df[cohort.df["split"] == "train"])
    deficit = real.max() - real
    asked = {p: _cells(w) for p, w in zip(("fill", "tstr"), gen.asked, strict=True)}
    # fill: each cell's deficit for every seed, plus the gate margin (5% + 2); tstr: the real mix
    need = deficit[deficit > 0] * 2
    assert asked["fill"].to_dict() == (need + np.ceil(0.05 * need) + 2).astype(int).to_dict()
    assert asked["tstr"].to_dict() == real.to_dict()
    info = res.settings["synthesizer"]
    assert info["pools"]["fill"]["requested"] == int(asked["fill"].sum())
    assert info["pools"]["fill"]["dropped"] == int(asked["fill"].sum()) // 10
    assert (tmp_path / "run" / "synthetic" / "fill" / "manifest.csv").is_file()
    tc = res.training_counts
    assert tc is not None
    for seed in (0, 1):  # the margin covered the dropped images: every cell is filled exactly
        bal = tc.xs(("synthetic-balanced", seed), level=("arm", "seed"))
        assert (bal["n"] == real.max()).all()
        only = tc.xs(("synthetic-only", seed), level=("arm", "seed"))
        assert (only["n_real"] == 0).all()
        assert only["n_extra"].sum() == info["pools"]["tstr"]["written"]
    assert not res.warnings or all("not fully balanced" not in w for w in res.warnings)


def test_cohort_without_test_split_and_bad_synthesizers(cohort: Cohort) -> None:
    no_test = Cohort.from_manifest(cohort.df[cohort.df["split"] != "test"])
    with pytest.raises(ManifestError, match="no 'test' rows"):
        augmentation_study(no_test, arms=("real", "reweight"), classifier=TINY)

    df = cohort.df
    test_ids = df.loc[df["split"] == "test", "image_id"].tolist()
    train_ids = df.loc[df["split"] == "train", "image_id"].tolist()
    kw: dict[str, Any] = {"arms": ("real", "synthetic-balanced"), "classifier": TINY}
    leaky = CopyingSynthesizer(cohort, trained_on=train_ids + test_ids[:1])
    with pytest.raises(ManifestError, match="held-out subjects"):
        augmentation_study(cohort, synthesizer=leaky, **kw)
    assert not leaky.asked  # refused before anything was generated
    unconditioned = CopyingSynthesizer(cohort)
    unconditioned.conditions = ("label",)  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"needs \['sex'\] too.*--condition sex"):
        augmentation_study(cohort, synthesizer=unconditioned, **kw)
    with pytest.raises(ConfigError, match="no arm uses synthetic images"):
        augmentation_study(
            cohort,
            synthesizer=CopyingSynthesizer(cohort),
            arms=("real", "reweight"),
            classifier=TINY,
        )
    with pytest.raises(ConfigError, match="not both"):
        augmentation_study(cohort, synthesizer=CopyingSynthesizer(cohort), synthetic=cohort, **kw)
    with pytest.raises(ConfigError, match="must have sample"):
        augmentation_study(cohort, synthesizer=object(), **kw)  # type: ignore[arg-type]


def test_cli_study_augment(tiny_manifest: Path, synthetic: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    out = tmp_path / "study"
    base = ["study", "augment", str(tiny_manifest), "-o", str(out), "--no-progress"]
    fast = ["--epochs", "1", "--batch-size", "16", "--n-boot", "50", "--seeds", "0"]
    r = CliRunner().invoke(
        app, [*base, *fast, "--synthetic", str(synthetic), "--arm", "real", "--arm", "reweight"]
    )
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "reweight: AUC" in r.output
    assert (out / "report.html").is_file() and (out / "run_complete.json").is_file()
    # bad input: one line, exit 2, nothing trained
    for args, msg in [
        ([*base, "--seeds", "a,b"], "--seeds must be integers"),
        ([*base, "--synth", str(tmp_path / "nope")], "nope"),
        ([*base, "--arm", "real", "--arm", "synthetic-balanced"], "need synthetic images"),
        ([*base, "--overwrite", "--arm", "real", "--arm", "reweightt"], "reweight"),
    ]:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and msg in lines[0], r.output


@pytest.mark.slow
def test_study_sees_the_injected_truth_of_the_underrep_preset(tmp_path: Path) -> None:
    """demo-underrep (positives of the T1-like site C scarce in training), demo classifier
    settings, one seed (~4 minutes on 2 cores): the real arm has the site gap, and perfect images
    filling the cells (the simulator as generator) narrow it. (The presentation preset's truth,
    no arm credited, is checked by the demo's slow test.)"""
    from medgen.simulate import SimulatedGenerator, preset, simulate

    manifest = simulate(preset("demo-underrep"), tmp_path / "cohort", seed=0, progress=False)
    res = augmentation_study(
        Cohort.from_manifest(manifest),
        attributes=["site"],
        arms=("real", "synthetic-balanced"),
        synthesizer=SimulatedGenerator.from_simulation(tmp_path / "cohort"),
        seeds=(0,),
        classifier={"model": "densenet", "epochs": 40, "batch_size": 32, "lr": 3e-3, "patience": 8},
        n_boot=500,
        progress=False,
    )
    auc = res.metrics["auc"]
    real = auc.xs(("real", 0, "site"), level=("arm", "seed", "attribute"))
    assert real["site_C"] < 0.75 and real["site_A"] > 0.9 and real["site_B"] > 0.9
    gaps = res.worst_group_deltas
    assert gaps is not None
    assert gaps.loc[("synthetic-balanced", "site", "auc", "worst"), "delta"] > 0.05
    assert gaps.loc[("synthetic-balanced", "site", "auc", "gap"), "delta"] < -0.05
