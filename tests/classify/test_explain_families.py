"""Explanations for every model family: GradCAM (CNN and ViT), attention rollout, occlusion."""

from __future__ import annotations

import pytest
import torch

from medgen.classify import Classifier, build_model
from medgen.classify._explain import attention_rollout, default_method, model_family
from medgen.errors import ConfigError

TINY_VIT = {"patch_size": 8, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 2}
TINY_CNN = {"init_features": 4, "growth_rate": 4, "block_config": (1, 1)}


def _classifier(name: str, kwargs: dict, size: tuple[int, ...] = (32, 32)) -> Classifier:
    torch.manual_seed(0)
    net = build_model(
        name, spatial_dims=len(size), in_channels=1, num_classes=2, image_size=size,
        model_kwargs=kwargs,
    )  # fmt: skip
    config = {
        "model": name,
        "model_kwargs": kwargs,
        "spatial_dims": len(size),
        "in_channels": 1,
        "image_size": list(size),
        "classes": [0, 1],
        "target": "label",
    }
    return Classifier(net, config=config)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Three brain-like blobs with a bright spot, 40x48 (not the models' 32x32 input)."""
    g = torch.Generator().manual_seed(0)
    xx, yy = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 48), indexing="ij")
    base = (xx**2 + yy**2 < 0.7).float()
    out = []
    for i in range(3):
        spot = ((xx - 0.3 * (i - 1)) ** 2 + (yy - 0.2) ** 2 < 0.02).float()
        out.append(base + 2 * spot + 0.05 * torch.randn(40, 48, generator=g))
    return torch.stack(out)[:, None]


@pytest.mark.parametrize(
    ("name", "kwargs", "methods"),
    [
        ("densenet", TINY_CNN, ["auto", "gradcam", "occlusion"]),
        ("vit", TINY_VIT, ["auto", "gradcam", "rollout", "occlusion"]),
    ],
)
def test_maps_have_the_images_shape_for_cnn_and_vit(
    images: torch.Tensor, name: str, kwargs: dict, methods: list[str]
) -> None:
    clf = _classifier(name, kwargs)
    for method in methods:
        maps = clf.explain(images, method=method)
        assert maps.shape == (3, 1, 40, 48), method
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
        for m in maps:  # min-max scaled per image, and not constant
            assert float(m.max() - m.min()) > 0.5, method
        # an image at the model's own size gives a map at that size
        assert clf.explain(images[:1, :, :32, :32], method=method).shape == (1, 1, 32, 32)


def test_auto_picks_the_family_method(images: torch.Tensor) -> None:
    cnn, vit = _classifier("densenet", TINY_CNN), _classifier("vit", TINY_VIT)
    assert (model_family(cnn), default_method(cnn)) == ("cnn", "gradcam")
    assert (model_family(vit), default_method(vit)) == ("vit", "rollout")
    torch.testing.assert_close(cnn.explain(images), cnn.explain(images, method="gradcam"))
    torch.testing.assert_close(vit.explain(images), vit.explain(images, method="rollout"))
    with pytest.raises(ConfigError, match=r"method='rollout' needs a transformer"):
        cnn.explain(images, method="rollout")
    with pytest.raises(ConfigError, match="Did you mean 'rollout'"):
        vit.explain(images, method="rolout")


def test_rollout_equals_the_hand_computation_on_a_non_square_grid() -> None:
    """Abnar & Zuidema: layers' head-mean attention mixed 50/50 with I, rows renormalised,
    multiplied first to last; the class token's row over the patches, laid out like MONAI's
    ``flatten(2)`` of the conv patch embedding (x major)."""
    from monai.networks.nets import ViT

    torch.manual_seed(1)
    net = ViT(
        in_channels=1, img_size=(32, 16), patch_size=8, hidden_size=16, mlp_dim=32,
        num_layers=3, num_heads=2, classification=True, spatial_dims=2, save_attn=True,
    ).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 16)
    with torch.no_grad():
        net(x)
    eye = torch.eye(4 * 2 + 1)
    roll = eye.expand(2, 9, 9)
    for blk in net.blocks:
        a = 0.5 * blk.attn.att_mat.mean(1) + 0.5 * eye
        roll = (a / a.sum(-1, keepdim=True)) @ roll
    cls_row = roll[:, 0, 1:]  # 8 patches, token n = patch (n // 2, n % 2)
    expected = torch.zeros(2, 1, 4, 2)
    for n in range(8):
        expected[:, 0, n // 2, n % 2] = cls_row[:, n]
    expected = torch.nn.functional.interpolate(expected, size=(32, 16), mode="bilinear")
    got = attention_rollout(net, x)
    torch.testing.assert_close(got, expected)
    # the network's own save_attn setting is left as it was
    assert all(blk.attn.save_attn for blk in net.blocks)


def test_vit_gradcam_uses_the_class_and_leaves_no_hooks(images: torch.Tensor) -> None:
    clf = _classifier("vit", TINY_VIT)
    m0 = clf.explain(images, method="gradcam", class_idx=0)
    m1 = clf.explain(images, method="gradcam", class_idx=1)
    mixed = clf.explain(images, method="gradcam", class_idx=[0, 1, 0])
    torch.testing.assert_close(mixed[1], m1[1])
    torch.testing.assert_close(mixed[0], m0[0])
    assert not torch.allclose(m0, m1)
    for mod in clf.net.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    with pytest.raises(ConfigError, match="one class index per image"):
        clf.explain(images, method="gradcam", class_idx=[0, 1])
    with pytest.raises(ConfigError, match=r"not a class index of this model \(0..1\)"):
        clf.explain(images, method="gradcam", class_idx=2)


def test_cnn_gradcam_per_image_classes_match_single_class_calls(images: torch.Tensor) -> None:
    clf = _classifier("densenet", TINY_CNN)
    mixed = clf.explain(images, method="gradcam", class_idx=[1, 0, 1])
    torch.testing.assert_close(mixed[1], clf.explain(images, method="gradcam", class_idx=0)[1])
    torch.testing.assert_close(mixed[2], clf.explain(images, method="gradcam", class_idx=1)[2])


def test_explain_3d_vit_map_has_the_volume_shape() -> None:
    clf = _classifier(
        "vit", dict(TINY_VIT, num_layers=1), size=(16, 16, 16)
    )  # patch 8: a 2x2x2 grid
    vol = torch.randn(1, 1, 16, 16, 16)
    for method in ("rollout", "gradcam"):
        assert clf.explain(vol, method=method).shape == (1, 1, 16, 16, 16)
