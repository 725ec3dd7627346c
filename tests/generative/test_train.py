"""The paired restoration recipe on the engine: ``train`` / ``TrainConfig`` (medgen.generative._trainer).

Tiny configs (channels (4, 8), 16-px patches) on slices of nilearn's MNI152 template.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.errors import ConfigError, MedgenFileNotFoundError
from medgen.generative import TrainConfig, train
from medgen.generative._nets import build_discriminator, build_generator


def _tiny_batches(images: np.ndarray, seed: int = 0, bs: int = 4):
    """A deterministic ``step -> batch`` process: Gaussian noise 0.1 on 16-px patches."""

    def sample(step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([seed, step])
        xs, ys = [], []
        for _ in range(bs):
            img = images[int(rng.integers(len(images)))]
            a, b = int(rng.integers(img.shape[0] - 16)), int(rng.integers(img.shape[1] - 16))
            y = img[a : a + 16, b : b + 16]
            xs.append(y + rng.normal(0, 0.1, y.shape))
            ys.append(y)
        return {
            "input": torch.tensor(np.stack(xs)[:, None], dtype=torch.float32),
            "target": torch.tensor(np.stack(ys)[:, None], dtype=torch.float32),
        }

    return sample


# ---------------------------------------------------------------------------------- trainer


def test_training_reduces_the_loss(mni_slices: np.ndarray) -> None:
    """Steps on one fixed batch of noisy MNI patches reduce that batch's L1 loss."""
    torch.manual_seed(0)
    net = build_generator("unet", spatial_dims=2, channels=(4, 8))
    fixed = _tiny_batches(mni_slices)(0)

    def l1() -> float:
        net.eval()
        with torch.no_grad():
            return float(torch.mean(torch.abs(net(fixed["input"]).image - fixed["target"])))

    before = l1()
    cfg = TrainConfig(
        epochs=1, steps_per_epoch=25, batch_size=4, lr_g=1e-2, ssim_weight=0.0, ema_decay=None
    )
    res = train(net, lambda step: fixed, config=cfg, progress=False)
    after = l1()
    assert res.step == 25 and len(res.history) == 1
    assert after < 0.92 * before, (before, after)


def test_mse_term_is_trained_and_logged(mni_slices: np.ndarray) -> None:
    """``mse_weight`` adds an MSE (L2) term: it is in the history and MSE-only training works."""
    torch.manual_seed(0)
    net = build_generator("unet", spatial_dims=2, channels=(4, 8))
    fixed = _tiny_batches(mni_slices)(0)

    def mse() -> float:
        net.eval()
        with torch.no_grad():
            return float(torch.mean((net(fixed["input"]).image - fixed["target"]) ** 2))

    before = mse()
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=25,
        batch_size=4,
        lr_g=1e-2,
        l1_weight=0.0,
        mse_weight=1.0,
        ssim_weight=0.0,
        ema_decay=None,
    )
    res = train(net, lambda step: fixed, config=cfg, progress=False)
    assert res.history[0]["mse"] == pytest.approx(res.history[0]["loss_g"])
    assert mse() < 0.9 * before
    with pytest.raises(ConfigError):
        TrainConfig(mse_weight=-1.0)


@pytest.mark.parametrize("variant", ["unet_adversarial", "vae"])
def test_resume_continues_identically(tmp_path: Path, mni_slices: np.ndarray, variant: str) -> None:
    """Interrupted after epoch 1 and resumed == never interrupted, bitwise."""
    model = "vae" if variant == "vae" else "unet"
    adv = 0.05 if variant == "unet_adversarial" else 0.0
    sample = _tiny_batches(mni_slices)

    def run(run_dir: Path, epochs: int, resume: bool):
        torch.manual_seed(1)
        g = build_generator(model, spatial_dims=2, channels=(4, 8))
        d = build_discriminator(spatial_dims=2, in_channels=2, channels=4) if adv else None
        cfg = TrainConfig(
            epochs=epochs, steps_per_epoch=2, batch_size=2, adv_weight=adv, adv_warmup_steps=1
        )
        return train(
            g, sample, config=cfg, discriminator=d, run_dir=run_dir, resume=resume, progress=False
        )

    full = run(tmp_path / "a", 2, False)
    run(tmp_path / "b", 1, False)
    resumed = run(tmp_path / "b", 2, True)
    assert resumed.step == full.step == 4
    for name in ("generator", "ema"):
        sa = getattr(full, name).state_dict()
        sb = getattr(resumed, name).state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs after resume"
    metrics = pd.read_csv(tmp_path / "b" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2]
    if adv:
        assert metrics["loss_d"].notna().all()
    else:
        assert metrics["kl"].notna().all()


