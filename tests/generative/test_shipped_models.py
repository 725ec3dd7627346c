"""The restoration models medgen ships (``medgen/data/pretrained``): present, verified, offline,
and as good on their held-out check image as their cards say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medgen.generative import (
    Denoiser,
    SuperResolver,
    available_pretrained,
    evaluate,
    load_pretrained,
    pretrained_dir,
)

SHIPPED = {
    "mri": "denoise",
    "ct": "denoise",
    "x2": "superres",
    "x4": "superres",
    "through_x4": "superres",
}
#: the card's one-image figure is reproduced to this many dB (CPU float32, any thread count)
CARD_TOLERANCE_DB = 0.05


@pytest.fixture(autouse=True)
def _package_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDGEN_PRETRAINED_DIR", raising=False)


def _card(name: str) -> dict:
    return json.loads((pretrained_dir(name) / "card.json").read_text(encoding="utf-8"))


def _pydicom_slice(name: str) -> np.ndarray:
    from pydicom.data import get_testdata_file

    from medgen.io import load

    return np.asarray(load(get_testdata_file(name))[0])[..., 0]


def test_the_package_ships_its_models_within_30_mb() -> None:
    table = available_pretrained()
    kinds = dict(zip(table["name"], table["kind"], strict=True))
    for name, kind in SHIPPED.items():
        assert kinds.get(name) == kind, f"pretrained {name!r} is not shipped"
    assert table["size_mb"].sum() <= 30.0
    for name in table["name"]:
        card = (pretrained_dir(name) / "card.md").read_text(encoding="utf-8")
        for word in ("Training data", "Steps", "Hardware", "Reproduce"):
            assert word in card, (name, word)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_model_reproduces_its_card_figure(name: str) -> None:
    check = _card(name)["check"]
    model = load_pretrained(name)
    assert model.pretrained_name == name
    if SHIPPED[name] == "denoise":
        img = _pydicom_slice(f"{check['image'].split()[-1]}.dcm")
        kw = {"photons": check["photons"]} if check.get("photons") else {}
        t = evaluate(
            model,
            [img],
            noise=check["noise"],
            sigma=check["sigma"],
            baselines=[],
            progress=False,
            **kw,
        )
    elif name == "through_x4":  # a volume: nibabel's anatomical.nii, its first 24 slices
        import nibabel as nib

        from medgen.io import load

        path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
        vol = np.asarray(load(path)[0])[..., :24]
        t = evaluate(model, [vol], baselines=[], progress=False)
    else:
        t = evaluate(model, [_pydicom_slice("MR_small.dcm")], baselines=[], progress=False)
    psnr = float(t.loc[t.method == "model", "psnr"].iloc[0])
    assert abs(psnr - check["psnr"]) <= CARD_TOLERANCE_DB


def test_the_mri_denoiser_leaves_a_clean_scan_nearly_unchanged() -> None:
    """Blind on a noise-free input (pydicom's MR_small, only its own acquisition noise): the
    RMS change is under 2 % of the image's range."""
    den = Denoiser.pretrained("mri")
    img = _pydicom_slice("MR_small.dcm")
    out = den.apply(img)
    rms = float(np.sqrt(np.mean((out - img) ** 2)))
    assert rms < 0.02 * float(np.ptp(img))


def test_pretrained_models_refuse_the_wrong_class() -> None:
    from medgen.errors import ConfigError

    with pytest.raises(ConfigError, match="superres"):
        SuperResolver.pretrained("mri")


def test_fine_tuning_starts_from_the_shipped_weights(tmp_path: Path) -> None:
    den = Denoiser.pretrained("mri")
    shipped = {k: v.clone() for k, v in den.network.state_dict().items()}
    tuned = Denoiser(**_constructor_options(den))
    tuned.fit(
        [_pydicom_slice("CT_small.dcm")],
        init="pretrained:mri",
        config={"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "lr_g": 1e-12},
        progress=False,
    )
    for k, v in tuned.network.state_dict().items():
        np.testing.assert_allclose(v.numpy(), shipped[k].numpy(), atol=1e-6)


def _constructor_options(den: Denoiser) -> dict:
    c = den.config
    opts = c.task_options
    return {
        "model": c.model,
        "channels": c.channels,
        "patch_size": c.patch_size,
        "noise": opts["noise"],
        "sigma": tuple(opts["sigma"]),
        "noise_map": bool(opts.get("noise_map")),
    }
