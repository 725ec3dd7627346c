"""Explanation maps through :mod:`monai.visualize` (GradCAM, occlusion sensitivity) and overlays."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medgen.classify._model import Classifier

__all__ = ["EXPLAIN_METHODS", "explain", "overlay"]

EXPLAIN_METHODS = ("gradcam", "occlusion")


def explain(
    clf: Classifier,
    images: Any,
    *,
    method: str = "gradcam",
    class_idx: int | None = None,
    target_layer: str | None = None,
    mask_size: int | None = None,
) -> torch.Tensor:
    """Saliency maps for a batch of images.

    Args:
        clf: a trained classifier.
        images: raw ``Cx[SPATIAL DIMS]`` or ``BxCx[SPATIAL DIMS]`` images (they are preprocessed as
            in training: resized to the training size, z-scored).
        method: ``"gradcam"`` (Selvaraju et al., ICCV 2017; CNNs) or ``"occlusion"`` (Zeiler &
            Fergus, ECCV 2014; any network, slower).
        class_idx: the class to explain; ``None`` explains each image's predicted class for
            GradCAM and ``classes[1]`` (binary) / the predicted class for occlusion.
        target_layer: GradCAM layer (dotted name); defaults to the registry's layer for the model.
        mask_size: occlusion patch size in pixels (default: 1/8 of the image side, at least 2).

    Returns:
        ``Bx1x[SPATIAL DIMS]`` float tensor at the model's input size, larger = more evidence for
        the class, min-max scaled to [0, 1] per image.
    """
    import torch
    from monai.visualize import GradCAM, OcclusionSensitivity

    from medgen.classify._registry import get_model_spec

    if method not in EXPLAIN_METHODS:
        hint = did_you_mean(method, EXPLAIN_METHODS)
        raise ConfigError(
            f"Unknown explain method {method!r}.{hint} Choose one of {', '.join(EXPLAIN_METHODS)}."
        )
    x = clf.preprocess(images)
    net = clf.net.eval()
    if method == "gradcam":
        layer = target_layer or get_model_spec(clf.config["model"]).gradcam_layer
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
        cam = GradCAM(nn_module=net, target_layers=layer)
        with torch.enable_grad():
            maps = cam(x.clone().requires_grad_(True), class_idx=class_idx)
        maps = maps.detach().float()
    else:
        side = min(x.shape[2:])
        m = mask_size or max(2, side // 8)
        occ = OcclusionSensitivity(
            nn_module=net, mask_size=m, n_batch=32, verbose=False, overlap=0.5
        )
        with torch.no_grad(), warnings.catch_warnings():  # MONAI: one image at a time
            warnings.filterwarnings("ignore", message=".*non-tuple sequence.*")
            occ_map = torch.cat([occ(x[i : i + 1])[0] for i in range(len(x))])
        # occ_map: B x K x spatial: the class probability with each region occluded
        k = class_idx if class_idx is not None else (1 if len(clf.classes) == 2 else None)
        if k is None:
            k_t = clf.predict_proba(x).argmax(1)
            sel = torch.stack([occ_map[i, int(k_t[i])] for i in range(len(x))])[:, None]
        else:
            sel = occ_map[:, k : k + 1]
        maps = -sel.float()  # lower probability when occluded = more evidence
        lo = maps.flatten(1).min(1).values.view(-1, *[1] * (maps.ndim - 1))
        hi = maps.flatten(1).max(1).values.view(-1, *[1] * (maps.ndim - 1))
        maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    if hasattr(maps, "as_tensor"):
        maps = maps.as_tensor()
    return maps


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
