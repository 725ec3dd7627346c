"""Self-supervised pretraining of classifier encoders on unlabeled images (MAE, SimCLR).

Two objectives, both on the images of a cohort with their labels ignored (real, simulated and
synthetic rows alike; by default the ``train`` split only, so no validation or test image is seen):

- ``method="mae"``: MONAI's :class:`~monai.networks.nets.MaskedAutoEncoderViT` (He et al. 2022,
  "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377) whose encoder has the
  geometry of the registry's ViT (patch size, hidden size, layers, heads, MLP size, read from the
  built network); 75 % of the patches are masked and the loss is the mean squared error on the
  masked patches only. After pretraining the encoder (patch embedding, blocks, final norm, class
  token) is mapped onto the registry ViT's state-dict keys.
- ``method="contrastive"``: SimCLR's NT-Xent objective (Chen et al. 2020, "A Simple Framework for
  Contrastive Learning of Visual Representations", arXiv:2002.05709) on any registry network
  (typically a CNN): two random views per image (crop and resize, flips, intensity scale/shift,
  Gaussian noise; torch ops with a seeded generator), the network's classification layer replaced
  by the identity (its pooled features), a two-layer projection head that is discarded afterwards.

The run folder is a classifier-style run folder (:mod:`medgen.classify._run`): the writer holds
its lock, refuses foreign files, writes ``model.safetensors`` (the encoder in the registry
network's state-dict keys, head excluded), ``config.json`` (``"kind": "medgen.pretrain"``,
architecture, input size, the resolved options, the loss history summary, provenance),
``metrics.csv`` and last ``run_complete.json``. ``train(..., init=RUN)`` loads it
(:func:`load_init`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.device import resolve_device
from medgen.errors import ConfigError, ManifestError, MedgenFileNotFoundError, RunFolderError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["METHODS", "PretrainConfig", "Pretrained", "load_pretrained", "pretrain"]

#: the pretraining objectives
METHODS = ("mae", "contrastive")
#: the network each method pretrains when ``model=None``
DEFAULT_MODEL = {"mae": "vit", "contrastive": "densenet"}
#: ``kind`` in the completion marker and in ``config.json``
KIND = "medgen.pretrain"
FORMAT = "medgen.pretrain/1"
_WHAT = "pretraining run"
_DEFAULT_WEIGHT_DECAY = {"mae": 0.05, "contrastive": 1e-4}


@dataclass
class PretrainConfig:
    """The resolved options of one pretraining run (saved in ``config.json``)."""

    method: str = "mae"
    model: str = "vit"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    spatial_dims: int = 2
    image_size: list[int] | None = None
    in_channels: int = 1
    split: list[str] | None = field(default_factory=lambda: ["train"])
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    masking_ratio: float = 0.75
    decoder: dict[str, int] = field(default_factory=dict)
    temperature: float = 0.5
    projection_dim: int = 64
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class Pretrained:
    """A pretrained encoder: what :func:`pretrain` returns and :func:`load_pretrained` reads.

    Attributes:
        config: the resolved :class:`PretrainConfig` as a dict.
        state_dict: the encoder's weights under the state-dict keys of
            ``build_model(config["model"], ...)``, the classification head's keys excluded.
        head: dotted name of the registry network's head (freshly initialised when fine-tuning).
        metrics: summary (first and last epoch loss, epochs run, images, seconds).
        history: one row per epoch (``epoch``, ``train_loss``, ``lr``, ``seconds``).
        path: the run folder, or ``None`` when the run was not saved.
    """

    config: dict[str, Any] = field(repr=False)
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    head: str
    metrics: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame | None = field(default=None, repr=False)
    path: Path | None = None

    def encoder(self, num_classes: int = 2) -> nn.Module:
        """The registry network with the pretrained encoder loaded and a fresh ``num_classes``
        head (``BxCx[SPATIAL DIMS]`` -> ``BxK`` logits)."""
        from medgen.classify._registry import build_model

        c = self.config
        net = build_model(
            c["model"],
            spatial_dims=int(c["spatial_dims"]),
            in_channels=int(c["in_channels"]),
            num_classes=num_classes,
            image_size=c["image_size"],
            model_kwargs=c.get("model_kwargs") or {},
        )
        _load_encoder(net, self.state_dict, head=self.head, source=str(self.path or "memory"))
        return net


# ---------------------------------------------------------------------------------------------
# networks: the head, the ViT inside a registry network, the MAE built to match it


def head_name(net: nn.Module) -> str:
    """Dotted name of the network's classification layer: its last ``nn.Linear``."""
    from torch import nn

    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            f"{type(net).__name__} has no linear classification layer; it cannot be pretrained "
            "or initialised from a pretraining run. Choose another registry model."
        )
    return names[-1]