def test_resume_errors(tmp_path: Path, mni_slices: np.ndarray) -> None:
    sample = _tiny_batches(mni_slices)
    g = build_generator("unet", spatial_dims=2, channels=(4, 8))
    cfg = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2)
    with pytest.raises(MedgenFileNotFoundError, match=r"no checkpoint\.pt"):
        train(g, sample, config=cfg, run_dir=tmp_path / "nothing", resume=True, progress=False)
    train(g, sample, config=cfg, run_dir=tmp_path / "r", progress=False)
    other = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=2, lr_g=5e-4)
    with pytest.raises(ConfigError, match=r"differs in \['lr_g'\]"):
        train(g, sample, config=other, run_dir=tmp_path / "r", resume=True, progress=False)
    with pytest.raises(ConfigError, match="steps_per_epoch must be a positive integer"):
        TrainConfig(steps_per_epoch=0)
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig.from_dict({"epoch": 3})


def test_cosine_schedule_and_pair_workers_resume_identically(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    """A cosine LR schedule changes training; with it, a run resumed with a worker process making
    the batches ends bitwise where an uninterrupted run without workers ends."""
    from medgen.generative._trainer import lr_factor

    assert [lr_factor("cosine", k, 4) for k in (0, 2, 4, 9)] == pytest.approx([1, 0.5, 0, 0])
    assert lr_factor("constant", 3, 4) == 1.0
    sample = _tiny_batches(mni_slices)

    def run(run_dir: Path, schedule: str, epochs: int, workers: int, resume: bool, total: int = 2):
        torch.manual_seed(1)
        g = build_generator("unet", spatial_dims=2, channels=(4, 8))
        cfg = TrainConfig(
            epochs=total,
            steps_per_epoch=3,
            batch_size=2,
            lr_g=1e-2,
            lr_schedule=schedule,
            num_workers=workers,
            time_budget_s=None,
        )
        if epochs < total:  # interrupt after the first epoch: Ctrl-C stands in for a time budget

            def interrupted(step: int) -> dict[str, torch.Tensor]:
                if step >= 3 * epochs:
                    raise KeyboardInterrupt
                return sample(step)

            with pytest.raises(KeyboardInterrupt):
                train(g, interrupted, config=cfg, run_dir=run_dir, progress=False)
            return None
        return train(g, sample, config=cfg, run_dir=run_dir, resume=resume, progress=False)

    full = run(tmp_path / "a", "cosine", 2, 0, False)
    const = run(tmp_path / "c", "constant", 2, 0, False)
    run(tmp_path / "b", "cosine", 1, 0, False)
    resumed = run(tmp_path / "b", "cosine", 2, 1, True)
    assert full is not None and const is not None and resumed is not None
    assert resumed.step == full.step == 6
    sa, sb, sc = (r.generator.state_dict() for r in (full, resumed, const))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after a resume with a worker"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa), "the schedule changed nothing"
    # the schedule runs over epochs * steps_per_epoch: a resume with other epochs is refused
    g = build_generator("unet", spatial_dims=2, channels=(4, 8))
    longer = TrainConfig(epochs=3, steps_per_epoch=3, batch_size=2, lr_g=1e-2, lr_schedule="cosine")
    with pytest.raises(ConfigError, match=r"differs in \['epochs'\]"):
        train(g, sample, config=longer, run_dir=tmp_path / "a", resume=True, progress=False)
    with pytest.raises(ConfigError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="num_workers must be an integer >= 0"):
        TrainConfig(num_workers=-1)


def test_pair_workers_fall_back_where_fork_is_missing(
    mni_slices: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    g = build_generator("unet", spatial_dims=2, channels=(4, 8))
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, num_workers=2)
    with caplog.at_level("WARNING", logger="medgen.generative.engine"):
        res = train(g, _tiny_batches(mni_slices), config=cfg, progress=False)
    assert res.step == 2
    assert "lacks; making the training batches in the training process" in caplog.text


def test_checkpoints_of_the_trainer_before_the_engine_resume(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    """A checkpoint in the flat layout of the earlier trainer (generator, opt_g, ema,
    discriminator, opt_d, scaler) resumes, bitwise like an uninterrupted run."""
    sample = _tiny_batches(mni_slices)

    def run(run_dir: Path, epochs: int, resume: bool = False):
        torch.manual_seed(1)
        g = build_generator("unet", spatial_dims=2, channels=(4, 8))
        d = build_discriminator(spatial_dims=2, in_channels=2, channels=4)
        cfg = TrainConfig(epochs=epochs, steps_per_epoch=2, batch_size=2, adv_weight=0.05)
        return train(
            g, sample, config=cfg, discriminator=d, run_dir=run_dir, resume=resume, progress=False
        )

    full = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    flat = {
        "generator": ckpt["networks"]["generator"],
        "discriminator": ckpt["networks"]["discriminator"],
        "opt_g": ckpt["optimizers"]["generator"],
        "opt_d": ckpt["optimizers"]["discriminator"],
        "ema": ckpt["ema"]["generator"],
        "scaler": ckpt["scaler"],
    }
    torch.save(flat, tmp_path / "b" / "checkpoint.pt")
    resumed = run(tmp_path / "b", 2, resume=True)
    assert resumed.step == 4
    for a, b in ((full.generator, resumed.generator), (full.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.save({"something": torch.zeros(1)}, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ConfigError, match="not a checkpoint of the generative engine"):
        run(tmp_path / "b", 2, resume=True)
