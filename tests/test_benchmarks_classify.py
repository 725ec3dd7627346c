"""``benchmarks/classify.py --suite`` (issue 17's extended classifier benchmark): its plan, the
label subsampling, the AUC bootstrap and the targets table, without training anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("classify")


def test_plan_counts_every_training(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args(["--suite", "--budget", "100", "--cohort", "m.csv"])
    names = [r.name for r in bench.suite_rows(args)]
    assert names == [
        "densenet121",
        "densenet",
        "vit (scratch)",
        "vit + MAE",
        "densenet + contrastive",
    ]
    extra = bench.label_rows(args)
    assert len(extra) == 8  # 2 pairs x 2 fractions below 100 % x (scratch, pretrained)
    assert {(r.model, r.init, r.fraction) for r in extra} >= {("vit", "mae", 0.1)}
    est = bench.estimate_wall_s(args)
    assert est["n_train"] == 13 and est["simulate"] == 0
    assert est["total"] == pytest.approx(
        2 * (240 + bench.OVERHEAD_S["pretrain"])
        + 13 * (100 + bench.OVERHEAD_S["train"])
        + 5 * bench.OVERHEAD_S["explain"]
    )
    args = bench.build_parser().parse_args(
        ["--suite", "--pairs", "vit", "--vit-model", "vit_hybrid", "--cnn-model", "densenet121"]
    )
    assert [r.name for r in bench.suite_rows(args)][:3] == [
        "densenet121",
        "densenet",
        "vit_hybrid (scratch)",
    ]  # the CNN pair's scratch row is the densenet121 baseline, not trained twice
    assert len(bench.suite_rows(args)) == 5 and len(bench.label_rows(args)) == 4


def test_subsample_keeps_val_and_test(bench: ModuleType, tiny_manifest: Path) -> None:
    from medgen.cohort import Cohort

    co = Cohort.from_manifest(tiny_manifest)
    sub = bench.subsample_train(co, 0.25, seed=0)
    assert (
        bench.subsample_train(co, 0.25, seed=0).df["image_id"].tolist()
        == sub.df["image_id"].tolist()
    )
    n_train = co.splits["train"]
    assert sub.splits["train"] == pytest.approx(0.25 * n_train, abs=2)
    assert sub.splits["val"] == co.splits["val"] and sub.splits["test"] == co.splits["test"]
    assert sub.df.loc[sub.df["split"] == "train", "label"].nunique() == 2
    assert bench.subsample_train(co, 1.0, seed=0) is co


def test_auc_ci_brackets_the_auc(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y + rng.normal(0, 1, 300)
    auc, lo, hi = bench.auc_ci(y, s, n_boot=200, seed=0)
    assert lo < auc < hi and 0.7 < auc < 0.85


def test_targets_table(bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = bench.build_parser().parse_args(["--suite"])
    by_key = {
        ("vit", "scratch"): {"test_auc": 0.86},
        ("vit", "mae"): {"test_auc": 0.91},
        ("densenet121", "scratch"): {"test_auc": 0.95},
    }
    gains = {("vit", "mae", 0.1): 0.06, ("vit", "mae", 0.25): 0.01}
    bench._targets(by_key, gains, None, args, tmp_path)
    t = pd.read_csv(tmp_path / "suite_targets.csv")
    assert t["met"].tolist()[1:] == ["yes", "yes", "no", "yes"]
    assert t["met"].iloc[0].startswith("not run")
    assert "10% labels: vit mae - scratch AUC" in capsys.readouterr().out


def test_mae_model_gets_its_own_scratch_row(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args(
        ["--suite", "--vit-model", "vit_hybrid", "--mae-model", "vit", "--pairs", "vit"]
    )
    names = [r.name for r in bench.suite_rows(args)]
    assert names[2:5] == ["vit_hybrid (scratch)", "vit (scratch)", "vit + MAE"]
    assert {(r.model, r.init) for r in bench.label_rows(args)} == {("vit", None), ("vit", "mae")}
    assert bench.mae_problem("vit", 32) is None


def test_row_steps_give_every_row_the_same_steps(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args(
        ["--suite", "--row-steps", "1656", "--batch", "16", "--cohort", "m.csv"]
    )
    # 1,100 training images: 69 steps per epoch, 24 epochs = 1,656 steps exactly
    assert bench.row_epochs(1100, args) == 24
    # 10 % of the labels (110 images, 7 steps per epoch): enough whole epochs to reach 1,656
    e = bench.row_epochs(110, args)
    assert e == 237 and 1656 <= e * 7 < 1656 + 7
    assert bench.row_epochs(3, args) == 1656  # one step per epoch
    assert "1656 optimiser steps" in bench.row_budget_text(args)
    est = bench.estimate_wall_s(args)
    assert est["train"] == pytest.approx(
        est["n_train"] * (1656 * bench.SECONDS_PER_STEP + bench.OVERHEAD_S["train"])
    )
    timed = bench.build_parser().parse_args(["--suite", "--epochs", "7", "--budget", "60"])
    assert bench.row_epochs(110, timed) == 7  # a time budget keeps --epochs as the cap
    assert bench.row_budget_text(timed) == "60 s"


def test_pretrain_steps_bound_the_pretraining(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args(
        ["--suite", "--pretrain-steps", "600", "--pretrain-batch", "32", "--cohort", "m.csv"]
    )
    assert bench.pretrain_epochs(1100, args) == 18  # 35 steps per epoch: 630 >= 600
    assert bench.pretrain_budget_text(args) == "600 steps"
    est = bench.estimate_wall_s(args)
    assert est["pretrain"] == pytest.approx(
        2 * (600 * bench.SECONDS_PER_PRETRAIN_STEP + bench.OVERHEAD_S["pretrain"])
    )
    timed = bench.build_parser().parse_args(["--suite", "--epochs", "9"])
    assert bench.pretrain_epochs(1100, timed) == 9
    assert bench.pretrain_budget_text(timed) == "240 s"


def test_label_only_trains_no_full_rows(bench: ModuleType) -> None:
    args = bench.build_parser().parse_args(
        [
            "--suite",
            "--label-only",
            "--pairs",
            "vit",
            "--vit-method",
            "contrastive",
            "--vit-model",
            "vit_hybrid",
            "--fractions",
            "0.1",
            "--row-steps",
            "100",
        ]
    )
    assert bench.suite_rows(args) == []
    assert [(r.init, r.fraction) for r in bench.label_rows(args)] == [
        (None, 0.1),
        ("contrastive", 0.1),
    ]
    assert bench.pretrain_plan(args) == [("contrastive", "vit_hybrid")]  # not the CNN's
    est = bench.estimate_wall_s(args)
    assert est["n_train"] == 2 and est["explain"] == 0
    args.skip_scratch = True
    assert [(r.init, r.fraction) for r in bench.label_rows(args)] == [("contrastive", 0.1)]
    full = bench.build_parser().parse_args(["--suite"])
    assert bench.pretrain_plan(full) == [("mae", "vit"), ("contrastive", "densenet")]
