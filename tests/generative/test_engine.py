"""The generative engine (medgen.generative.engine): the contract with objectives.

Tiny objectives built here (no images needed) check what the engine promises any objective:
seeded steps, bitwise resume (networks, optimisers, EMA, extra state), per-optimiser LR
schedules, metrics columns from the step's scalars, budgets, errors. docs/engine.md's example is
executed here too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.generative import EngineConfig, Objective, StepContext, fit_objective
from medgen.generative.engine import lr_factor, step_seed

DOCS = Path(__file__).resolve().parents[2] / "docs" / "engine.md"


class TwoNets(Objective):
    """Two networks with their own optimisers and learning rates, EMA on one, randomness inside
    the step (noise and a dropout), an extra state (a running count of positive draws)."""

    kind = "two-nets"
    ema_networks = ("a",)
    inference_networks = ("a",)
    log_keys = ("loss_a", "late")

    def __init__(self, *, lr_a: float = 1e-2, lr_b: float = 1e-3, late_from: int = 2) -> None:
        self.lr_a, self.lr_b, self.late_from = lr_a, lr_b, late_from
        self.positives = 0
        self.lrs: list[tuple[float, float]] = []
        self.draws: list[float] = []

    def config_dict(self) -> dict[str, Any]:
        return {"lr_a": self.lr_a, "lr_b": self.lr_b, "late_from": self.late_from}

    def build_networks(self) -> dict[str, nn.Module]:
        return {
            "a": nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.2), nn.Conv2d(4, 1, 1)),
            "b": nn.Linear(4, 1),
        }

    def build_optimizers(self, networks: Mapping[str, nn.Module]) -> dict[str, Any]:
        return {
            "a": torch.optim.Adam(networks["a"].parameters(), lr=self.lr_a),
            "b": torch.optim.SGD(networks["b"].parameters(), lr=self.lr_b),
        }

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        x = rng.random((self.batch_size, 1, 8, 8)).astype(np.float32)
        return {"x": torch.from_numpy(x), "v": torch.from_numpy(x[:, 0, 0, :4].copy())}

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        a, b = ctx.networks["a"], ctx.networks["b"]
        a.train()
        self.lrs.append(
            (ctx.optimizers["a"].param_groups[0]["lr"], ctx.optimizers["b"].param_groups[0]["lr"])
        )
        draw = float(torch.randn(()))
        self.draws.append(draw)
        self.positives += int(draw > 0)
        with ctx.autocast():
            noisy = batch["x"] + 0.1 * torch.randn_like(batch["x"])
            loss_a = torch.mean((a(noisy) - batch["x"]) ** 2)
            loss_b = torch.mean((b(batch["v"]) - float(self.positives)) ** 2)
        ctx.backward(loss_a, "a")
        ctx.backward(loss_b, "b")
        out: dict[str, Any] = {"loss_a": loss_a, "loss_b": float(loss_b.detach())}
        if ctx.step >= self.late_from:
            out["late"] = 1.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"positives": torch.tensor(self.positives)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.positives = int(state["positives"])


def _cfg(**kw: Any) -> EngineConfig:
    base: dict[str, Any] = {
        "epochs": 2,
        "steps_per_epoch": 2,
        "batch_size": 2,
        "device": "cpu",
        "ema_decay": 0.9,
    }
    return EngineConfig(**{**base, **kw})


def test_docs_engine_example_runs() -> None:
    """The python blocks of docs/engine.md (the smallest complete objective) run as written."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 2
    ns: dict[str, Any] = {"__name__": "engine_docs"}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), ns)
    assert ns["again"].steps_trained == 80


def test_resume_is_bitwise_for_every_network_optimiser_ema_and_extra_state(
    tmp_path: Path, run_tensors: Any
) -> None:
    """Ctrl-C after epoch 1 and resume (with a batch worker) == uninterrupted, bitwise: both
    networks, the EMA copy, the objective's own state and the step randomness."""
    full_obj = TwoNets()
    full = fit_objective(full_obj, config=_cfg(), run_dir=tmp_path / "a", progress=False)

    class Interrupted(TwoNets):
        def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
            if step >= 2:
                raise KeyboardInterrupt
            return super().sample_batch(step)

    with pytest.raises(KeyboardInterrupt):
        fit_objective(Interrupted(), config=_cfg(), run_dir=tmp_path / "b", progress=False)
    state = json.loads((tmp_path / "b" / "train_state.json").read_text())
    assert state["step"] == 2 and state["objective"] == "two-nets"
    assert state["config"]["lr_b"] == 1e-3 and state["config"]["epochs"] == 2
    resumed_obj = TwoNets()
    resumed = fit_objective(
        resumed_obj, config=_cfg(num_workers=1), run_dir=tmp_path / "b", resume=True, progress=False
    )
    assert resumed.step == full.step == 4
    sa, sb = run_tensors(full), run_tensors(resumed)
    assert sa.keys() == sb.keys() and "ema.a.0.weight" in sa
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    assert resumed_obj.positives == full_obj.positives
    assert resumed_obj.draws == full_obj.draws[2:]  # step randomness = f(seed, step)
    # a different seed draws differently
    other = TwoNets()
    fit_objective(other, config=_cfg(seed=1), progress=False)
    assert other.draws != full_obj.draws


