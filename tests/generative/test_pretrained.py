"""Pretrained restoration models: the registry (export, index, checks), loading by name,
``load("pretrained:NAME")``, fine-tuning with ``fit(init=...)`` and the CLI.

Each test builds its own registry in a temporary folder (``MEDGEN_PRETRAINED_DIR``) from one tiny
denoiser (channels (4, 8), 16-px patches) trained for two steps on MNI152 slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medgen.errors import ChecksumError, ConfigError, MedgenValueError
from medgen.generative import (
    Denoiser,
    SuperResolver,
    available_pretrained,
    export_pretrained,
    load,
    load_pretrained,
    pretrained_dir,
)

TINY: dict[str, Any] = {"channels": (4, 8), "patch_size": 16, "noise": "gaussian", "sigma": 0.1}
STEPS: dict[str, Any] = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}
CARD = "# Tiny MRI denoiser\n\nTrained for two steps on four MNI152 slices (tests only).\n"


@pytest.fixture(scope="module")
def trained(mni_slices: np.ndarray) -> Denoiser:
    """A tiny denoiser trained for two steps from seed 1 (the tests' fresh models: seed 0)."""
    config = {**STEPS, "seed": 1, "ema_decay": None}
    return Denoiser(**TINY).fit(list(mni_slices), config=config, progress=False)  # type: ignore[return-value]


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained: Denoiser) -> Path:
    """An empty registry folder with the trained denoiser exported as ``mri``."""
    root = tmp_path / "registry"
    monkeypatch.setenv("MEDGEN_PRETRAINED_DIR", str(root))
    export_pretrained(trained, "mri", card=CARD, figures={"psnr_db": {"0.1": 31.5}, "steps": 2})
    return root