def _replace_module(net: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, new)


def _find_vit(net: nn.Module, model: str) -> tuple[str, Any]:
    """``(prefix, vit)``: the MONAI ViT inside a registry network and its state-dict prefix."""
    from monai.networks.nets import ViT

    for name, m in net.named_modules():
        if isinstance(m, ViT):
            return (f"{name}." if name else ""), m
    raise ConfigError(
        f"method='mae' pretrains a Vision Transformer, and model {model!r} holds no MONAI ViT; "
        "use model='vit', or method='contrastive' for a CNN."
    )


def _vit_geometry(vit: Any, model: str) -> dict[str, Any]:
    """Patch size, hidden size, layers, heads, MLP size and qkv bias of a MONAI ViT."""
    from torch import nn

    pe = vit.patch_embedding
    conv = pe.patch_embeddings
    if getattr(pe, "proj_type", "conv") != "conv" or not hasattr(conv, "kernel_size"):
        raise ConfigError(
            f"model {model!r}: MAE pretraining needs the ViT's convolutional patch embedding "
            "(proj_type='conv'); pass model_kwargs without proj_type."
        )
    blk = vit.blocks[0]
    qkv = blk.attn.qkv
    return {
        "patch_size": [int(p) for p in conv.kernel_size],
        "hidden_size": int(vit.norm.normalized_shape[0]),
        "num_layers": len(vit.blocks),
        "num_heads": int(blk.attn.num_heads),
        "mlp_dim": int(blk.mlp.linear1.out_features),
        "qkv_bias": bool(isinstance(qkv, nn.Linear) and qkv.bias is not None),
        "in_channels": int(conv.in_channels),
    }


