"""One persistence and registry for generative models (medgen.generative._model), the generator
registry (medgen.generative._nets), and the docstring examples of the package."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError, RunFolderError
from medgen.generative import (
    Denoiser,
    GenerativeModel,
    SuperResolver,
    TrainConfig,
    available_generators,
    get_model_kind,
    load,
    model_kinds,
    register_generator,
    register_model_kind,
)

TINY = {"channels": (4, 8), "patch_size": 16}
FIT = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}
#: the "train" entry of a config.json written before the engine (a Denoiser's recipe)
LEGACY_TRAIN = """{"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "lr_g": 0.003, "lr_d": 0.0002,
 "betas": [0.9, 0.999], "lr_schedule": "constant", "l1_weight": 0.0, "mse_weight": 1.0,
 "ssim_weight": 0.0, "kl_weight": 1e-06, "adv_weight": 0.0, "adv_warmup_steps": 0,
 "ema_decay": 0.99, "amp": true, "time_budget_s": null, "num_workers": 0, "seed": 0,
 "device": "auto"}"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mni_slices: np.ndarray) -> Path:
    """A tiny trained denoiser's run folder."""
    run = tmp_path_factory.mktemp("den") / "run"
    Denoiser(**TINY, sigma=0.1).fit(list(mni_slices), run_dir=run, config=FIT, progress=False)
    return run


def _legacy_folder(model: Denoiser, d: Path) -> Path:
    """The layout earlier versions wrote: ``"task"`` + ``"restorer"`` in config.json, model.pt."""
    d.mkdir(parents=True)
    torch.save({k: v.clone() for k, v in model.network.state_dict().items()}, d / "model.pt")
    tc = json.loads(LEGACY_TRAIN)
    meta = {
        "task": model.task,
        "restorer": model._config_dict(),
        "train": tc,
        "seed": 0,
        "data_sha256": "ab" * 32,
        "steps_trained": 2,
        "history": [{"epoch": 1.0, "loss_g": 0.5}],
        "versions": {"torch": "2.0"},
    }
    (d / "config.json").write_text(json.dumps(meta))
    return d


def _strip_to_legacy(d: Path) -> None:
    """Remove what earlier versions did not write: the marker and the training state."""
    for name in ("run_complete.json", "checkpoint.pt", "train_state.json", ".medgen.lock"):
        (d / name).unlink(missing_ok=True)


def test_saved_folder_layout(trained: Path) -> None:
    meta = json.loads((trained / "config.json").read_text())
    assert meta["kind"] == meta["task"] == "denoise"
    assert {"model", "train", "seed", "data_sha256", "steps_trained", "history", "versions"} <= set(
        meta
    )
    assert meta["model"]["channels"] == [4, 8] and meta["versions"]["torch"] == torch.__version__
    assert TrainConfig.from_dict(meta["train"]).batch_size == 2
    assert meta["weights"]["file"] == "model.safetensors" and meta["weights"]["networks"] == [
        "generator"
    ]
    tensors = load_file(str(trained / "model.safetensors"))
    assert tensors and all(k.startswith("generator.") for k in tensors)
    assert not (trained / "model.pt").exists()


def test_load_returns_the_right_class(
    trained: Path, tmp_path: Path, mni_slices: np.ndarray
) -> None:
    den = Denoiser.load(trained)
    any_model = load(trained)
    assert type(any_model) is Denoiser and any_model.steps_trained == 2
    x = mni_slices[0]
    np.testing.assert_array_equal(any_model.apply(x), den.apply(x))
    assert isinstance(any_model.train_config, TrainConfig)
    sr = SuperResolver(scale=2, **TINY)
    assert type(load(sr.save(tmp_path / "sr"))) is SuperResolver
    assert {"denoise", "superres"} <= set(model_kinds())
    assert get_model_kind("superres") is SuperResolver


