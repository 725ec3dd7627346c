"""The objectives beyond restoration, each added without touching the engine: CycleGAN on two
sub-cohorts (unpaired), the KL autoencoder (+ PatchGAN), latent diffusion beside a frozen
autoencoder; their model kinds saved and loaded through ``medgen.generative.load``.

Tiny networks (widths 4-8, 16-px patches, a handful of steps) on MNI152 slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import (
    EngineConfig,
    GenerativeModel,
    fit_objective,
    load,
    register_model_kind,
)
from medgen.generative.objectives import (
    AutoencoderConfig,
    AutoencoderObjective,
    CycleGANConfig,
    CycleGANObjective,
    DiffusionConfig,
    DiffusionObjective,
)
from medgen.generative.objectives.diffusion import build_unet, sample
from medgen.generative.objectives.latent import build_autoencoder
from medgen.generative.objectives.unpaired import ImagePool, build_cyclegan_networks, domain_pools

CYCLE = CycleGANConfig(
    channels=(4, 8), discriminator_channels=4, num_layers_d=1, patch_size=16, pool_size=3
)
AE = AutoencoderConfig(
    channels=(4, 8),
    latent_channels=2,
    patch_size=16,
    discriminator_channels=4,
    num_layers_d=1,
    lr_g=1e-2,
)
DIFF = DiffusionConfig(channels=(8, 8), num_head_channels=4, patch_size=16, num_train_timesteps=50)


def _engine(**kw: Any) -> EngineConfig:
    base: dict[str, Any] = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "device": "cpu"}
    return EngineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def nifti_cohort(tmp_path_factory: pytest.TempPathFactory, write_cohort: Any) -> Path:
    """Three small 3D NIfTI volumes (64x80x4), two of site A, one of site B."""
    d = tmp_path_factory.mktemp("cohort")
    return write_cohort(d, affine=np.diag([2.0, 2.0, 3.0, 1.0]), gains=(1.0, 2.0, 3.0))


# ---------------------------------------------------------------------------------- CycleGAN


def test_domain_pools_come_from_two_sub_cohorts(nifti_cohort: Path) -> None:
    from medgen.cohort import Cohort

    cohort = Cohort.from_manifest(nifti_cohort)
    a, b = domain_pools(cohort, by="site", a="A", b="B")
    assert len(a) == 2 * len(b) and len(b) >= 1  # foreground slices of 2 vs 1 volumes
    assert all(s.shape == (64, 80) and s.dtype == np.float32 for s in a + b)
    # each volume is scaled to 0..1 by its own robust range (site B is twice as bright)
    assert max(float(np.percentile(s, 99)) for s in b) < 1.1
    with pytest.raises(
        MedgenValueError, match=r"no rows with site == 'C'; the column holds \['A', 'B'\]"
    ):
        domain_pools(cohort, by="site", a="A", b="C")


def test_cyclegan_batches_are_unpaired_draws_from_the_two_pools(mni_slices: np.ndarray) -> None:
    dark = [s * 0.4 for s in mni_slices]  # domain A: 0..0.4
    bright = [0.5 + s * 0.5 for s in mni_slices]  # domain B: 0.5..1
    obj = CycleGANObjective(dark, bright, config=CYCLE)
    obj.setup(_engine(batch_size=3))
    batch = obj.sample_batch(4)
    assert batch["a"].shape == batch["b"].shape == (3, 1, 16, 16)
    assert float(batch["a"].max()) <= 0.4 < 0.5 <= float(batch["b"].min())
    assert torch.equal(obj.sample_batch(4)["a"], batch["a"])  # a pure function of the step
    assert not torch.equal(obj.sample_batch(5)["a"], batch["a"])
    with pytest.raises(
        MedgenValueError, match=r"domain_b\[0\]: expected a 2D image of at least 16"
    ):
        CycleGANObjective(dark, [np.zeros((8, 8))], config=CYCLE)
    with pytest.raises(ConfigError, match="pool_size must be an integer >= 0"):
        CycleGANConfig(pool_size=-1)


def test_cyclegan_trains_all_four_networks_and_resumes_bitwise(
    tmp_path: Path, mni_slices: np.ndarray, run_tensors: Any
) -> None:
    """Two generators + two discriminators + the image pool (extra state): interrupted after
    epoch 1 and resumed == uninterrupted, bitwise, pool included."""
    a_imgs = list(mni_slices[:2])
    b_imgs = [1.0 - s for s in mni_slices[2:]]
    torch.manual_seed(0)
    untrained = build_cyclegan_networks(CYCLE)
    full_obj = CycleGANObjective(a_imgs, b_imgs, config=CYCLE)
    full = fit_objective(full_obj, config=_engine(), run_dir=tmp_path / "a", progress=False)
    assert set(full.networks) == {"g_ab", "g_ba", "d_a", "d_b"} and set(full.ema) == {
        "g_ab",
        "g_ba",
    }
    for name, net in full.networks.items():  # built under the seed: compare to a seeded build
        before = untrained[name].state_dict()
        assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items()), name
    assert len(full_obj.fakes_a.images) == 3  # the pool filled up (2 fakes per step)
    h = full.history[-1]
    assert all(np.isfinite(h[k]) for k in ("loss_g", "adv", "cycle", "identity", "loss_d"))

    fit_objective(
        CycleGANObjective(a_imgs, b_imgs, config=CYCLE),
        config=_engine(epochs=1),
        run_dir=tmp_path / "b",
        progress=False,
    )
    resumed_obj = CycleGANObjective(a_imgs, b_imgs, config=CYCLE)
    resumed = fit_objective(
        resumed_obj, config=_engine(), run_dir=tmp_path / "b", resume=True, progress=False
    )
    assert resumed.step == 4
    sa, sb = run_tensors(full), run_tensors(resumed)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
    assert torch.equal(full_obj.fakes_a.state(), resumed_obj.fakes_a.state())
    assert torch.equal(full_obj.fakes_b.state(), resumed_obj.fakes_b.state())
    with pytest.raises(ConfigError, match=r"differs in \['cycle_weight'\]"):
        other = CycleGANConfig(**{**CYCLE.__dict__, "cycle_weight": 1.0})
        fit_objective(
            CycleGANObjective(a_imgs, b_imgs, config=other),
            config=_engine(),
            run_dir=tmp_path / "b",
            resume=True,
        )


def test_image_pool_returns_earlier_fakes_half_the_time() -> None:
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling up: the fakes themselves
    new = -1.0 - torch.arange(200.0).reshape(200, 1, 1, 1)
    out = pool.query(new)
    swapped = int((out != new).sum())
    assert 70 < swapped < 130  # about half are swapped for earlier fakes
    assert set(out[out != new].tolist()) <= set(range(4)) | set(
        (-1.0 - torch.arange(200.0)).tolist()
    )
    assert {float(v) for v in pool.state().flatten()} <= set(new.flatten().tolist())
    assert ImagePool(0).query(new) is new
    restored = ImagePool(4)
    restored.load(pool.state())
    assert torch.equal(restored.state(), pool.state())


# ---------------------------------------------------------------------------------- autoencoder


def test_autoencoder_reconstruction_improves_and_the_discriminator_starts_after_warmup(
    mni_slices: np.ndarray,
) -> None:
    cfg = AutoencoderConfig(**{**AE.__dict__, "adv_weight": 0.1, "adv_warmup_steps": 4})
    res = fit_objective(
        AutoencoderObjective(list(mni_slices), config=cfg),
        config=_engine(epochs=2, steps_per_epoch=4, batch_size=4, ema_decay=None),
        progress=False,
    )
    first, last = res.history
    assert np.isnan(first["loss_d"]) and np.isnan(first["adv"])  # warm-up: content only
    assert np.isfinite(last["loss_d"]) and np.isfinite(last["adv"])
    assert last["l1"] < first["l1"]
    assert set(res.networks) == {"autoencoder", "discriminator"}
    x = torch.from_numpy(mni_slices[:1, None, :16, :16].copy())
    recon, z_mu, _ = res.inference_networks()["autoencoder"](x)
    assert recon.shape == x.shape and z_mu.shape == (1, 2, 8, 8)
    with pytest.raises(ConfigError, match="norm_num_groups=4 must divide every width"):
        AutoencoderConfig(channels=(4, 6))


# ---------------------------------------------------------------------------------- latent diffusion


@register_model_kind("test-ldm")
class TinyLDM(GenerativeModel):
    """A latent diffusion model kind for the tests: autoencoder + U-Net."""

    def __init__(self, ae: AutoencoderConfig, diffusion: DiffusionConfig) -> None:
        super().__init__()
        self.ae_config, self.diffusion_config = ae, diffusion
        self.autoencoder = build_autoencoder(ae)
        self.unet = build_unet(diffusion, ae.latent_channels)

    def networks(self) -> dict[str, nn.Module]:
        return {"autoencoder": self.autoencoder, "unet": self.unet}

    def model_config(self) -> dict[str, Any]:
        return {
            "autoencoder": {**self.ae_config.__dict__},
            "diffusion": {**self.diffusion_config.__dict__},
        }

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> TinyLDM:
        ae = {k: tuple(v) if isinstance(v, list) else v for k, v in config["autoencoder"].items()}
        df = {k: tuple(v) if isinstance(v, list) else v for k, v in config["diffusion"].items()}
        return cls(AutoencoderConfig(**ae), DiffusionConfig(**df))

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        p = self.diffusion_config.patch_size // 2
        return sample(
            self.unet,
            config=self.diffusion_config,
            shape=(n, self.ae_config.latent_channels, p, p),
            autoencoder=self.autoencoder,
            num_inference_steps=5,
            generator=generator,
        )


def test_latent_diffusion_beside_a_frozen_autoencoder_saves_and_loads(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    images = list(mni_slices)
    stage1 = fit_objective(
        AutoencoderObjective(images, config=AE), config=_engine(epochs=1), progress=False
    )
    ae = stage1.inference_networks()["autoencoder"]
    frozen = {k: v.clone() for k, v in ae.state_dict().items()}
    obj = DiffusionObjective(images, config=DIFF, autoencoder=ae)
    res = fit_objective(obj, config=_engine(), run_dir=tmp_path / "run", progress=False)
    assert res.inference_networks().keys() == {"unet", "autoencoder"}
    for k, v in res.networks["autoencoder"].state_dict().items():
        assert torch.equal(v, frozen[k]), f"the frozen autoencoder changed: {k}"
    assert all(np.isfinite(r["loss"]) for r in res.history)

    model = TinyLDM(AE, DIFF)
    model.autoencoder = res.networks["autoencoder"]
    model.unet = res.inference_networks()["unet"]
    model.record_training(res, train_config=_engine(), data_hash="0" * 64)
    model.save(tmp_path / "model")
    again = load(tmp_path / "model")
    assert isinstance(again, TinyLDM) and again.steps_trained == 4 and again.seed == 0
    assert again.train_config["epochs"] == 2 and again.data_hash == "0" * 64
    a = model.sample(2, generator=torch.Generator().manual_seed(3))
    b = again.sample(2, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b)
    with pytest.raises(ConfigError, match=r"num_inference_steps must be in \[1, 50\]"):
        sample(again.unet, config=DIFF, shape=(1, 2, 8, 8), num_inference_steps=51)


def test_pixel_space_diffusion_noise_prediction_improves(mni_slices: np.ndarray) -> None:
    """Without an autoencoder the U-Net learns to predict the noise on image patches."""
    cfg = DiffusionConfig(**{**DIFF.__dict__, "lr": 3e-3, "num_train_timesteps": 20})
    res = fit_objective(
        DiffusionObjective(list(mni_slices), config=cfg),
        config=_engine(epochs=2, steps_per_epoch=8, batch_size=4, ema_decay=None),
        progress=False,
    )
    assert res.networks.keys() == {"unet"}
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        DiffusionConfig(schedule="cosin")


# ------------------------------------------------------------------- conditional (guidance)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_guided_ddim_in_one_batched_pass_equals_two_passes(spatial_dims: int) -> None:
    """Classifier-free guidance from one U-Net pass over ``2B`` (labels, then the null class)
    gives the two-pass result (within float round-off: GEMM blocking depends on the batch)."""
    from medgen.generative.objectives.conditional import (
        ConditionalDiffusionConfig,
        build_conditional_unet,
        sample_ddim,
    )

    cfg = ConditionalDiffusionConfig(
        spatial_dims=spatial_dims,
        channels=(8, 16),
        num_train_timesteps=50,
        num_class_embeds=4,
        patch_size=8,
    )
    torch.manual_seed(0)
    unet = build_conditional_unet(cfg, 2)
    with torch.no_grad():  # MONAI zero-initialises the output layers: every estimate would be 0
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noise = torch.randn((5, 2, *([8] * spatial_dims)), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 1])
    kw: dict[str, Any] = {"config": cfg, "labels": labels, "noise": noise, "num_inference_steps": 5}
    for gs in (2.0, 1.0):
        one = sample_ddim(unet, guidance_scale=gs, **kw)
        two = sample_ddim(unet, guidance_scale=gs, batch_guidance=False, **kw)
        assert one.shape == noise.shape and torch.isfinite(one).all()
        torch.testing.assert_close(one, two, rtol=0.0, atol=1e-5)
    # SDEdit (start < 1, from given latents) takes the same path
    lat = torch.randn_like(noise)
    one = sample_ddim(unet, guidance_scale=3.0, start=0.5, latents=lat, **kw)
    two = sample_ddim(unet, guidance_scale=3.0, start=0.5, latents=lat, batch_guidance=False, **kw)
    torch.testing.assert_close(one, two, rtol=0.0, atol=1e-5)
    # the comparison is not vacuous: guidance (the null-class estimate) changes the result
    unguided = sample_ddim(unet, guidance_scale=1.0, start=0.5, latents=lat, **kw)
    assert (one - unguided).abs().max() > 1e-2


def test_cyclegan_gain_init_sets_where_the_generators_start(mni_slices: np.ndarray) -> None:
    """gain 0 (the default, ReZero) starts both generators at the identity; gain 1 does not."""
    from dataclasses import replace

    x = torch.from_numpy(np.asarray(mni_slices[:1], dtype=np.float32))[:, None]
    x = x[..., : CYCLE.patch_size, : CYCLE.patch_size]
    for gain, identity in ((0.0, True), (1.0, False)):
        torch.manual_seed(0)
        nets = build_cyclegan_networks(replace(CYCLE, gain_init=gain))
        for name in ("g_ab", "g_ba"):
            out = nets[name](x).image
            assert torch.equal(out, x) is identity, (gain, name)
