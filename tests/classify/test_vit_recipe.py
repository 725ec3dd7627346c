"""The ViT recipe: learning-rate schedule, label smoothing, per-model training defaults, the
``strong`` augmentation and the convolutional-stem ViT (``vit_hybrid``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medgen.classify import Classifier, build_model, get_model_spec, train
from medgen.classify._explain import _token_grid, _transformer_parts, model_family
from medgen.classify._train import (
    RECIPE_DEFAULTS,
    TrainConfig,
    _loss,
    fit_tensors,
    lr_factor,
    resolve_recipe,
)
from medgen.errors import ConfigError
from medgen.transforms import augmentation

TINY_HYBRID = {
    "stem_channels": (4, 8),
    "hidden_size": 16,
    "mlp_dim": 32,
    "num_layers": 2,
    "num_heads": 2,
}
TINY_CNN = {"init_features": 4, "growth_rate": 4, "block_config": (1, 1)}


# ---------------------------------------------------------------------------------------------
# schedule


@pytest.mark.parametrize(
    ("progress", "schedule", "warmup", "expected"),
    [
        (0.0, "cosine", 0.1, 0.0),
        (0.05, "cosine", 0.1, 0.5),
        (0.1, "cosine", 0.1, 1.0),
        (0.325, "cosine", 0.1, 0.5 * (1 + math.cos(math.pi * 0.25))),
        (0.55, "cosine", 0.1, 0.5),
        (1.0, "cosine", 0.1, 0.0),
        (0.5, "cosine", 0.0, 0.5),
        (0.02, "constant", 0.2, 0.1),
        (0.7, "constant", 0.2, 1.0),
        (1.7, "cosine", 0.0, 0.0),  # clipped to the end
    ],
)
def test_lr_factor_values(progress: float, schedule: str, warmup: float, expected: float) -> None:
    got = lr_factor(progress, schedule=schedule, warmup_fraction=warmup)
    assert got == pytest.approx(expected, abs=1e-12)


def _fit(cfg: TrainConfig, n: int = 16) -> object:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.arange(n) % 2
    return fit_tensors(x, y, x[:8], y[:8], cfg=cfg, progress=False)


def _cfg(**kw: object) -> TrainConfig:
    base: dict = dict(
        model="densenet",
        model_kwargs=TINY_CNN,
        classes=[0, 1],
        image_size=[16, 16],
        batch_size=4,
        augment="none",
        calibrate=False,
        patience=None,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_cosine_schedule_sets_the_rate_of_every_step() -> None:
    # 16 images, batch 4: 4 steps per epoch, 3 epochs = 12 steps; the history records the rate
    # of the last step of each epoch (steps 3, 7, 11 -> progress 4/12, 8/12, 12/12)
    res = _fit(_cfg(epochs=3, lr=0.01, lr_schedule="cosine", warmup_fraction=0.25))
    q = [(p - 0.25) / 0.75 for p in (4 / 12, 8 / 12, 12 / 12)]
    want = [0.01 * 0.5 * (1 + math.cos(math.pi * v)) for v in q]
    assert res.history["lr"].tolist() == pytest.approx(want, abs=1e-12)  # type: ignore[attr-defined]
    constant = _fit(_cfg(epochs=2, lr=0.01))
    assert constant.history["lr"].tolist() == [0.01, 0.01]  # type: ignore[attr-defined]


def test_the_schedule_changes_the_weights() -> None:
    a = _fit(_cfg(epochs=1, lr=0.01))
    b = _fit(_cfg(epochs=1, lr=0.01, lr_schedule="cosine", warmup_fraction=0.5))
    wa, wb = a.net.state_dict(), b.net.state_dict()  # type: ignore[attr-defined]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------------------
# label smoothing


def test_label_smoothing_is_the_smoothed_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = _loss(None, None, 0.0)(logits, y)
    smooth = _loss(None, None, 0.2)(logits, y)
    logp = torch.log_softmax(logits, 1)
    want = (0.8 * -logp[torch.arange(6), y] + 0.2 * -logp.mean(1)).mean()
    torch.testing.assert_close(smooth, want)
    assert not torch.isclose(plain, smooth)


def test_label_smoothing_changes_the_training_loss_only() -> None:
    # lr = 0: the network never changes, so validation (plain cross-entropy) is identical
    a = _fit(_cfg(epochs=1, lr=0.0))
    b = _fit(_cfg(epochs=1, lr=0.0, label_smoothing=0.3))
    ha, hb = a.history.iloc[0], b.history.iloc[0]  # type: ignore[attr-defined]
    assert ha["val_loss"] == hb["val_loss"]
    assert ha["train_loss"] != pytest.approx(hb["train_loss"], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# gradient clipping


def test_grad_clip_bounds_the_step_and_is_off_at_zero() -> None:
    # plain SGD-like check through AdamW is indirect; compare weights instead: a clip far above
    # any gradient norm is today's training bitwise, a tiny one changes it
    free = _fit(_cfg(epochs=1, lr=0.01))
    huge = _fit(_cfg(epochs=1, lr=0.01, grad_clip=1e9))
    tiny = _fit(_cfg(epochs=1, lr=0.01, grad_clip=1e-4))
    wf, wh, wt = (r.net.state_dict() for r in (free, huge, tiny))  # type: ignore[attr-defined]
    assert all(torch.equal(wf[k], wh[k]) for k in wf)
    assert any(not torch.equal(wf[k], wt[k]) for k in wf)


def test_grad_clip_calls_clip_grad_norm_with_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params: object, max_norm: float, *a: object, **k: object) -> torch.Tensor:
        seen.append(float(max_norm))
        total = real(params, max_norm, *a, **k)  # type: ignore[arg-type]
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _fit(_cfg(epochs=1, lr=0.01, grad_clip=0.5))
    assert seen == [0.5] * 4  # 16 images, batch 4: one call per step
    seen.clear()
    _fit(_cfg(epochs=1, lr=0.01))
    assert seen == []


def test_a_run_saved_before_grad_clip_resumes(tiny_manifest: Path, tmp_path: Path) -> None:
    import json

    common = dict(
        model="densenet",
        model_kwargs=TINY_CNN,
        batch_size=4,
        steps_per_epoch=1,
        calibrate=False,
        progress=False,
        seed=0,
    )
    train(tiny_manifest, epochs=1, out_dir=tmp_path / "run", **common)
    state = tmp_path / "run" / "train_state.json"
    data = json.loads(state.read_text())
    del data["config"]["grad_clip"]  # as written before the option existed
    state.write_text(json.dumps(data))
    clf = train(tiny_manifest, epochs=2, out_dir=tmp_path / "run", resume=True, **common)
    assert clf.config["grad_clip"] == 0.0
    with pytest.raises(ConfigError, match=r"grad_clip \(stored 0.0, now 1.0\)"):
        train(
            tiny_manifest,
            epochs=3,
            out_dir=tmp_path / "run",
            resume=True,
            grad_clip=1.0,
            **common,
        )


# ---------------------------------------------------------------------------------------------
# options: recipe defaults and errors


def test_recipe_defaults_per_model() -> None:
    cnn = resolve_recipe("densenet121")
    assert cnn == RECIPE_DEFAULTS
    assert get_model_spec("densenet121").train_defaults == {}
    vit = resolve_recipe("vit_hybrid")
    assert vit == {**RECIPE_DEFAULTS, **get_model_spec("vit_hybrid").train_defaults}
    assert vit["lr_schedule"] == "cosine" and vit["label_smoothing"] > 0
    assert resolve_recipe("vit_hybrid", lr_schedule="constant", lr=5e-4)["lr_schedule"] == (
        "constant"
    )
    assert resolve_recipe("VIT_hybrid", lr=5e-4)["lr"] == 5e-4


def test_train_records_the_resolved_recipe(tiny_manifest: Path) -> None:
    common = dict(
        epochs=1, steps_per_epoch=1, batch_size=4, calibrate=False, progress=False, seed=0
    )
    clf = train(tiny_manifest, model="vit_hybrid", model_kwargs=TINY_HYBRID, **common)
    recipe = get_model_spec("vit_hybrid").train_defaults
    assert {k: clf.config[k] for k in recipe} == recipe
    mine = train(
        tiny_manifest,
        model="vit_hybrid",
        model_kwargs=TINY_HYBRID,
        augment="none",
        label_smoothing=0.0,
        **common,
    )
    assert (mine.config["augment"], mine.config["label_smoothing"]) == ("none", 0.0)
    assert mine.config["lr_schedule"] == recipe["lr_schedule"]
    cnn = train(tiny_manifest, model="densenet", model_kwargs=TINY_CNN, **common)
    assert {k: cnn.config[k] for k in RECIPE_DEFAULTS} == RECIPE_DEFAULTS


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr_schedule": "cosin"}, "Unknown lr_schedule 'cosin'. Did you mean 'cosine'?"),
        ({"warmup_fraction": 1.0}, "warmup_fraction must be a number in [0, 1)"),
        ({"warmup_fraction": "0.1"}, "warmup_fraction must be a number in [0, 1)"),
        ({"label_smoothing": -0.1}, "label_smoothing must be a number in [0, 1)"),
        ({"lr": -1.0}, "lr must be a number >= 0"),
        ({"weight_decay": -0.5}, "weight_decay must be a number >= 0"),
        ({"grad_clip": -1.0}, "grad_clip must be a number >= 0"),
        ({"grad_clip": float("nan")}, "grad_clip must be a number >= 0"),
        (
            {"label_smoothing": 0.1, "focal_gamma": 2.0},
            "label_smoothing=0.1 applies to the cross-entropy loss",
        ),
    ],
)
def test_bad_recipe_options_raise_config_error(tiny_manifest: Path, kw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        train(tiny_manifest, model="densenet", epochs=1, progress=False, **kw)
    assert message in str(err.value)


def test_fit_tensors_checks_the_recipe_too() -> None:
    with pytest.raises(ConfigError, match="label_smoothing must be a number in"):
        _fit(_cfg(epochs=1, label_smoothing=1.0))


# ---------------------------------------------------------------------------------------------
# strong augmentation


def test_strong_augmentation_is_seeded_and_keeps_the_shape() -> None:
    x = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = [[torch.as_tensor(augmentation("strong", seed=s)(x)) for _ in range(1)] for s in (1, 1)]
    torch.testing.assert_close(outs[0][0], outs[1][0])
    a = augmentation("strong", seed=1)
    seq = [torch.as_tensor(a(x)) for _ in range(8)]
    assert all(t.shape == x.shape for t in seq)
    assert sum(not torch.equal(t, x) for t in seq) >= 6  # affine p=0.8 plus the rest
    vol = torch.randn(1, 16, 16, 16)
    assert torch.as_tensor(augmentation("strong", spatial_dims=3, seed=0)(vol)).shape == vol.shape


# ---------------------------------------------------------------------------------------------
# the convolutional-stem ViT


@pytest.mark.parametrize(
    ("size", "kwargs", "grid"),
    [
        ((64, 64), {}, (8, 8)),  # the default: 4 residual stages, 3 of them halve: 8x8 tokens
        ((32, 32), TINY_HYBRID, (16, 16)),  # strides (1, 2)
        ((32, 32, 32), dict(TINY_HYBRID, stem_channels=(4, 8, 8)), (8, 8, 8)),
        ((64, 64), dict(TINY_HYBRID, stem_strides=(2, 2), stem_block="conv"), (16, 16)),
        (
            (32, 32, 32),
            dict(TINY_HYBRID, stem_channels=(4, 8, 8), stem_strides=(2, 2, 2), pool="cls"),
            (4, 4, 4),
        ),
        ((64, 64), dict(TINY_HYBRID, stem_block="densenet121"), (8, 8)),
    ],
)
def test_vit_hybrid_builds_in_2d_and_3d(size: tuple, kwargs: dict, grid: tuple) -> None:
    torch.manual_seed(0)
    net = build_model(
        "vit_hybrid",
        spatial_dims=len(size),
        in_channels=1,
        num_classes=3,
        image_size=size,
        model_kwargs=kwargs,
    )
    x = torch.randn(2, 1, *size)
    assert net(x).shape == (2, 3)
    parts = _transformer_parts(net)
    assert parts is not None
    assert _token_grid(parts[0], x, net) == grid
    assert get_model_spec("vit_hybrid").family == "vit"


def test_vit_hybrid_refuses_sizes_its_stem_cannot_halve() -> None:
    with pytest.raises(ConfigError, match=r"divisible by 8, not \(60, 64\)"):
        build_model("vit_hybrid", spatial_dims=2, in_channels=1, num_classes=2, image_size=(60, 64))
    for bad, name in [
        ({"stem_channels": ()}, "stem_channels"),
        ({"stem_strides": (2, 3, 2)}, "stem_strides"),
        ({"stem_block": "dense"}, "stem_block"),
        ({"pool": "max"}, "pool"),
    ]:
        with pytest.raises(ConfigError, match=rf"model_kwargs\['{name}'\] must"):
            build_model(
                "vit_hybrid",
                spatial_dims=2,
                in_channels=1,
                num_classes=2,
                image_size=(64, 64),
                model_kwargs=bad,
            )


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_vit_hybrid_explains_with_rollout_at_the_image_shape(pool: str) -> None:
    size = (32, 32)
    kwargs = dict(TINY_HYBRID, pool=pool)
    torch.manual_seed(0)
    net = build_model(
        "vit_hybrid",
        spatial_dims=2,
        in_channels=1,
        num_classes=2,
        image_size=size,
        model_kwargs=kwargs,
    )
    clf = Classifier(
        net,
        config={
            "model": "vit_hybrid",
            "model_kwargs": kwargs,
            "spatial_dims": 2,
            "in_channels": 1,
            "image_size": list(size),
            "classes": [0, 1],
            "target": "label",
        },
    )
    assert model_family(clf) == "vit"
    images = torch.randn(3, 1, 40, 48, generator=torch.Generator().manual_seed(0))
    auto = clf.explain(images)
    assert auto.shape == (3, 1, 40, 48)
    torch.testing.assert_close(auto, clf.explain(images, method="rollout"))
    assert clf.explain(images, method="gradcam").shape == (3, 1, 40, 48)
    assert float(auto.amax() - auto.amin()) > 0  # not a constant map


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_recipe_options(tiny_manifest: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from medgen.cli import app

    runner = CliRunner()
    base = ["train", str(tiny_manifest), "--model", "densenet", "--epochs", "1", "--no-progress"]
    r = runner.invoke(
        app,
        [
            *base,
            "-o",
            str(tmp_path / "run"),
            "--lr-schedule",
            "cosine",
            "--warmup-fraction",
            "0.2",
            "--label-smoothing",
            "0.05",
            "--weight-decay",
            "0.01",
            "--augment",
            "strong",
            "--grad-clip",
            "2.5",
        ],
    )
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    got = {k: config["config"][k] for k in RECIPE_DEFAULTS}
    assert got == {
        "lr": 1e-3,
        "weight_decay": 0.01,
        "augment": "strong",
        "lr_schedule": "cosine",
        "warmup_fraction": 0.2,
        "label_smoothing": 0.05,
        "grad_clip": 2.5,
    }
    bad = runner.invoke(app, [*base, "-o", str(tmp_path / "bad"), "--lr-schedule", "step"])
    assert bad.exit_code != 0
    assert "Unknown lr_schedule 'step'" in str(bad.exception) + bad.output