def test_folders_of_earlier_versions_still_load(tmp_path: Path, mni_slices: np.ndarray) -> None:
    den = Denoiser(**TINY, sigma=0.1)
    den.fit(list(mni_slices), config=FIT, progress=False)
    d = _legacy_folder(den, tmp_path / "old")
    for again in (Denoiser.load(d), load(d)):
        assert type(again) is Denoiser
        np.testing.assert_array_equal(again.apply(mni_slices[1]), den.apply(mni_slices[1]))
        assert again.train_config == TrainConfig.from_dict({**Denoiser.train_defaults, **FIT})
        assert again.history == [{"epoch": 1.0, "loss_g": 0.5}] and again.steps_trained == 2
    with pytest.raises(ConfigError, match="holds a 'denoise' model, not a 'superres' model"):
        SuperResolver.load(d)
    (d / "model.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(MedgenValueError, match=r"model\.pt: cannot read the weights") as e:
        load(d)
    assert "weights_only" not in str(e.value)
    (d / "model.pt").unlink()
    with pytest.raises(MedgenFileNotFoundError, match="not a trained denoise run"):
        Denoiser.load(d)


def test_corrupt_or_missing_files_are_medgen_errors_naming_the_file(
    trained: Path, tmp_path: Path
) -> None:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(trained, d)
    with pytest.raises(MedgenFileNotFoundError, match="not a saved generative model"):
        load(tmp_path / "missing")
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    # the completion marker vouches for the weights and config.json
    with pytest.raises(RunFolderError, match=r"is mixed: model\.safetensors changed after"):
        load(d)
    # without it (the layout of earlier versions) config.json's SHA-256 catches it
    _strip_to_legacy(d)
    with pytest.raises(MedgenValueError, match=r"model\.safetensors: its SHA-256 differs"):
        load(d)
    meta = json.loads((d / "config.json").read_text())
    meta["weights"].pop("sha256")
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MedgenValueError, match=r"model\.safetensors: cannot read the weights"):
        load(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(MedgenValueError, match=r"config\.json: not valid JSON"):
        load(d)
    (d / "config.json").write_text(json.dumps({**meta, "kind": "denoize"}))
    with pytest.raises(
        ConfigError, match=r"model kind 'denoize' is not registered.*Did you mean 'denoise'"
    ):
        load(d)


def test_weights_of_another_model_are_refused(trained: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "mixed"
    shutil.copytree(trained, d)
    bigger = Denoiser(channels=(4, 8, 16), patch_size=16)
    bigger.save(tmp_path / "bigger")
    shutil.copy(tmp_path / "bigger" / "model.safetensors", d / "model.safetensors")
    with pytest.raises(RunFolderError, match=r"is mixed: model\.safetensors changed"):
        load(d)
    _strip_to_legacy(d)
    meta = json.loads((d / "config.json").read_text())
    meta["weights"].pop("sha256")
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(MedgenValueError, match=r"do not fit the model described in config\.json"):
        load(d)


class _Pair(GenerativeModel):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width
        self.enc, self.dec = nn.Linear(width, 2), nn.Linear(2, width)
        self.dec.weight = nn.Parameter(self.enc.weight.t().detach().clone())

    def networks(self) -> dict[str, nn.Module]:
        return {"enc": self.enc, "dec": self.dec}

    def model_config(self) -> dict[str, Any]:
        return {"width": self.width}

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> _Pair:
        return cls(**config)


def test_register_model_kind_round_trip_and_errors(tmp_path: Path) -> None:
    Pair = register_model_kind("test-pair")(_Pair)
    assert Pair.kind == "test-pair" and get_model_kind("test-pair") is Pair
    assert register_model_kind("test-pair")(_Pair) is Pair  # the same class again: fine
    m = Pair(width=5)
    again = load(m.save(tmp_path / "pair"))
    assert isinstance(again, Pair) and again.width == 5
    for name in ("enc", "dec"):
        for k, v in m.networks()[name].state_dict().items():
            assert torch.equal(v, again.networks()[name].state_dict()[k])
    keys = set(load_file(str(tmp_path / "pair" / "model.safetensors")))
    assert keys == {"enc.weight", "enc.bias", "dec.weight", "dec.bias"}

    class Other(GenerativeModel):
        pass

    with pytest.raises(ConfigError, match="'test-pair' is already registered to"):
        register_model_kind("test-pair")(Other)
    with pytest.raises(ConfigError, match="is not a GenerativeModel subclass"):
        register_model_kind("test-int")(int)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="holds a 'test-pair' model, not a 'denoise' model"):
        Denoiser.load(tmp_path / "pair")


def test_generator_registry_with_did_you_mean() -> None:
    from medgen.generative._nets import GENERATORS, build_generator

    with pytest.raises(
        ConfigError,
        match=r"model='unett' is not a registered generator; choose one of \['unet', 'vae'\]\. Did you mean 'unet'\?",
    ):
        build_generator("unett", spatial_dims=2)
    with pytest.raises(ConfigError, match="Did you mean 'vae'"):
        Denoiser(model="vea")

    @register_generator("test-identity")
    def _identity(*, spatial_dims: int, in_channels: int, channels: Any, **kw: Any) -> nn.Module:
        from medgen.generative._nets import GeneratorOutput

        class Identity(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.gain = nn.Parameter(torch.zeros(()))

            def forward(self, x: torch.Tensor) -> GeneratorOutput:
                return GeneratorOutput(image=x + self.gain * x)

        return Identity()

    try:
        assert "test-identity" in available_generators()
        den = Denoiser(model="test-identity", **TINY)  # a new generator, no task change
        x = np.random.default_rng(0).random((16, 16)).astype(np.float32)
        np.testing.assert_allclose(den.apply(x), x, atol=1e-6)
        with pytest.raises(ConfigError, match="'test-identity' is already registered"):
            register_generator("test-identity")(lambda **kw: nn.Identity())
    finally:
        GENERATORS.pop("test-identity", None)


def test_docstring_examples_run() -> None:
    import doctest

    import medgen.generative._model as model_mod
    import medgen.generative._nets as nets_mod
    import medgen.generative._trainer as trainer_mod
    import medgen.generative.denoise as denoise_mod
    import medgen.generative.engine as engine_mod
    import medgen.generative.superres as superres_mod

    attempted = 0
    for mod in (engine_mod, model_mod, nets_mod, trainer_mod, denoise_mod, superres_mod):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, mod.__name__
        attempted += result.attempted
    assert attempted >= 25