def _decoder_options(geom: dict[str, Any], decoder: dict[str, int]) -> dict[str, int]:
    heads = int(decoder.get("decoder_num_heads", geom["num_heads"]))
    hidden = int(
        decoder.get("decoder_hidden_size", max(heads, geom["hidden_size"] // 2 // heads * heads))
    )
    out = {
        "decoder_hidden_size": hidden,
        "decoder_num_heads": heads,
        "decoder_num_layers": int(decoder.get("decoder_num_layers", 2)),
        "decoder_mlp_dim": int(decoder.get("decoder_mlp_dim", 4 * hidden)),
    }
    unknown = set(decoder) - set(out)
    if unknown:
        raise ConfigError(
            f"decoder has unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(out))}"
        )
    return out


def _build_mae(cfg: PretrainConfig, geom: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import MaskedAutoEncoderViT

    dec = _decoder_options(geom, cfg.decoder)
    try:
        return MaskedAutoEncoderViT(
            in_channels=cfg.in_channels,
            img_size=tuple(cfg.image_size or ()),
            patch_size=tuple(geom["patch_size"]),
            hidden_size=geom["hidden_size"],
            mlp_dim=geom["mlp_dim"],
            num_layers=geom["num_layers"],
            num_heads=geom["num_heads"],
            masking_ratio=cfg.masking_ratio,
            qkv_bias=geom["qkv_bias"],
            spatial_dims=cfg.spatial_dims,
            pos_embed_type="sincos",
            decoder_pos_embed_type="sincos",
            decoder_hidden_size=dec["decoder_hidden_size"],
            decoder_mlp_dim=dec["decoder_mlp_dim"],
            decoder_num_layers=dec["decoder_num_layers"],
            decoder_num_heads=dec["decoder_num_heads"],
        )
    except ValueError as err:
        raise ConfigError(f"cannot build the masked autoencoder for {cfg.model!r}: {err}") from err


def _mae_key(key: str, *, prefix: str, num_layers: int) -> str | None:
    """The MAE state-dict key holding the registry ViT's ``key`` (``None``: not in the MAE)."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    if rest.startswith("norm."):
        return f"blocks.{num_layers}.{rest[len('norm.') :]}"  # MAE's encoder ends with its norm
    if rest.startswith(("patch_embedding.", "blocks.")) or rest == "cls_token":
        return rest
    return None


def _mae_encoder_state(
    mae: nn.Module, net: nn.Module, *, head: str, prefix: str, num_layers: int, model: str
) -> dict[str, torch.Tensor]:
    """The MAE's encoder weights under the registry ViT's keys (every non-head key covered)."""
    mae_state = mae.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in net.state_dict().items():
        if key.startswith(head + "."):
            continue
        src = _mae_key(key, prefix=prefix, num_layers=num_layers)
        if src is None or src not in mae_state or mae_state[src].shape != value.shape:
            raise ConfigError(
                f"model {model!r}: the masked autoencoder has no weight for {key!r} (shape "
                f"{tuple(value.shape)}); MAE pretraining supports MONAI's ViT as built by the "
                "registry. Use method='contrastive' for this network."
            )
        out[key] = mae_state[src].detach().cpu().clone().contiguous()
    return out


def _load_encoder(
    net: nn.Module, state: dict[str, torch.Tensor], *, head: str, source: str
) -> list[str]:
    """Load encoder weights into ``net``; every key but the head's must be filled. Returns the
    head's (fresh) keys."""
    try:
        res = net.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"the pretrained weights of {source} do not fit the network ({first}); pretrain "
            "again with the model and model_kwargs you train."
        ) from err
    missing = [k for k in res.missing_keys if not k.startswith(head + ".")]
    if missing or res.unexpected_keys:
        raise ConfigError(
            f"the pretrained weights of {source} do not fit the network: missing "
            f"{missing[:5]}, unexpected {list(res.unexpected_keys)[:5]}; pretrain again with "
            "the model and model_kwargs you train."
        )
    return list(res.missing_keys)


# ---------------------------------------------------------------------------------------------
# objectives


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``BxCx[SPATIAL DIMS]`` images as ``BxNx(prod(patch_size)*C)`` patches, in the token order
    of MONAI's convolutional patch embedding (row-major over the patch grid)."""
    b, c, *spatial = x.shape
    p = [int(v) for v in patch_size]
    grid = [s // q for s, q in zip(spatial, p, strict=True)]
    shape = [b, c]
    for g, q in zip(grid, p, strict=True):
        shape += [g, q]
    x = x.reshape(shape)
    d = len(spatial)
    grid_axes = [2 + 2 * i for i in range(d)]
    patch_axes = [3 + 2 * i for i in range(d)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(b, math.prod(grid), math.prod(p) * c)


def mae_loss(mae: nn.Module, x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Mean squared error of the reconstruction on the masked patches only (He et al. 2022)."""
    pred, mask = mae(x)
    target = patchify(x, patch_size)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy for ``BxD`` projections of two views:
    each view's positive is the other view of its image, the other ``2B - 2`` are negatives."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def random_views(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """One random view per image of ``BxCx[SPATIAL DIMS]``: a crop of 40-100 % of the area (or
    volume) resized back, a flip of each spatial axis with probability 1/2, intensity ``a*x + b``
    (``a`` in [0.8, 1.2], ``b`` in [-0.2, 0.2]) and Gaussian noise of standard deviation 0.05."""
    import torch
    import torch.nn.functional as F

    spatial = list(x.shape[2:])
    d = len(spatial)
    mode = "bilinear" if d == 2 else "trilinear"
    out = []
    for im in x:
        u = torch.rand(3 + 2 * d, generator=generator).tolist()
        side = (0.4 + 0.6 * u[0]) ** (1.0 / d)
        crop = im
        for axis, s in enumerate(spatial):
            c = max(1, round(s * side))
            start = int(u[3 + axis] * (s - c + 1)) if s > c else 0
            crop = crop.narrow(axis + 1, min(start, s - c), c)
        view = F.interpolate(crop[None], size=spatial, mode=mode, align_corners=False)[0]
        flips = [axis + 1 for axis in range(d) if u[3 + d + axis] < 0.5]
        if flips:
            view = view.flip(flips)
        view = view * (0.8 + 0.4 * u[1]) + (0.4 * u[2] - 0.2)
        view = view + 0.05 * torch.randn(view.shape, generator=generator)
        out.append(view)
    return torch.stack(out)


def _flip(x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Flip each image along its first spatial axis with probability 1/2 (MAE's augmentation)."""
    import torch

    flip = torch.rand(len(x), generator=generator) < 0.5
    if flip.any():
        x = x.clone()
        x[flip] = x[flip].flip(2)
    return x


class _Contrastive:
    """A backbone (the registry network, its head replaced by the identity) and a projection."""

    def __init__(self, net: nn.Module, head: str, projection_dim: int) -> None:
        from torch import nn

        layer = net.get_submodule(head)
        feats = int(layer.in_features)  # type: ignore[arg-type]
        _replace_module(net, head, nn.Identity())
        self.backbone = net
        self.projection = nn.Sequential(
            nn.Linear(feats, feats), nn.ReLU(inplace=True), nn.Linear(feats, projection_dim)
        )
        self.modules = nn.ModuleList([self.backbone, self.projection])

    def loss(self, x: torch.Tensor, temperature: float, generator: torch.Generator) -> Any:
        """NT-Xent of two random views of each image of ``x``."""
        import torch

        views = torch.cat([random_views(x, generator=generator) for _ in range(2)])
        dev = next(self.backbone.parameters()).device
        z = self.projection(self.backbone(views.to(dev)))
        return nt_xent(z[: len(x)], z[len(x) :], temperature)


# ---------------------------------------------------------------------------------------------
# the public entry point


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, not {value!r}")


def _rows(df: pd.DataFrame, split: list[str] | None) -> pd.DataFrame:
    if split is None:
        return df
    if "split" not in df.columns:
        raise ManifestError(
            f"split={split} but the manifest has no 'split' column; assign splits "
            "(Cohort.split(...)) or pass split=None to pretrain on every row"
        )
    col = df["split"].fillna("").astype(str).str.lower()
    rows = df[col.isin([s.lower() for s in split])]
    if rows.empty:
        raise ManifestError(
            f"no rows with split in {split}; splits present: {sorted(col.unique().tolist())}. "
            "Pass split=None to pretrain on every row (then the encoder has seen the "
            "validation and test images, without their labels)."
        )
    return rows


def pretrain(
    cohort: Any,
    *,
    method: str = "mae",
    model: str | None = None,
    out_dir: str | Path | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    seed: int | None = None,
    image_size: Sequence[int] | None = None,
    spatial_dims: int = 2,
    split: str | Sequence[str] | None = "train",
    lr: float = 1e-3,
    weight_decay: float | None = None,
    masking_ratio: float = 0.75,
    decoder: dict[str, int] | None = None,
    temperature: float = 0.5,
    projection_dim: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    time_budget_s: float | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Pretrained:
    """Pretrain a classifier's encoder on the cohort's images, without their labels.

    Args:
        cohort: a :class:`medgen.Cohort` or a manifest path. Labels are ignored; real, simulated
            and synthetic rows are all used.
        method: ``"mae"`` (masked autoencoder, ViTs) or ``"contrastive"`` (SimCLR, any network).
        model: a registry name; ``None``: ``"vit"`` for MAE, ``"densenet"`` (the small DenseNet)
            for contrastive. Fine-tune with the same ``model``, ``model_kwargs`` and image size.
        out_dir: the run folder (new or empty, or ``overwrite``; files that are not a run's are
            refused, never deleted); ``None`` keeps the result in memory only.
        epochs: passes over the images.
        batch_size: images per step (the contrastive loss sees ``2 * batch_size`` views).
        seed: seeds weights, masks, views and order; ``None`` draws one and records it.
        image_size: resize to this spatial size; ``None`` keeps the native size.
        spatial_dims: 2 or 3.
        split: the splits whose images are used; the default ``"train"`` means no validation or
            test image is seen. ``None`` uses every row.
        lr: AdamW peak learning rate (linear warm-up over the first 5 % of steps, cosine decay).
        weight_decay: AdamW weight decay; ``None``: 0.05 for MAE, 1e-4 for contrastive.
        masking_ratio: share of patches the MAE masks.
        decoder: MAE decoder options (``decoder_hidden_size``, ``decoder_num_layers``,
            ``decoder_num_heads``, ``decoder_mlp_dim``); default half the encoder width, 2 layers.
        temperature: NT-Xent temperature.
        projection_dim: output size of the contrastive projection head (discarded afterwards).
        model_kwargs: extra arguments of the registry network.
        time_budget_s: stop after this many seconds of training.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        overwrite: replace the run in ``out_dir`` (its files only).
        progress: show tqdm bars.

    Returns:
        The :class:`Pretrained` encoder (its loss history in ``history``).

    Raises:
        ConfigError: unknown method or model, MAE on a network without a ViT, invalid options.
        ManifestError: no rows in ``split``.
        RunFolderError: ``out_dir`` holds a run (without ``overwrite``) or foreign files.
    """
    import contextlib

    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from medgen._internal.provenance import package_versions
    from medgen._internal.runs import mark_complete, run_lock
    from medgen.classify import _run
    from medgen.classify._data import as_cohort, load_images, manifest_hash, manifest_of
    from medgen.classify._registry import build_model, get_model_spec
    from medgen.classify._train import epoch_seed

    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    spec = get_model_spec(model if model is not None else DEFAULT_MODEL[method])
    if method == "mae" and spec.family != "vit":
        raise ConfigError(
            f"method='mae' pretrains a Vision Transformer, and model {spec.name!r} is a "
            f"{spec.family!r}; use model='vit', or method='contrastive' for a CNN."
        )
    if method == "mae" and spec.name == "vit_hybrid":
        raise ConfigError(
            "method='mae' pretrains the plain 'vit': vit_hybrid's transformer sees its "
            "convolutional stem's features, not image patches, so no MAE encoder matches it. "
            "Use model='vit', or method='contrastive' for vit_hybrid."
        )
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("projection_dim", projection_dim)
    if not 0.0 < float(masking_ratio) < 1.0:
        raise ConfigError(f"masking_ratio must be in (0, 1), e.g. 0.75, not {masking_ratio!r}")
    if not float(temperature) > 0:
        raise ConfigError(f"temperature must be > 0, e.g. 0.5, not {temperature!r}")
    if method == "contrastive" and batch_size < 2:
        raise ConfigError("method='contrastive' needs batch_size >= 2 (negatives come from it)")
    splits = [split] if isinstance(split, str) else (list(split) if split is not None else None)
    co = as_cohort(cohort)
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if seed is None:
        seed = int(np.random.default_rng().integers(0, 2**31 - 1))
    t_start = time.perf_counter()
    with contextlib.ExitStack() as held:
        if out is not None:
            held.enter_context(run_lock(out, what=_WHAT, owned=_run.OWNED))
            _run.prepare(
                out,
                resume=False,
                overwrite=overwrite,
                what=_WHAT,
                resume_hint="a new folder (pretraining runs do not resume)",
                overwrite_hint="--overwrite (Python: overwrite=True)",
            )
        df = manifest_of(co)
        rows = _rows(df, splits)
        x = load_images(
            co,
            rows["image_id"].astype(str).tolist(),
            image_size=list(image_size) if image_size is not None else None,
            spatial_dims=spatial_dims,
            progress=progress,
        )
        cfg = PretrainConfig(
            method=method,
            model=spec.name,
            model_kwargs=dict(model_kwargs or {}),
            spatial_dims=spatial_dims,
            image_size=[int(s) for s in x.shape[2:]],
            in_channels=int(x.shape[1]),
            split=splits,
            epochs=epochs,
            batch_size=batch_size,
            lr=float(lr),
            weight_decay=float(
                _DEFAULT_WEIGHT_DECAY[method] if weight_decay is None else weight_decay
            ),
            masking_ratio=float(masking_ratio),
            decoder=dict(decoder or {}),
            temperature=float(temperature),
            projection_dim=projection_dim,
            time_budget_s=time_budget_s,
            seed=seed,
            device=str(resolve_device(device)),
        )
        dev = torch.device(cfg.device)
        forks = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=forks):
            torch.manual_seed(seed)
            net = build_model(
                spec.name,
                spatial_dims=spatial_dims,
                in_channels=cfg.in_channels,
                num_classes=2,
                image_size=cfg.image_size or [],
                model_kwargs=cfg.model_kwargs,
            )
            head = head_name(net)
            extra: dict[str, Any] = {}
            if method == "mae":
                prefix, vit = _find_vit(net, spec.name)
                geom = _vit_geometry(vit, spec.name)
                mae = _build_mae(cfg, geom).to(dev)
                extra = {"encoder": geom, "decoder": _decoder_options(geom, cfg.decoder)}
                params = list(mae.parameters())
                trained: nn.Module = mae
            else:
                obj = _Contrastive(net, head, projection_dim)
                obj.modules.to(dev)
                params = list(obj.modules.parameters())
                trained = obj.modules
        opt = torch.optim.AdamW(
            [p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        n = len(x)
        per_epoch = -(-n // batch_size)
        if method == "contrastive" and n % batch_size == 1:
            per_epoch -= 1  # a batch of one image has no negatives: dropped
        if per_epoch < 1:
            raise ManifestError(
                f"method='contrastive' needs at least 2 images; the selected rows hold {n}"
            )
        total = per_epoch * epochs
        warm = max(1, round(total * 0.05))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                (s + 1) / warm
                if s < warm
                else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
            ),
        )
        history: list[dict[str, Any]] = []
        stopped = None
        t0 = time.perf_counter()
        for epoch in range(epochs):
            te = time.perf_counter()
            es = epoch_seed(seed, epoch)
            g = torch.Generator().manual_seed(es)
            order = torch.randperm(n, generator=g)
            batches = [order[i : i + batch_size] for i in range(0, n, batch_size)][:per_epoch]
            losses: list[float] = []
            bar = tqdm(
                batches, desc=f"{method} {epoch + 1}/{epochs}", disable=not progress, leave=False
            )
            with torch.random.fork_rng(devices=forks):
                torch.manual_seed(es)
                trained.train()
                for b in bar:
                    xb = x[b]
                    if method == "mae":
                        loss = mae_loss(mae, _flip(xb, generator=g).to(dev), geom["patch_size"])
                    else:
                        loss = obj.loss(xb, cfg.temperature, g)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                        stopped = "time"
                        break
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": float(np.mean(losses)) if losses else float("nan"),
                    "lr": float(opt.param_groups[0]["lr"]),
                    "steps": len(losses),
                    "seconds": time.perf_counter() - te,
                }
            )
            log.info("%s epoch %d: %s", method, epoch + 1, history[-1])
            if stopped:
                log.info("time budget of %.0f s reached after epoch %d", time_budget_s, epoch + 1)
                break
        trained.eval()
        if method == "mae":
            state = _mae_encoder_state(
                mae,
                net,
                head=head,
                prefix=prefix,
                num_layers=geom["num_layers"],
                model=spec.name,
            )
        else:
            state = {
                k: v.detach().cpu().clone().contiguous()
                for k, v in obj.backbone.state_dict().items()
            }
        hist = pd.DataFrame(history)
        src = rows["source"].astype(str) if "source" in rows.columns else pd.Series(dtype=str)
        metrics = {
            "first_epoch_loss": history[0]["train_loss"],
            "last_epoch_loss": history[-1]["train_loss"],
            "epochs_run": len(history),
            "stopped": stopped,
            "n_images": n,
            "n_by_source": {str(k): int(v) for k, v in src.value_counts().items()},
            "train_seconds": time.perf_counter() - t0,
            "wall_seconds": time.perf_counter() - t_start,
        }
        result = Pretrained(
            config=asdict(cfg),
            state_dict=state,
            head=head,
            metrics=metrics,
            history=hist,
            path=out,
        )
        provenance = {
            "manifest_sha256": manifest_hash(df),
            "seed": seed,
            "versions": package_versions(),
        }
        if out is not None:
            _write(out, result, extra=extra, provenance=provenance)
            mark_complete(
                out,
                _run.RESULT_FILES,
                kind=KIND,
                info={"method": method, "epochs_run": len(history)},
            )
    return result


def _write(d: Path, res: Pretrained, *, extra: dict[str, Any], provenance: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from medgen._internal.files import atomic_path, write_table, write_text_atomic
    from medgen.classify import _run

    c = res.config
    meta = {
        "format": FORMAT,
        "kind": KIND,
        "method": c["method"],
        "architecture": c["model"],
        "input_size": [int(c["in_channels"]), *[int(s) for s in c["image_size"]]],
        "head": res.head,
        "weights": (
            "the encoder under the state-dict keys of the registry network "
            f"{c['model']!r}; the head {res.head!r} is not stored"
        ),
        "config": c,
        **extra,
        "metrics": res.metrics,
        "provenance": provenance,
    }
    with atomic_path(d / _run.WEIGHTS) as tmp:
        save_file(res.state_dict, str(tmp))
    write_text_atomic(d / _run.CONFIG, json.dumps(_run.jsonable(meta), indent=2))
    if res.history is not None and not res.history.empty:
        write_table(res.history, d / _run.METRICS)


# ---------------------------------------------------------------------------------------------
# reading a run, and train(init=...)


def _read_meta(folder: Path, *, what: str) -> dict[str, Any]:
    """``config.json`` of a finished pretraining run (marker checked, kind checked)."""
    from medgen._internal.runs import COMPLETE, check_complete
    from medgen.classify import _run

    if not folder.is_dir() or not any(
        (folder / n).exists() for n in (COMPLETE, _run.CONFIG, _run.WEIGHTS)
    ):
        raise MedgenFileNotFoundError(
            f"{what}={str(folder)!r} is not a pretraining run: expected {_run.CONFIG}, "
            f"{_run.WEIGHTS} and {COMPLETE} in it (written by medgen.classify.pretrain / "
            "`medgen pretrain MANIFEST -o RUN`)"
        )
    marker = check_complete(folder, what=_WHAT, resume_hint="pretraining again (--overwrite)")
    if marker.get("kind") != KIND:
        raise ConfigError(
            f"{what}={str(folder)!r} holds a {marker.get('kind')!r} run, not a pretraining run; "
            "pass a folder written by medgen.classify.pretrain (`medgen pretrain`)."
        )
    try:
        meta = json.loads((folder / _run.CONFIG).read_text(encoding="utf-8"))
        missing = [k for k in ("config", "head") if k not in meta] + [
            k
            for k in ("model", "image_size", "spatial_dims", "in_channels")
            if k not in meta.get("config", {})
        ]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(
            f"{folder / _run.CONFIG} is not a pretraining config ({type(err).__name__}: {err}); "
            "pretrain again into a new folder."
        ) from err
    return dict(meta)


def load_pretrained(directory: str | Path) -> Pretrained:
    """Read a finished pretraining run folder (no pickles; the marker's SHA-256 are checked).

    Raises:
        MedgenFileNotFoundError: the folder holds no pretraining run.
        RunFolderError: an interrupted or mixed folder.
        ConfigError: a run of another kind (a classifier) or an unreadable config.
    """
    from safetensors.torch import load_file

    from medgen._internal.files import read_table
    from medgen.classify import _run

    d = Path(directory).expanduser()
    meta = _read_meta(d, what="directory")
    state = load_file(str(d / _run.WEIGHTS))
    hist = (
        read_table(d / _run.METRICS, what="loss history") if (d / _run.METRICS).is_file() else None
    )
    return Pretrained(
        config=dict(meta["config"]),
        state_dict=state,
        head=str(meta["head"]),
        metrics=dict(meta.get("metrics") or {}),
        history=hist,
        path=d,
    )


def _describe(geometry: dict[str, Any]) -> str:
    size = "x".join(str(v) for v in geometry["image_size"])
    kw = f", model_kwargs={geometry['model_kwargs']}" if geometry["model_kwargs"] else ""
    return (
        f"architecture {geometry['model']!r}, input size {size} "
        f"({geometry['in_channels']} channel(s), {geometry['spatial_dims']}D{kw})"
    )


def _geometry(model: Any, kwargs: Any, dims: Any, channels: Any, size: Any) -> dict[str, Any]:
    from medgen.classify import _run

    return dict(
        _run.jsonable(
            {
                "model": model,
                "model_kwargs": kwargs or {},
                "spatial_dims": dims,
                "in_channels": channels,
                "image_size": list(size or []),
            }
        )
    )


def check_init(init: str | Path, cfg: Any) -> dict[str, Any]:
    """Check that the pretraining run ``init`` fits the classifier ``cfg`` (a ``TrainConfig``):
    same architecture, model_kwargs, spatial dims, channels and image size. Returns what the
    classifier records about it (run, method, weights' SHA-256).

    Raises:
        ConfigError: another architecture or input size (the message names both), or a folder
            that is not a pretraining run.
        MedgenFileNotFoundError, RunFolderError: no run, or an interrupted or mixed one.
    """
    from medgen._internal.runs import COMPLETE
    from medgen.classify import _run

    d = Path(init).expanduser()
    meta = _read_meta(d, what="init")
    c = meta["config"]
    stored = _geometry(
        c["model"], c.get("model_kwargs"), c["spatial_dims"], c["in_channels"], c["image_size"]
    )
    wanted = _geometry(
        cfg.model, cfg.model_kwargs, cfg.spatial_dims, cfg.in_channels, cfg.image_size
    )
    if stored != wanted:
        raise ConfigError(
            f"init={str(d)!r} was pretrained as {_describe(stored)}, but the requested model is "
            f"{_describe(wanted)}. Train model={c['model']!r} with "
            f"image_size={tuple(c['image_size'])} (and the run's model_kwargs), or pretrain the "
            "requested model at its size."
        )
    marker = json.loads((d / COMPLETE).read_text(encoding="utf-8"))
    return {
        "run": str(d),
        "method": str(c.get("method")),
        "weights_sha256": dict(marker.get("files", {})).get(_run.WEIGHTS),
    }


def load_init(net: nn.Module, cfg: Any) -> list[str]:
    """Fill ``net`` (built from ``cfg``, a ``TrainConfig``) with the encoder of the pretraining
    run ``cfg.init`` after :func:`check_init`; the head keeps its fresh initialisation. Returns
    the head's keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medgen.classify import _run

    d = Path(cfg.init).expanduser()
    check_init(d, cfg)
    try:
        state = load_file(str(d / _run.WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunFolderError(
            f"{d / _run.WEIGHTS}: cannot read the pretrained weights ({err}); pretrain again."
        ) from err
    fresh = _load_encoder(net, state, head=head_name(net), source=f"init={str(d)!r}")
    log.info("initialised %s from %s; fresh head %s", cfg.model, d, fresh)
    return fresh
