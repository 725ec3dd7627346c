"""Registry of classification networks, all built from :mod:`monai.networks.nets`.

Every entry maps a lower-case name to a factory ``(spatial_dims, in_channels, num_classes,
image_size, **kwargs) -> torch.nn.Module`` returning a network whose forward pass takes
``BxCx[SPATIAL DIMS]`` float tensors and returns ``BxK`` logits. No architecture is written here;
the factories only choose MONAI's constructor arguments (MONAI's ViT returns ``(logits, hidden)``;
:class:`_LogitsOnly` keeps the logits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
        train_defaults: the model's training recipe: values :func:`medgen.classify.train` uses
            for the options the caller did not give (``lr``, ``weight_decay``, ``augment``,
            ``lr_schedule``, ``warmup_fraction``, ``label_smoothing``); empty: the global
            defaults.
    """

    name: str
    factory: Callable[..., nn.Module]
    gradcam_layer: str | None
    channels_last: bool
    description: str
    family: str = "cnn"
    train_defaults: dict[str, Any] = field(default_factory=dict)


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


def _vit_hybrid(
    spatial_dims: int, in_channels: int, num_classes: int, image_size: Sequence[int], **kw: Any
) -> nn.Module:
    """A convolutional stem, then MONAI's ``ViT`` with ``patch_size`` 1 on its feature map: the
    hybrid of Dosovitskiy et al. 2021 (section 3.1) with a small stem, after Xiao et al. 2021
    ("Early convolutions help transformers see better").

    ``model_kwargs`` beyond MONAI ``ViT``'s own (defaults: hidden 128, 4 layers, 4 heads, MLP 512):

    * ``stem_channels`` (default ``(16, 32, 64, 128)``): one stem stage per entry, 3x3 kernels,
      batch norm, ReLU;
    * ``stem_strides`` (default ``(1, 2, 2, ..., 2)``: the first stage keeps the resolution, each
      later one halves it; 64x64 images give 8x8 tokens);
    * ``stem_block``: ``"residual"`` (default; a MONAI ``ResidualUnit`` of two convolutions per
      stage), ``"conv"`` (one MONAI ``Convolution``) or ``"densenet121"`` (MONAI DenseNet121's
      layers through its second dense block, 512 channels at 1/8 of the size; ignores
      ``stem_channels`` and ``stem_strides``);
    * ``pool``: ``"avg"`` (default; a linear layer on the mean of the final normed tokens, no
      class token, Beyer et al. 2022 "Better plain ViT baselines") or ``"cls"`` (MONAI's
      class-token head).
    """
    from monai.networks.blocks import Convolution, ResidualUnit
    from monai.networks.nets import ViT
    from torch import nn

    stem = tuple(int(c) for c in kw.pop("stem_channels", (16, 32, 64, 128)))
    pool = kw.pop("pool", "avg")
    block = kw.pop("stem_block", "residual")
    if block not in ("conv", "residual", "densenet121"):
        raise ConfigError(
            f"model_kwargs['stem_block'] must be 'conv' (one convolution per stem stage), "
            f"'residual' (a MONAI ResidualUnit of two) or 'densenet121' (MONAI DenseNet121's "
            f"layers through its second dense block), not {block!r}"
        )
    if (
        block == "densenet121"
    ):  # conv0 (stride 2), pool0 (2), denseblock1, transition1 (2), denseblock2
        stem = (512,)
        kw.pop("stem_strides", None)
    if pool not in ("avg", "cls"):
        raise ConfigError(
            f"model_kwargs['pool'] must be 'avg' (mean of the patch tokens) or 'cls' (class "
            f"token), not {pool!r}"
        )
    if not stem or any(c < 1 for c in stem):
        raise ConfigError(
            f"model_kwargs['stem_channels'] must list positive channel counts, one per stride-2 "
            f"convolution (e.g. (32, 64, 128)), not {stem!r}"
        )
    strides = tuple(int(s) for s in kw.pop("stem_strides", (1,) + (2,) * (len(stem) - 1)))
    if block == "densenet121":
        strides = (2, 2, 2)
    if block != "densenet121" and (
        len(strides) != len(stem) or any(s not in (1, 2) for s in strides)
    ):
        raise ConfigError(
            f"model_kwargs['stem_strides'] must give a stride of 1 or 2 for each of the "
            f"{len(stem)} stem_channels, not {strides!r}"
        )
    factor = 2 ** strides.count(2)
    if any(s % factor for s in image_size):
        raise ConfigError(
            f"vit_hybrid's stem of {strides.count(2)} stride-2 convolutions needs an image size "
            f"divisible by {factor}, not {tuple(image_size)}; pass image_size=(...) or fewer "
            "stem_channels"
        )
    kw.setdefault("patch_size", 1)
    kw.setdefault("hidden_size", 128)
    kw.setdefault("mlp_dim", 4 * int(kw["hidden_size"]))
    kw.setdefault("num_layers", 4)
    kw.setdefault("num_heads", 4)
    kw.setdefault("post_activation", "none")
    chans = (in_channels, *stem)
    layers: nn.Module
    if block == "densenet121":
        from monai.networks.nets import DenseNet121

        feats = DenseNet121(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes
        ).features
        names = [n for n, _ in feats.named_children()]
        layers = nn.Sequential(*list(feats.children())[: names.index("denseblock2") + 1])
    unit: Any = Convolution if block == "conv" else ResidualUnit
    extra: dict[str, Any] = {} if block == "conv" else {"subunits": 2}
    if block != "densenet121":
        layers = nn.Sequential(
            *[
                unit(
                    spatial_dims,
                    chans[i],
                    chans[i + 1],
                    strides=strides[i],
                    kernel_size=3,
                    act="RELU",
                    norm="BATCH",
                    **extra,
                )
                for i in range(len(stem))
            ]
        )
    vit = ViT(
        in_channels=stem[-1],
        img_size=tuple(s // factor for s in image_size),
        classification=pool == "cls",
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        **kw,
    )
    head = nn.Linear(int(kw["hidden_size"]), num_classes) if pool == "avg" else None
    return _hybrid_cls()(layers, vit, head)  # type: ignore[no-any-return]


def _hybrid_cls() -> type:
    from torch import nn

    class StemViT(nn.Module):
        """``stem`` (convolutions) then ``net`` (a MONAI ViT on the stem's feature map); returns
        ``BxK`` logits: ``head`` on the mean token, or the ViT's own class-token head (``None``)."""

        def __init__(self, stem: nn.Module, net: nn.Module, head: nn.Module | None) -> None:
            super().__init__()
            self.stem = stem
            self.net = net
            self.head = head

        def forward(self, x: Any) -> Any:
            out = self.net(self.stem(x))[0]
            return out if self.head is None else self.head(out.mean(dim=1))

    return StemViT


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


#: the training recipe of ``vit_hybrid`` (measured: docs/classify.md, "Vision Transformers"):
#: AdamW at 3e-4 with a linear warm-up over 10 % of the steps and cosine decay, weight decay
#: 0.05, label smoothing 0.1, the ``strong`` augmentation. At 1e-3 the validation AUC peaked
#: after a few epochs and fell back to chance on two of three seeds (12 epochs, no time budget)
VIT_RECIPE: dict[str, Any] = {
    "lr": 3e-4,
    "weight_decay": 0.05,
    "lr_schedule": "cosine",
    "warmup_fraction": 0.1,
    "label_smoothing": 0.1,
    "augment": "strong",
    # seed 1 of the demo cohort plateaus at the class prior without it (12 epochs: test AUC
    # 0.724 -> 0.819; seeds 0 / 2: 0.890 / 0.912 -> 0.892 / 0.905; docs/classify.md)
    "grad_clip": 1.0,
}

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
        ModelSpec(
            "vit_hybrid",
            _vit_hybrid,
            None,
            False,
            "residual conv stem (16, 32, 64, 128 ch; 1/8 size) + MONAI ViT (patch 1, hidden 128, "
            "4 layers, 4 heads, mean-token head); the recommended ViT from scratch",
            family="vit",
            train_defaults=dict(VIT_RECIPE),
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