def _generator(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _noisy(mni_slices: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (mni_slices[0] + rng.normal(0, 0.1, mni_slices[0].shape)).astype(np.float32)


# ---------------------------------------------------------------------------------- registry


def test_export_writes_the_folder_and_the_index(registry: Path, trained: Denoiser) -> None:
    from medgen._internal.provenance import file_sha256

    d = registry / "mri"
    assert d == pretrained_dir("mri")
    assert {"config.json", "model.safetensors", "card.md", "card.json"} <= {
        p.name for p in d.iterdir()
    }
    assert not [p for p in registry.iterdir() if p.name.endswith((".tmp", ".old"))]
    index = json.loads((registry / "index.json").read_text())
    entry = index["models"]["mri"]
    assert index["format"] == 1 and entry["kind"] == "denoise" and entry["dir"] == "mri"
    assert entry["sha256"] == {
        "model.safetensors": file_sha256(d / "model.safetensors"),
        "config.json": file_sha256(d / "config.json"),
    }
    assert (d / "card.md").read_text() == CARD
    assert json.loads((d / "card.json").read_text()) == {"psnr_db": {"0.1": 31.5}, "steps": 2}
    table = available_pretrained()
    assert list(table.columns) == ["name", "kind", "summary", "size_mb"]
    assert table["name"].tolist() == ["mri"] and table["summary"][0] == "Tiny MRI denoiser"
    expected_mb = sum((d / f).stat().st_size for f in entry["sha256"]) / 1e6
    assert table["size_mb"][0] == pytest.approx(expected_mb, abs=1e-3)
    assert available_pretrained("superres").empty


def test_reexport_replaces_one_name_only(registry: Path, trained: Denoiser) -> None:
    export_pretrained(trained, "ct", card="CT\n", figures={}, summary="the CT one")
    ct_weights = (registry / "ct" / "model.safetensors").read_bytes()
    other = Denoiser(**TINY)
    with torch.no_grad():
        for p in other.network.parameters():
            p.fill_(0.5)
    other.steps_trained = 1
    export_pretrained(other, "mri", card="new card\n", figures={"v": 2})
    assert (registry / "ct" / "model.safetensors").read_bytes() == ct_weights
    assert available_pretrained()["name"].tolist() == ["ct", "mri"]
    again = load_pretrained("mri")
    assert all(bool((p == 0.5).all()) for p in again.network.parameters())  # type: ignore[attr-defined]
    assert (registry / "mri" / "card.md").read_text() == "new card\n"


def test_export_refusals(registry: Path, trained: Denoiser) -> None:
    with pytest.raises(ConfigError, match="untrained"):
        export_pretrained(Denoiser(**TINY), "fresh", card=CARD, figures={})
    with pytest.raises(ConfigError, match="name must be lower-case"):
        export_pretrained(trained, "../up", card=CARD, figures={})
    with pytest.raises(ConfigError, match="JSON-able"):
        export_pretrained(trained, "x", card=CARD, figures={"bad": float("nan")})
    (registry / "mri" / "notes.txt").write_text("mine")
    before = (registry / "index.json").read_bytes()
    with pytest.raises(MedgenValueError, match=r"notes\.txt"):
        export_pretrained(trained, "mri", card=CARD, figures={})
    assert (registry / "index.json").read_bytes() == before
    assert (registry / "mri" / "notes.txt").read_text() == "mine"


def test_the_shipped_registry_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's own index.json reads, and every model it lists matches its hashes."""
    import medgen
    from medgen.generative._pretrained import pretrained_root

    monkeypatch.delenv("MEDGEN_PRETRAINED_DIR", raising=False)
    root = pretrained_root()
    assert root == Path(medgen.__file__).resolve().parent / "data" / "pretrained"
    assert json.loads((root / "index.json").read_text())["format"] == 1
    table = available_pretrained()
    for name, kind in zip(table["name"], table["kind"], strict=True):
        assert kind in ("denoise", "superres")
        assert (pretrained_dir(name) / "card.md").is_file()


# ---------------------------------------------------------------------------------- loading


def test_load_by_name_gives_the_saved_model(
    registry: Path, trained: Denoiser, mni_slices: np.ndarray
) -> None:
    noisy = _noisy(mni_slices)
    expected = trained.apply(noisy)
    for model in (load_pretrained("mri"), Denoiser.pretrained("mri"), load("pretrained:mri")):
        assert isinstance(model, Denoiser)
        np.testing.assert_array_equal(model.apply(noisy), expected)
        assert model.pretrained_name == "mri"
        index = json.loads((registry / "index.json").read_text())
        assert model.pretrained_sha256 == index["models"]["mri"]["sha256"]["model.safetensors"]
    assert trained.pretrained_name is None


def test_unknown_name_and_kind_mismatch(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        load_pretrained("mrii")
    assert str(err.value) == (
        "no pretrained model 'mrii'; known: ['mri']. Did you mean 'mri'? List them with "
        "`medgen pretrained`."
    )
    with pytest.raises(ConfigError, match="no pretrained model 'ct'; known: \\['mri'\\]"):
        load("pretrained:ct")
    with pytest.raises(ConfigError) as err:
        SuperResolver.pretrained("mri")
    assert str(err.value) == (
        "pretrained model 'mri' is a 'denoise' model, not a 'superres' model; the pretrained "
        "'superres' models are []."
    )
    monkeypatch.setenv("MEDGEN_PRETRAINED_DIR", str(registry / "empty"))
    with pytest.raises(ConfigError, match=r"lists none.*train_pretrained\.py"):
        Denoiser.pretrained("mri")


@pytest.mark.parametrize("fname", ["model.safetensors", "config.json"])
def test_a_changed_file_is_refused_naming_it_and_both_hashes(registry: Path, fname: str) -> None:
    from medgen._internal.provenance import file_sha256

    path = registry / "mri" / fname
    expected = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        Denoiser.pretrained("mri")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert msg.startswith(f"{path}: SHA-256 {file_sha256(path)} differs from {expected}")
    assert "Reinstall medgen" in msg and "python scripts/train_pretrained.py" in msg


# ---------------------------------------------------------------------------------- fine-tuning


def test_fit_init_starts_from_the_shipped_weights(
    registry: Path, trained: Denoiser, mni_slices: np.ndarray, tmp_path: Path
) -> None:
    shipped = _generator(trained)
    still = {**STEPS, "steps_per_epoch": 1, "lr_g": 1e-12}  # one step cannot move the weights
    tuned = Denoiser(**TINY).fit(
        list(mni_slices),
        config=still,
        progress=False,
        init="pretrained:mri",
        run_dir=tmp_path / "r",
    )
    assert _max_diff(_generator(tuned), shipped) < 1e-6
    fresh = Denoiser(**TINY).fit(list(mni_slices), config=still, progress=False)
    assert _max_diff(_generator(fresh), shipped) > 1e-3
    sha = json.loads((registry / "index.json").read_text())["models"]["mri"]["sha256"]
    record = {"source": "pretrained:mri", "sha256": sha["model.safetensors"]}
    assert tuned.init_source == record and fresh.init_source is None
    state = json.loads((tmp_path / "r" / "train_state.json").read_text())
    assert state["run_info"]["init"] == record
    # resume: the checkpoint wins, and the init must be the one the run started with
    longer = {**still, "epochs": 2}
    with pytest.raises(ConfigError, match="started with init='pretrained:mri', not init=None"):
        Denoiser(**TINY).fit(
            list(mni_slices), config=longer, progress=False, run_dir=tmp_path / "r", resume=True
        )
    again = Denoiser(**TINY).fit(
        list(mni_slices),
        config=longer,
        progress=False,
        run_dir=tmp_path / "r",
        resume=True,
        init="pretrained:mri",
    )
    assert again.steps_trained == 2 and _max_diff(_generator(again), shipped) < 1e-6


def test_fit_init_from_a_run_folder(
    registry: Path, trained: Denoiser, mni_slices: np.ndarray, tmp_path: Path
) -> None:
    from medgen._internal.provenance import file_sha256

    run = trained.save(tmp_path / "saved")
    still = {**STEPS, "steps_per_epoch": 1, "lr_g": 1e-12}
    tuned = Denoiser(**TINY).fit(list(mni_slices), config=still, progress=False, init=run)
    assert _max_diff(_generator(tuned), _generator(trained)) < 1e-6
    assert tuned.init_source == {
        "source": str(run.resolve()),
        "sha256": file_sha256(run / "model.safetensors"),
    }


def test_fit_init_of_another_network_or_kind_is_refused(
    registry: Path, mni_slices: np.ndarray, tmp_path: Path
) -> None:
    data = list(mni_slices)
    with pytest.raises(ConfigError) as err:
        Denoiser(**{**TINY, "channels": (4, 16)}).fit(data, config=STEPS, init="pretrained:mri")
    assert str(err.value).startswith(
        "init='pretrained:mri' is another network than this Denoiser (differs in "
        "channels=[4, 8] vs [4, 16]: init vs this model)"
    )
    with pytest.raises(ConfigError, match="differs in noise_map=False vs True"):
        Denoiser(**TINY, noise_map=True).fit(data, config=STEPS, init="pretrained:mri")
    with pytest.raises(ConfigError, match="holds a 'denoise' model; a 'superres' model"):
        SuperResolver(channels=(4, 8), patch_size=16).fit(
            data, config=STEPS, init="pretrained:mri", run_dir=tmp_path / "sr"
        )
    assert not (tmp_path / "sr").exists()  # refused before the run folder was made


# ---------------------------------------------------------------------------------- CLI


@pytest.fixture
def cohort(tmp_path: Path, write_cohort: Any) -> Path:
    d = tmp_path / "cohort"
    d.mkdir()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    return write_cohort(d, affine=affine)  # type: ignore[no-any-return]


def test_cli_apply_pretrained(registry: Path, cohort: Path, tmp_path: Path) -> None:
    import pandas as pd
    from typer.testing import CliRunner

    from medgen.cli import app
    from medgen.io import load as load_image

    runner = CliRunner()
    out = tmp_path / "out"
    src = cohort.parent / "s0.nii.gz"
    res = runner.invoke(app, ["denoise", "apply", "pretrained:mri", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "outputs.csv")
    assert table["output"].tolist() == ["s0.nii.gz"]
    assert load_image(out / "s0.nii.gz").shape == load_image(src).shape
    import nibabel as nib

    descrip = nib.load(out / "s0.nii.gz").header["descrip"].tobytes().decode().strip("\x00")
    assert descrip.startswith("medgen denoise pretrained:mri ")  # + the weights' hash
    res = runner.invoke(app, ["superres", "apply", "pretrained:mri", str(src), "-o", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "Error: pretrained model 'mri' is a 'denoise' model, not a 'superres' model; the "
        "pretrained 'superres' models are []."
    ]
    res = runner.invoke(app, ["denoise", "apply", "pretrained:mr", str(src), "-o", str(out)])
    assert res.exit_code == 2 and "Did you mean 'mri'?" in res.output
    res = runner.invoke(app, ["pretrained"])
    assert res.exit_code == 0 and "mri" in res.output and "Tiny MRI denoiser" in res.output
    res = runner.invoke(app, ["pretrained", "mri"])
    assert res.exit_code == 0 and res.output.strip() == CARD.strip()


def test_cli_train_init(registry: Path, cohort: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    common = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--no-progress"]
    res = runner.invoke(
        app,
        ["denoise", "train", str(cohort), "-o", str(run), "--init", "pretrained:mri", *common],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"]["channels"] == [4, 8] and meta["model"]["patch_size"] == 16
    assert meta["model"]["task_options"]["sigma"] == [0.1, 0.1]  # the init's noise options
    state = json.loads((run / "train_state.json").read_text())
    assert state["run_info"]["init"]["source"] == "pretrained:mri"
    res = runner.invoke(
        app,
        [
            "denoise",
            "train",
            str(cohort),
            "-o",
            str(tmp_path / "run2"),
            "--init",
            "pretrained:mri",
            "--channels",
            "8,16",
            *common,
        ],
    )
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "Error: --channels 8,16 conflicts with --init pretrained:mri (its channels is 4,8); "
        "leave --channels out to fine-tune the init's network, or train without --init."
    ]
    assert not (tmp_path / "run2").exists()
    res = runner.invoke(
        app,
        ["superres", "train", str(cohort), "-o", str(tmp_path / "sr"), "--init", str(run), *common],
    )
    assert res.exit_code == 2 and "holds a 'denoise' model" in res.output
