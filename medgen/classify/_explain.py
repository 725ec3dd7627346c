"""Explanation maps for every model family, and overlays.

* CNNs: GradCAM (Selvaraju et al., ICCV 2017) through :class:`monai.visualize.GradCAM` on the
  registry's layer.
* Vision Transformers (MONAI's ``ViT`` or any network built from MONAI's ``PatchEmbeddingBlock``
  and ``TransformerBlock``): attention rollout (Abnar & Zuidema, ACL 2020) from the attention
  matrices MONAI's ``SABlock`` keeps with ``save_attn``, and GradCAM on the tokens entering the
  last block's attention (``blocks[-1].norm1``, as in Chefer et al. 2021's GradCAM baseline).
  GradCAM differentiates ``log p_k`` (log-softmax), not the raw logit: a two-logit softmax model
  only fixes the logits' difference, and its raw class-1 logit map can be negative everywhere,
  which GradCAM's ReLU turns into an all-zero map even where the logits favour class 1.
* Any network: occlusion sensitivity (Zeiler & Fergus, ECCV 2014) through
  :class:`monai.visualize.OcclusionSensitivity`.

Every method returns ``Bx1x[SPATIAL DIMS]`` maps at the spatial shape of the images given (maps
computed at the model's input size are resized back), min-max scaled to [0, 1] per image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from medgen.classify._model import Classifier

__all__ = ["EXPLAIN_METHODS", "default_method", "explain", "model_family", "overlay"]

#: Methods accepted by :func:`explain` (``"auto"`` picks one for the model family).
EXPLAIN_METHODS = ("auto", "gradcam", "rollout", "occlusion")


def _transformer_parts(net: nn.Module) -> tuple[nn.Module, list[nn.Module]] | None:
    """``(patch embedding, transformer blocks)`` of a MONAI transformer inside ``net``, or None."""
    from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock

    embeds: list[nn.Module] = [m for m in net.modules() if isinstance(m, PatchEmbeddingBlock)]
    blocks: list[nn.Module] = [m for m in net.modules() if isinstance(m, TransformerBlock)]
    if not embeds or not blocks:
        return None
    return embeds[0], list(blocks)


def model_family(clf: Classifier) -> str:
    """``"vit"`` for networks built from MONAI transformer blocks, else ``"cnn"``."""
    return "vit" if _transformer_parts(clf.net) is not None else "cnn"


def default_method(clf: Classifier) -> str:
    """What ``method="auto"`` explains ``clf`` with.

    Transformers: ``"rollout"``; CNNs with a registered GradCAM layer: ``"gradcam"``; anything
    else: ``"occlusion"``.
    """
    from medgen.classify._registry import MODELS

    if model_family(clf) == "vit":
        return "rollout"
    spec = MODELS.get(str(clf.config.get("model", "")).strip().lower())
    return "gradcam" if spec is not None and spec.gradcam_layer is not None else "occlusion"


def _class_indices(
    class_idx: int | Sequence[int] | None, n: int, n_classes: int
) -> list[int] | None:
    """Per-image class indices (``None`` stays ``None``), checked against the class count."""
    if class_idx is None:
        return None
    if isinstance(class_idx, int) or hasattr(class_idx, "__index__"):
        ks = [int(class_idx)] * n  # type: ignore[arg-type]
    else:
        ks = [int(k) for k in class_idx]
        if len(ks) != n:
            raise ConfigError(
                f"class_idx has {len(ks)} entries for {n} images; give one class index per "
                "image, a single index, or None"
            )
    bad = [k for k in ks if not 0 <= k < n_classes]
    if bad:
        raise ConfigError(
            f"class_idx {bad[0]} is not a class index of this model (0..{n_classes - 1})"
        )
    return ks


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each map of a ``Bx1x...`` tensor to [0, 1] (a constant map becomes 0)."""
    shape = (-1, *[1] * (maps.ndim - 1))
    lo = maps.flatten(1).min(1).values.view(shape)
    hi = maps.flatten(1).max(1).values.view(shape)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def _resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``Bx1x[SPATIAL]`` maps to ``size`` (bi/trilinear), unchanged when already there."""
    import torch.nn.functional as F

    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def _log_softmax(net: nn.Module) -> nn.Module:
    """``net`` followed by a log-softmax over the classes (its layers under ``net.``)."""
    import torch
    from torch import nn

    class LogSoftmax(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(self.net(x), dim=1)

    return LogSoftmax(net).eval()


def _cnn_gradcam(
    clf: Classifier, x: torch.Tensor, ks: list[int] | None, target_layer: str | None
) -> torch.Tensor:
    import torch
    from monai.visualize import GradCAM

    from medgen.classify._registry import MODELS

    net = clf.net.eval()
    spec = MODELS.get(str(clf.config.get("model", "")).strip().lower())
    layer = target_layer or (spec.gradcam_layer if spec is not None else None)
    if layer is None:
        raise ConfigError(
            f"GradCAM needs a convolutional layer; model {clf.config['model']!r} has none by "
            "default. Use method='occlusion' or pass target_layer=..."
        )
    names = dict(net.named_modules())
    if layer not in names:
        raise ConfigError(
            f"target_layer {layer!r} is not a layer of the network."
            + did_you_mean(layer, names, n=3)
            + " List the layers with dict(clf.net.named_modules())."
        )
    # explain log p_k, not the raw logit: a 2-logit softmax model only fixes the logits'
    # difference, and its raw logit of class 1 can be negative everywhere (an all-zero map)
    cam = GradCAM(nn_module=_log_softmax(net), target_layers=f"net.{layer}")
    with torch.enable_grad():
        if ks is None:
            maps = cam(x.clone().requires_grad_(True), class_idx=None).detach().float()
        else:
            maps = torch.zeros(len(x), 1, *x.shape[2:])
            for k in sorted(set(ks)):
                rows = [i for i, ki in enumerate(ks) if ki == k]
                part = cam(x[rows].clone().requires_grad_(True), class_idx=k).detach().float()
                maps[rows] = part.as_tensor() if hasattr(part, "as_tensor") else part
    return maps.as_tensor() if hasattr(maps, "as_tensor") else maps


def _token_grid(embed: nn.Module, x: torch.Tensor, net: nn.Module) -> tuple[int, ...]:
    """Spatial grid of the patch tokens: the conv projection's output size, or the patch
    embedding's input size divided by the patch size (perceptron projection)."""
    import numpy as np
    import torch

    seen: dict[str, tuple[int, ...]] = {}
    proj = getattr(embed, "patch_embeddings", None)

    def on_embed(_m: Any, args: Any) -> None:
        seen["in"] = tuple(int(s) for s in args[0].shape[2:])

    def on_proj(_m: Any, _args: Any, out: Any) -> None:
        seen["proj"] = tuple(int(s) for s in out.shape)

    handles = [embed.register_forward_pre_hook(on_embed)]
    if proj is not None:
        handles.append(proj.register_forward_hook(on_proj))
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in handles:
            h.remove()
    sd = x.ndim - 2
    if "proj" in seen and len(seen["proj"]) == sd + 2:  # conv projection: B x D x grid
        return seen["proj"][2:]
    n_patches = int(np.asarray(getattr(embed, "n_patches", 0)))
    spatial = seen.get("in", tuple(x.shape[2:]))
    lengths: dict[str, int] = {}
    for m in proj.modules() if proj is not None else []:
        lengths.update(getattr(m, "axes_lengths", {}) or {})
    patch = [int(lengths.get(f"p{i + 1}", 0)) for i in range(sd)]
    if all(p > 0 for p in patch):
        return tuple(s // p for s, p in zip(spatial, patch, strict=True))
    side = round((float(np.prod(spatial)) / max(n_patches, 1)) ** (1.0 / sd))
    return tuple(s // max(side, 1) for s in spatial)


def _attention_matrices(net: nn.Module, blocks: list[nn.Module], x: torch.Tensor) -> list[Any]:
    """Each block's ``BxHxTxT`` attention probabilities, through MONAI's ``save_attn``."""
    import torch

    attns: list[Any] = [blk.attn for blk in blocks]
    if any(getattr(a, "use_flash_attention", False) for a in attns):
        raise ConfigError(
            "attention rollout needs the attention matrices, which MONAI's flash attention does "
            "not expose; build the ViT with use_flash_attention=False or use method='gradcam' "
            "or 'occlusion'"
        )
    before = [bool(getattr(a, "save_attn", False)) for a in attns]
    try:
        for a in attns:
            a.save_attn = True
        with torch.no_grad():
            net(x)
        mats = [a.att_mat.detach().float() for a in attns]
    finally:
        for a, b in zip(attns, before, strict=True):
            a.save_attn = b
            if not b:
                a.att_mat = torch.Tensor()
    return mats


def attention_rollout(net: nn.Module, x: torch.Tensor, *, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020) of a MONAI transformer.

    Each layer's attention is averaged over heads, mixed with the identity for the residual
    connection (``A' = residual * I + (1 - residual) * A``, rows renormalised) and the layers are
    multiplied, first to last; the map is the class token's row over the patch tokens (without a
    class token: the mean over all rows).

    Args:
        net: a network containing MONAI ``PatchEmbeddingBlock`` and ``TransformerBlock``s.
        x: ``BxCx[SPATIAL DIMS]`` preprocessed images.
        residual: weight of the identity (0.5 in the paper).

    Returns:
        ``Bx1x[SPATIAL DIMS]`` float tensor at ``x``'s spatial size (not rescaled).
    """
    import numpy as np
    import torch

    parts = _transformer_parts(net)
    if parts is None:
        raise ConfigError(
            "attention rollout needs a transformer (MONAI ViT blocks); this network has none. "
            "Use method='gradcam' or 'occlusion'."
        )
    embed, blocks = parts
    grid = _token_grid(embed, x, net)
    mats = _attention_matrices(net, blocks, x)
    t = mats[0].shape[-1]
    eye = torch.eye(t).expand(len(x), t, t)
    roll = eye.clone()
    for a in mats:
        a = residual * eye + (1.0 - residual) * a.mean(1)
        a = a / a.sum(-1, keepdim=True)
        roll = a @ roll
    n_patch = int(np.prod(grid))
    prefix = t - n_patch
    if prefix < 0:
        raise ConfigError(f"the transformer has {t} tokens but {n_patch} patches ({grid})")
    rel = roll[:, 0, prefix:] if prefix > 0 else roll.mean(1)
    maps = rel.reshape(len(x), 1, *grid)
    return _resize_maps(maps, x.shape[2:])


def _vit_gradcam(
    clf: Classifier, x: torch.Tensor, ks: list[int] | None, target_layer: str | None
) -> torch.Tensor:
    """GradCAM on the patch tokens entering the last block's attention."""
    import numpy as np
    import torch

    net = clf.net.eval()
    parts = _transformer_parts(net)
    if parts is None:
        raise ConfigError("transformer GradCAM needs MONAI transformer blocks; this net has none")
    embed, blocks = parts
    if target_layer is not None:
        names = dict(net.named_modules())
        if target_layer not in names:
            raise ConfigError(
                f"target_layer {target_layer!r} is not a layer of the network."
                + did_you_mean(target_layer, names, n=3)
                + " List the layers with dict(clf.net.named_modules())."
            )
        layer = names[target_layer]
    else:
        layer = blocks[-1].norm1  # type: ignore[assignment]
    grid = _token_grid(embed, x, net)
    acts: dict[str, torch.Tensor] = {}

    def keep(_m: Any, _args: Any, out: Any) -> None:
        acts["a"] = out

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            logits = torch.log_softmax(net(xg), dim=1)  # log p_k, as for CNNs
            k = logits.argmax(1) if ks is None else torch.as_tensor(ks)
            score = logits.gather(1, k.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, acts["a"])
    finally:
        handle.remove()
    a, g = acts["a"].detach(), grad.detach()
    sd = x.ndim - 2
    if a.ndim == sd + 2:  # a convolutional layer (e.g. a stem): classic GradCAM
        w = g.mean(dim=tuple(range(2, a.ndim)), keepdim=True)
        cam = torch.relu((w * a).sum(1, keepdim=True))
        return _resize_maps(cam.float(), x.shape[2:])
    n_patch = int(np.prod(grid))
    if a.ndim != 3 or a.shape[1] < n_patch:
        raise ConfigError(
            f"GradCAM on a transformer needs a layer with BxTxD token outputs (T >= {n_patch}); "
            f"this layer gives shape {tuple(a.shape)}"
        )
    a, g = a[:, -n_patch:], g[:, -n_patch:]
    w = g.mean(1, keepdim=True)
    cam = torch.relu((a * w).sum(-1)).reshape(len(x), 1, *grid)
    return _resize_maps(cam.float(), x.shape[2:])


def _occlusion(
    clf: Classifier, x: torch.Tensor, ks: list[int] | None, mask_size: int | None
) -> torch.Tensor:
    import torch
    from monai.visualize import OcclusionSensitivity

    net = clf.net.eval()
    side = min(x.shape[2:])
    m = mask_size or max(2, side // 8)
    occ = OcclusionSensitivity(nn_module=net, mask_size=m, n_batch=32, verbose=False, overlap=0.5)
    with torch.no_grad(), warnings.catch_warnings():  # MONAI: one image at a time
        warnings.filterwarnings("ignore", message=".*non-tuple sequence.*")
        occ_map = torch.cat([occ(x[i : i + 1])[0] for i in range(len(x))])
    if hasattr(occ_map, "as_tensor"):
        occ_map = occ_map.as_tensor()
    # occ_map: B x K x spatial: the class probability with each region occluded
    if ks is None:
        if len(clf.classes) == 2:
            ks = [1] * len(x)
        else:
            ks = [int(k) for k in clf.predict_proba(x).argmax(1)]
    sel = torch.stack([occ_map[i, ks[i]] for i in range(len(x))])[:, None]
    return -sel.float()  # lower probability when occluded = more evidence


def explain(
    clf: Classifier,
    images: Any,
    *,
    method: str = "auto",
    class_idx: int | Sequence[int] | None = None,
    target_layer: str | None = None,
    mask_size: int | None = None,
) -> torch.Tensor:
    """Saliency maps for a batch of images, by the method that fits the model family.

    Args:
        clf: a trained classifier.
        images: raw ``Cx[SPATIAL DIMS]`` or ``BxCx[SPATIAL DIMS]`` images (they are preprocessed as
            in training: resized to the training size, z-scored).
        method: ``"auto"`` (:func:`default_method`: rollout for transformers, GradCAM for CNNs,
            occlusion otherwise), ``"gradcam"`` (Selvaraju et al., ICCV 2017, of ``log p_k``;
            CNNs at the registry's layer, transformers at the tokens entering the last block),
            ``"rollout"`` (attention rollout, Abnar & Zuidema, ACL 2020; transformers only,
            class-agnostic) or ``"occlusion"`` (Zeiler & Fergus, ECCV 2014; any network, slower).
        class_idx: the class to explain: one index for all images, one per image, or ``None``
            (GradCAM: each image's predicted class; occlusion: ``classes[1]`` when binary, else
            the predicted class). Rollout ignores it.
        target_layer: GradCAM layer (dotted name); defaults to the registry's layer for a CNN
            and to the last transformer block's ``norm1`` for a ViT.
        mask_size: occlusion patch size in pixels (default: 1/8 of the image side, at least 2).

    Returns:
        ``Bx1x[SPATIAL DIMS]`` float tensor at the spatial shape of ``images`` (maps computed at
        the model's input size are resized back, bi/trilinear), larger = more evidence for the
        class (rollout: more attention flow to the class token), min-max scaled to [0, 1] per
        image.

    Raises:
        ConfigError: unknown method (closest name suggested), rollout on a CNN, GradCAM on a
            network without a layer for it, an unknown ``target_layer`` or a bad ``class_idx``.
    """
    import torch

    if method not in EXPLAIN_METHODS:
        hint = did_you_mean(method, EXPLAIN_METHODS)
        raise ConfigError(
            f"Unknown explain method {method!r}.{hint} Choose one of {', '.join(EXPLAIN_METHODS)}."
        )
    raw = images.as_tensor() if hasattr(images, "as_tensor") else images
    raw_shape = tuple(int(s) for s in torch.as_tensor(raw).shape)
    sd = int(clf.config["spatial_dims"])
    x = clf.preprocess(images)
    out_size = raw_shape[-sd:] if len(raw_shape) in (sd + 1, sd + 2) else tuple(x.shape[2:])
    ks = _class_indices(class_idx, len(x), len(clf.classes))
    family = model_family(clf)
    if method == "auto":
        method = default_method(clf)
    if method == "rollout":
        if family != "vit":
            raise ConfigError(
                f"method='rollout' needs a transformer; model {clf.config['model']!r} is a "
                "CNN. Use method='gradcam' or 'occlusion' (or 'auto')."
            )
        maps = attention_rollout(clf.net.eval(), x)
    elif method == "gradcam":
        if family == "vit":
            maps = _vit_gradcam(clf, x, ks, target_layer)
        else:
            maps = _cnn_gradcam(clf, x, ks, target_layer)
    else:
        maps = _occlusion(clf, x, ks, mask_size)
    maps = _resize_maps(maps.detach().float(), out_size)
    return _minmax(maps)


def overlay(image: Any, saliency: Any, *, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a saliency map over a grayscale 2D image.

    Args:
        image: ``XY``, ``1xXY`` or ``1x1xXY`` image (any intensity range; min-max scaled).
        saliency: map of the same spatial shape, values in [0, 1] (e.g. from :func:`explain`).
        alpha: opacity of the map.
        cmap: matplotlib colormap name.

    Returns:
        ``XxYx3`` float RGB array in [0, 1] (display with ``plt.imshow(rgb.transpose(1, 0, 2))``
        for radiological x-right/y-up orientation, or as is).
    """
    import matplotlib
    import numpy as np

    img = np.asarray(getattr(image, "detach", lambda: image)()).squeeze().astype(float)
    sal = np.asarray(getattr(saliency, "detach", lambda: saliency)()).squeeze().astype(float)
    if img.ndim != 2 or img.shape != sal.shape:
        raise ConfigError(
            f"overlay needs a 2D image and a map of the same shape, got {img.shape} and {sal.shape}"
        )
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], not {alpha}")
    img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    sal = np.clip(sal, 0, 1)
    heat = matplotlib.colormaps[cmap](sal)[..., :3]
    return np.asarray((1 - alpha) * np.repeat(img[..., None], 3, axis=2) + alpha * heat)
