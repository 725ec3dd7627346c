"""Registry of classification networks, all built from :mod:`monai.networks.nets`.

Every entry maps a lower-case name to a factory ``(spatial_dims, in_channels, num_classes,
image_size, **kwargs) -> torch.nn.Module`` returning a network whose forward pass takes
``BxCx[SPATIAL DIMS]`` float tensors and returns ``BxK`` logits. No architecture is written here;
the factories only choose MONAI's constructor arguments (MONAI's ViT returns ``(logits, hidden)``;
:class:`_LogitsOnly` keeps the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "ModelSpec", "available_models", "build_model", "get_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """One registered network.

    Attributes:
        name: registry name (lower case).
        factory: builds the network, see the module docstring.
        gradcam_layer: dotted name of the layer GradCAM reads by default, or ``None`` when there
            is no fixed one (transformers: :func:`medgen.classify.explain` finds the last block).
        channels_last: whether ``torch.channels_last`` memory format speeds it up on CPU (2D only).
        description: one line for listings.
        family: ``"cnn"`` or ``"vit"``; says which explanation ``method="auto"`` uses (GradCAM,
            attention rollout; docs/explanations.md).
    """

    name: str
    factory: Callable[..., nn.Module]
    gradcam_layer: str | None
    channels_last: bool
    description: str
    family: str = "cnn"


def _densenet(variant: str) -> Callable[..., nn.Module]:
    def build(
        spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
    ) -> nn.Module:
        from monai.networks import nets

        cls = getattr(nets, variant)
        return cls(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kw
        )

    return build


def _densenet_generic(
    spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
) -> nn.Module:
    from monai.networks.nets import DenseNet

    kw.setdefault("init_features", 16)
    kw.setdefault("growth_rate", 8)
    kw.setdefault("block_config", (2, 2, 2))
    return DenseNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kw
    )


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(
        spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
    ) -> nn.Module:
        from monai.networks import nets

        fn = getattr(nets, f"resnet{depth}")
        return fn(
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            pretrained=False,
            **kw,
        )

    return build


def _seresnet50(
    spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
) -> nn.Module:
    from monai.networks.nets import SEResNet50

    return SEResNet50(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kw
    )


def _efficientnet_b0(
    spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
) -> nn.Module:
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN(
        "efficientnet-b0",
        pretrained=False,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        **kw,
    )


def _vit(
    spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
) -> nn.Module:
    from monai.networks.nets import ViT

    kw.setdefault("patch_size", 8)
    kw.setdefault("hidden_size", 192)
    kw.setdefault("mlp_dim", 4 * int(kw["hidden_size"]))
    kw.setdefault("num_layers", 6)
    kw.setdefault("num_heads", 3)
    kw.setdefault("post_activation", "none")
    net = ViT(
        in_channels=in_channels,
        img_size=tuple(image_size),
        classification=True,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        **kw,
    )
    return _LogitsOnly(net)


def _logits_only_cls() -> type:
    from torch import nn

    class LogitsOnly(nn.Module):
        """Wraps a MONAI network returning ``(logits, extras)`` so it returns ``BxK`` logits."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            out = self.net(x)
            return out[0] if isinstance(out, tuple | list) else out

    return LogitsOnly


def _LogitsOnly(net: nn.Module) -> nn.Module:
    return _logits_only_cls()(net)  # type: ignore[no-any-return]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "densenet121", _densenet("DenseNet121"), "class_layers.relu", True, "MONAI DenseNet121"
        ),
        ModelSpec(
            "densenet169", _densenet("DenseNet169"), "class_layers.relu", True, "MONAI DenseNet169"
        ),
        ModelSpec(
            "densenet201", _densenet("DenseNet201"), "class_layers.relu", True, "MONAI DenseNet201"
        ),
        ModelSpec(
            "densenet",
            _densenet_generic,
            "class_layers.relu",
            True,
            "MONAI DenseNet, configurable (defaults: init_features=16, growth_rate=8, blocks (2,2,2))",
        ),
        ModelSpec("resnet18", _resnet(18), "layer4", True, "MONAI ResNet-18"),
        ModelSpec("resnet34", _resnet(34), "layer4", True, "MONAI ResNet-34"),
        ModelSpec("resnet50", _resnet(50), "layer4", True, "MONAI ResNet-50"),
        ModelSpec("seresnet50", _seresnet50, "layer4", True, "MONAI SE-ResNet-50"),
        ModelSpec(
            "efficientnet-b0", _efficientnet_b0, "_conv_head", False, "MONAI EfficientNet-B0"
        ),
        ModelSpec(
            "vit",
            _vit,
            None,
            False,
            "MONAI ViT (defaults: patch 8, hidden 192, 6 layers, 3 heads)",
            family="vit",
        ),
    ]
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """Look a network up by name (case-insensitive).

    Raises:
        ConfigError: unknown name; the message lists the registered names and the closest match.
    """
    if not isinstance(name, str):
        raise ConfigError(f"model must be a string naming a network, not {name!r}")
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    hint = did_you_mean(key, MODELS, cutoff=0.4)
    raise ConfigError(
        f"Unknown model {name!r}.{hint} Available models: {', '.join(available_models())}."
    )


def build_model(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    image_size: Sequence[int],
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered MONAI network.

    Args:
        name: registry name, see :func:`available_models`.
        spatial_dims: 2 or 3.
        in_channels: channels of the input images (``C`` of ``BxCx[SPATIAL DIMS]``).
        num_classes: number of output logits ``K``.
        image_size: spatial size of the inputs (used by ViT's patch embedding).
        model_kwargs: extra keyword arguments for the MONAI constructor.

    Returns:
        A network mapping ``BxCx[SPATIAL DIMS]`` to ``BxK`` logits.
    """
    spec = get_model_spec(name)
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, not {spatial_dims!r}")
    if len(tuple(image_size)) != spatial_dims:
        raise ConfigError(
            f"image_size {tuple(image_size)} has {len(tuple(image_size))} dims but "
            f"spatial_dims={spatial_dims}; give one size per spatial dimension"
        )
    try:
        return spec.factory(
            spatial_dims,
            in_channels,
            num_classes,
            tuple(int(s) for s in image_size),
            **(model_kwargs or {}),
        )
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"Cannot build model {spec.name!r} with model_kwargs={model_kwargs!r}, "
            f"image_size={tuple(image_size)}: {err}"
        ) from err