def test_the_callers_random_state_is_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_objective(TwoNets(), config=_cfg(), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_step_randomness_is_the_step_seed() -> None:
    obj = TwoNets()
    fit_objective(obj, config=_cfg(seed=5, epochs=1), progress=False)
    for k, draw in enumerate(obj.draws):
        torch.manual_seed(step_seed(5, k))
        assert float(torch.randn(())) == draw


def test_cosine_schedule_scales_every_optimiser_from_its_base_rate() -> None:
    obj = TwoNets(lr_a=1e-2, lr_b=4e-3)
    fit_objective(obj, config=_cfg(lr_schedule="cosine", epochs=3), progress=False)
    assert len(obj.lrs) == 6
    for k, (la, lb) in enumerate(obj.lrs):
        f = lr_factor("cosine", k, 6)
        assert la == pytest.approx(1e-2 * f) and lb == pytest.approx(4e-3 * f)
    assert obj.lrs[0] == (1e-2, 4e-3) and obj.lrs[-1][0] < 1e-3


def test_metrics_columns_are_the_steps_scalars(tmp_path: Path) -> None:
    """Declared log_keys first (NaN until a step returns them), then other scalars, seconds."""
    res = fit_objective(
        TwoNets(late_from=2), config=_cfg(ema_decay=None), run_dir=tmp_path, progress=False
    )
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert list(m.columns) == [
        "epoch",
        "step",
        "loss_a",
        "late",
        "loss_b",
        "seconds",
        "images_per_s",
    ]
    assert np.isnan(m["late"][0]) and m["late"][1] == 1.0
    assert list(m["step"]) == [2, 4] and res.ema == {}
    assert res.inference_networks()["a"] is res.networks["a"]  # no EMA: the trained network
    assert not res.networks["a"].training  # evaluation mode after training


def test_time_budget_stops_with_a_checkpoint(tmp_path: Path) -> None:
    res = fit_objective(
        TwoNets(), config=_cfg(time_budget_s=1e-9, epochs=5), run_dir=tmp_path, progress=False
    )
    assert res.stopped_early and res.step == 1
    assert json.loads((tmp_path / "train_state.json").read_text())["step"] == 1
    more = fit_objective(
        TwoNets(), config=_cfg(epochs=5), run_dir=tmp_path, resume=True, progress=False
    )
    assert more.step == 10 and not more.stopped_early


def test_resume_refusals_name_the_difference(tmp_path: Path) -> None:
    runs, tmp_path = tmp_path, tmp_path / "run"
    with pytest.raises(MedgenFileNotFoundError, match=r"no checkpoint\.pt and train_state\.json"):
        fit_objective(TwoNets(), config=_cfg(), run_dir=runs / "none", resume=True)
    fit_objective(TwoNets(), config=_cfg(), run_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"differs in \['lr_b'\]"):
        fit_objective(TwoNets(lr_b=0.5), config=_cfg(), run_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match=r"differs in \['batch_size', 'run_info.data'\]"):
        fit_objective(
            TwoNets(),
            config=_cfg(batch_size=3),
            run_dir=tmp_path,
            resume=True,
            run_info={"data": 1},
        )

    class Renamed(TwoNets):
        kind = "renamed"

    with pytest.raises(ConfigError, match="written by the 'two-nets' objective, not 'renamed'"):
        fit_objective(Renamed(), config=_cfg(), run_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match=r"differs in \['ema_decay'\]"):
        fit_objective(TwoNets(), config=_cfg(ema_decay=None), run_dir=tmp_path, resume=True)
    # a damaged checkpoint: a medgen error naming the file, not torch's weights_only advice
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MedgenValueError, match=r"checkpoint\.pt: cannot read the checkpoint") as e:
        fit_objective(TwoNets(), config=_cfg(), run_dir=tmp_path, resume=True)
    assert "weights_only" not in str(e.value)


def test_objective_mistakes_are_config_errors() -> None:
    class Dotted(TwoNets):
        def build_networks(self) -> dict[str, nn.Module]:
            return {"a.b": nn.Linear(1, 1)}

    with pytest.raises(ConfigError, match="names must be non-empty strings without dots"):
        fit_objective(Dotted(), config=_cfg(), progress=False)

    class NoSuchEma(TwoNets):
        ema_networks = ("c",)

    with pytest.raises(ConfigError, match=r"did not build \(\['c'\]\); it built \['a', 'b'\]"):
        fit_objective(NoSuchEma(), config=_cfg(), progress=False)

    class WrongOptimiser(TwoNets):
        def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict:
            ctx.backward(torch.zeros((), requires_grad=True), "gen")
            return {}

    with pytest.raises(ConfigError, match=r"no such optimiser; the objective built \['a', 'b'\]"):
        fit_objective(WrongOptimiser(), config=_cfg(), progress=False)

    class Clash(TwoNets):
        def config_dict(self) -> dict[str, Any]:
            return {"epochs": 3}

    with pytest.raises(ConfigError, match=r"option\(s\) \['epochs'\] collide with engine"):
        fit_objective(Clash(), config=_cfg(), progress=False)
    with pytest.raises(MedgenValueError, match="the engine options are not set yet"):
        _ = TwoNets().seed


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"epochs": 0}, "EngineConfig.epochs must be a positive integer, not 0"),
        ({"lr_schedule": "step"}, "lr_schedule must be one of ('constant', 'cosine'), not 'step'"),
        ({"ema_decay": 1.0}, "ema_decay must be in (0, 1) or None, not 1.0"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0, not -1"),
        ({"time_budget_s": "1h"}, "time_budget_s must be a number of seconds or None, not '1h'"),
    ],
)
def test_engine_config_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        EngineConfig(**kw)


def test_engine_config_from_dict_names_unknown_keys() -> None:
    assert EngineConfig.from_dict({"epochs": 3}).total_steps == 150
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['epoch'\]"):
        EngineConfig.from_dict({"epoch": 3})
