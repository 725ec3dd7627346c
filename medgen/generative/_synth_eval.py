"""Evaluation and the memorisation gate of :class:`medgen.generative.synthesis.Synthesizer`.

Private: the public entry points are :meth:`Synthesizer.evaluate`,
:meth:`Synthesizer.memorisation_gate` and the ``reference=`` / ``allow_copies=`` options of
:meth:`Synthesizer.sample` and :meth:`Synthesizer.write` (docs/synthesis.md).

- **Features** (FID, KID, PRDC, feature-space memorisation): the synthesizer's own encoder, which
  was trained on the real train split only and is saved and hashed with the run
  (``weights_sha256``): the posterior mean of the latent, average-pooled to at most
  :data:`POOL` cells per axis (8 in 2D, 4 in 3D: at most 64 cells per latent channel either
  way) and flattened. Every image (real or generated) is first put in unit intensities by its
  own robust range, exactly as in training. In 3D, 8 cells per axis would give 512 per channel:
  far more dimensions than images (a singular covariance for FID) and an ``O(D^3)`` matrix
  square root (minutes per table with a 3-channel latent).
- **Classifiers** (conditioning fidelity, TSTR): a small MONAI ``DenseNet`` (the demo's:
  init_features 16, growth rate 8, blocks (2, 2, 2)) giving a 64-d embedding, with one linear
  head per condition, trained for ``classifier_epochs`` with a fixed seed: a deterministic
  function of (images, conditions, seed); its weights' SHA-256 is recorded in the evaluation's
  provenance. Adam with cosine decay and random left-right flips: on the demo cohort it reaches
  label AUC 0.83 on real held-out images after 20 epochs (0.73 without the decay and flips; the
  first version, three strided convolutions with average pooling, reached 0.48-0.62 and
  predicted one class, which capped every fidelity and TSTR figure; docs/synthesis.md).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medgen.errors import MedgenValueError

if TYPE_CHECKING:
    import torch

    from medgen.generative.synthesis import SynthesisResult, Synthesizer

log = logging.getLogger(__name__)

__all__ = ["MemorisationGate", "SynthesisEvaluation", "build_gate", "evaluate"]

#: the encoder features are the latent mean pooled to at most this many cells per axis, by
#: spatial_dims (the same 64 cells per channel in 2D and 3D)
POOL = {2: 8, 3: 4}
#: the evaluation classifier's MONAI DenseNet: (init_features, growth_rate, block_config)
CLASSIFIER_DENSENET = (16, 8, (2, 2, 2))
#: width of its embedding, the input of the per-condition heads
CLASSIFIER_EMBEDDING = 64
#: why a mask-conditioned model's evaluation reads the held-out and train rows' masks
MASKED_RECONSTRUCTION = "a mask-conditioned model reconstructs each image under its lesion mask"


# ------------------------------------------------------------------------------------ images
def load_units(syn: Synthesizer, df: pd.DataFrame, what: str) -> tuple[torch.Tensor, list[Any]]:
    """Images of the manifest rows ``df`` in unit intensities (``Nx1x[SPATIAL]``, model size)
    and the resized images in their own units (for the data hash)."""
    from medgen.generative.synthesis import _resize, _spatial_array
    from medgen.io import load

    sd = int(syn.options["spatial_dims"])
    arrs = []
    for row in df.to_dict("records"):
        a = _spatial_array(load(row["image_path"]), sd, f"{what}: image {row['image_id']}")
        if tuple(a.shape) != syn.image_size and not syn.options["resize"]:
            raise MedgenValueError(
                f"{what}: image {row['image_id']} has size {tuple(a.shape)}, not the model's "
                f"image_size={syn.image_size} (built with resize=False); resample it first."
            )
        arrs.append(_resize(a, syn.image_size))
    units, _ = syn._to_units(arrs, what) if arrs else (None, None)
    return units, arrs  # type: ignore[return-value]


def result_units(syn: Synthesizer, samples: SynthesisResult) -> torch.Tensor:
    """Generated images in unit intensities (each by its own robust range, as real ones).

    A batch ``Bx1x[SPATIAL]`` of the model's size (what sampling gives) is scaled in one pass:
    the same float32 values as ``Synthesizer._to_units`` image by image (the same percentiles,
    the same float32 arithmetic), without its per-image Python loop."""
    import torch

    from medgen.generative.synthesis import NORM_PERCENTILES

    images = samples.images
    size = tuple(int(s) for s in syn.image_size)
    if not (
        isinstance(images, torch.Tensor)
        and images.ndim == len(size) + 2
        and images.shape[1] == 1
        and tuple(images.shape[2:]) == size
        and len(images) > 0
    ):
        units, _ = syn._to_units(images, "samples")
        return units
    a = images.detach().cpu().float().numpy()[:, 0].astype(np.float32)
    lo32, hi32 = np.percentile(a.reshape(len(a), -1), NORM_PERCENTILES, axis=1)
    # robust_range: Python floats, high = low + 1 where the range is flat
    lo, hi = lo32.astype(np.float64), hi32.astype(np.float64)
    hi = np.where(hi > lo, hi, lo + 1.0)
    shape = (-1,) + (1,) * len(size)
    # (a - lo) / (hi - lo) with Python-float scalars: both cast to float32, float32 arithmetic
    scaled = (a - lo.astype(np.float32).reshape(shape)) / (hi - lo).astype(np.float32).reshape(
        shape
    )
    return torch.from_numpy(scaled[:, None].astype(np.float32)).to(syn.device)


def reconstruct_units(
    syn: Synthesizer, units: torch.Tensor, rows: pd.DataFrame, batch_size: int = 64
) -> torch.Tensor:
    """The model's reconstructions ``decode(posterior mean, conditions)`` of ``units`` (unit
    intensities, ``Nx1x[SPATIAL]``), each under the conditions of its manifest row in ``rows``
    (a mask-conditioned model: and under the row's own lesion mask)."""
    import torch

    from medgen.generative.synthesis import condition_index

    index = condition_index(rows[list(syn.conditions)], syn.conditions, syn.vocabulary)
    masks = None
    if "mask_bank" in syn.nets:
        masks = torch.from_numpy(
            syn._row_masks(rows, "evaluate", because=MASKED_RECONSTRUCTION)[0][:, None]
        )
    ae: Any = syn.networks()["autoencoder"]
    out = []
    with torch.no_grad():
        for i in range(0, len(units), batch_size):
            x = units[i : i + batch_size].to(syn.device)
            mu, _ = ae.encode(x)
            if syn.model == "ldm":
                out.append(syn._decode_units(mu * syn.scale_factor, None).cpu())
            else:
                w = syn._weights(index[i : i + batch_size], len(x))
                m = None if masks is None else masks[i : i + batch_size]
                out.append(syn._decode_units(mu, w, m).cpu())
    return torch.cat(out) if out else units


def encoder_features(syn: Synthesizer, units: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` features: the encoder's posterior mean, average-pooled and flattened."""
    import torch

    ae: Any = syn.networks()["autoencoder"]
    sd = int(syn.options["spatial_dims"])
    pool = (
        torch.nn.functional.adaptive_avg_pool2d
        if sd == 2
        else torch.nn.functional.adaptive_avg_pool3d
    )
    out = []
    with torch.no_grad():
        for i in range(0, len(units), batch_size):
            mu, _ = ae.encode(units[i : i + batch_size].to(syn.device))
            size = tuple(min(POOL[sd], s) for s in mu.shape[2:])
            out.append(pool(mu, size).flatten(1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


# ------------------------------------------------------------------------------------ gate
@dataclass
class MemorisationGate:
    """The training and held-out images a sample is compared with (see docs/synthesis.md).

    Attributes:
        train_ids: ``image_id`` of each training image (the model's train split).
        train_features, holdout_features: encoder features ``(N, D)``.
        train_pixels, holdout_pixels: unit-intensity images ``(N, voxels)``.
        quantile: the share of held-out images the threshold lets through.
        reference: where the images came from (a manifest path or ``"<Cohort>"``).
    """

    train_ids: list[str]
    train_features: np.ndarray = field(repr=False)
    train_pixels: np.ndarray = field(repr=False)
    holdout_features: np.ndarray = field(repr=False)
    holdout_pixels: np.ndarray = field(repr=False)
    quantile: float = 0.01
    reference: str = ""
    _prepared: Any = field(default=None, init=False, repr=False, compare=False)

    def check(self, syn: Synthesizer, samples: SynthesisResult) -> pd.DataFrame:
        """:func:`~medgen.generative.synthesis_metrics.memorisation` of ``samples`` (feature
        and pixel space, NCC), plus ``nearest_train_id``; indexed ``sample``."""
        units = result_units(syn, samples)
        return self.check_units(syn, units)

    def prepared(self) -> Any:
        """The training and held-out side of the gate's
        :func:`~medgen.generative.synthesis_metrics.memorisation`, prepared once per gate (the
        neighbour searches of the training features and unit-normalised training images, the
        held-out distances): each check then searches for its samples alone, with the same
        results as ``memorisation`` on the full arrays."""
        if self._prepared is None:
            import warnings

            from medgen.errors import MetricWarning
            from medgen.generative.synthesis_metrics import memorisation_reference

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricWarning)  # logged once in build_gate
                self._prepared = memorisation_reference(
                    self.train_features,
                    self.holdout_features,
                    train_pixels=self.train_pixels,
                    holdout_pixels=self.holdout_pixels,
                    quantile=self.quantile,
                )
        return self._prepared

    def check_units(self, syn: Synthesizer, units: torch.Tensor) -> pd.DataFrame:
        """The gate's table of samples already in unit intensities (``Bx1x[SPATIAL]``)."""
        import warnings

        from medgen.errors import MetricWarning

        feats = encoder_features(syn, units)
        reference = self.prepared()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)  # logged once in build_gate
            memo = reference.query(feats, units.flatten(1).numpy().astype(np.float64))
        ids = np.asarray(self.train_ids, dtype=object)
        memo["nearest_train_id"] = ids[memo["pixel_train_index"].to_numpy()]
        memo.attrs["reference"] = self.reference
        return memo


def _reference_name(cohort: Any) -> str:
    from pathlib import Path

    if isinstance(cohort, str) or hasattr(cohort, "__fspath__"):
        return str(Path(cohort).expanduser().resolve())
    hist = getattr(cohort, "history", ())
    name = str(hist[0].get("manifest", "<Cohort>")) if hist else "<Cohort>"
    return name if name.startswith("<") else str(Path(name).expanduser().resolve())


def build_gate(syn: Synthesizer, cohort: Any, *, quantile: float = 0.01) -> MemorisationGate:
    """The gate of ``syn`` from ``cohort``: its train split (checked against the model's data
    hash) and its other rows (val and test: the held-out reference)."""
    from medgen.generative.synthesis import _as_cohort

    c = _as_cohort(cohort)
    df = c.df
    train = df[df["split"] == "train"].reset_index(drop=True)
    hold = df[(df["split"] != "train") & (df["source"].astype(str) != "synthetic")]
    hold = hold.reset_index(drop=True)
    name = _reference_name(cohort)
    if len(train) == 0 or len(hold) == 0:
        raise MedgenValueError(
            f"memorisation gate: {name} has {len(train)} train and {len(hold)} held-out (val/test) "
            "real (not synthetic) rows; the gate needs both: the model's training images and images of subjects "
            "it never saw. Pass reference= the cohort the model was trained on."
        )
    tu, tarrs = load_units(syn, train, "memorisation gate")
    if syn.data_hash is not None and syn.vocabulary:
        digest = data_hash(syn, train, tarrs)
        if digest != syn.data_hash:
            raise MedgenValueError(
                f"memorisation gate: the train split of {name} is not the data this model was "
                "trained on (its data hash differs); pass reference= the training cohort, "
                "unchanged."
            )
    hu, _ = load_units(syn, hold, "memorisation gate")
    if len(hold) < 1.0 / quantile:
        log.warning(
            "memorisation gate: %d held-out images < 1 / quantile = %g; the near-copy "
            "threshold is set by the closest held-out image or two",
            len(hold),
            1.0 / quantile,
        )
    return MemorisationGate(
        train_ids=[str(i) for i in train["image_id"]],
        train_features=encoder_features(syn, tu),
        train_pixels=tu.flatten(1).numpy().astype(np.float64),
        holdout_features=encoder_features(syn, hu),
        holdout_pixels=hu.flatten(1).numpy().astype(np.float64),
        quantile=float(quantile),
        reference=name,
    )


def data_hash(syn: Synthesizer, df: pd.DataFrame, arrs: Sequence[np.ndarray]) -> str:
    """The training-data hash of :meth:`Synthesizer._training_data` for rows ``df``."""
    from medgen.generative.synthesis import condition_index, hash_conditions, hash_image

    h = hashlib.sha256()
    for iid, arr in zip(df["image_id"].astype(str), arrs, strict=True):
        hash_image(h, iid, arr)
    try:
        index = condition_index(df, syn.conditions, syn.vocabulary)
    except KeyError:
        return ""
    hash_conditions(h, syn.vocabulary, index)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ classifiers
class _Classifier:
    """A small MONAI ``DenseNet`` embedding with one linear head per condition."""

    def __init__(self, spatial_dims: int, heads: dict[str, int]) -> None:
        from monai.networks.nets import DenseNet
        from torch import nn

        init_features, growth_rate, blocks = CLASSIFIER_DENSENET
        self.body = DenseNet(
            spatial_dims=spatial_dims,
            in_channels=1,
            out_channels=CLASSIFIER_EMBEDDING,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=blocks,
        )
        self.heads = nn.ModuleDict(
            {k: nn.Linear(CLASSIFIER_EMBEDDING, v) for k, v in heads.items()}
        )
        self.net = nn.ModuleDict({"body": self.body, "heads": self.heads})

    def fit(
        self, x: torch.Tensor, targets: dict[str, np.ndarray], *, epochs: int, seed: int
    ) -> _Classifier:
        import torch

        gen = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3)
        y = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in targets.items()}
        n = len(x)
        bs = min(16, n)
        # cosine decay to 0 over all steps, and random left-right flips (anatomy, lesions and
        # the conditions are unchanged by them): label AUC 0.73 -> 0.83 on the demo cohort's
        # real held-out images at 20 epochs (docs/synthesis.md)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, int(epochs) * (n // bs))
        )
        self.net.train()
        for _ in range(int(epochs)):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):
                idx = order[i : i + bs]
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = x[idx]
                xb = torch.where(
                    flip.view(-1, *([1] * (xb.ndim - 1))).to(xb.device), xb.flip(-1), xb
                )
                h = self.body(xb)
                loss = sum(
                    torch.nn.functional.cross_entropy(self.heads[k](h), y[k][idx]) for k in y
                )
                opt.zero_grad()
                loss.backward()  # type: ignore[union-attr]
                opt.step()
                sched.step()
        self.net.eval()
        return self

    def embed(self, x: torch.Tensor) -> np.ndarray:
        """The 64-d embeddings ``N x 64`` (the heads' input)."""
        import torch

        with torch.no_grad():
            return torch.cat([self.body(x[i : i + 64]) for i in range(0, len(x), 64)]).numpy()

    def predict(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Softmax probabilities per head, ``(N, V_k)``."""
        import torch

        with torch.no_grad():
            h = torch.cat([self.body(x[i : i + 64]) for i in range(0, len(x), 64)])
            return {k: torch.softmax(head(h), 1).numpy() for k, head in self.heads.items()}

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for key, value in sorted(self.net.state_dict().items()):
            t = value.detach().cpu().contiguous()
            h.update(f"{key}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def train_classifier(
    x: torch.Tensor,
    targets: dict[str, np.ndarray],
    heads: dict[str, int],
    *,
    spatial_dims: int,
    epochs: int,
    seed: int,
) -> _Classifier:
    """A classifier trained deterministically (network built and trained under ``seed``)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        clf = _Classifier(spatial_dims, heads)
        return clf.fit(x, targets, epochs=epochs, seed=seed)


def _codes(syn: Synthesizer, values: Sequence[Any], col: str) -> np.ndarray:
    return np.array([syn._value_index(col, v) for v in values], dtype=np.int64)


def _auc_acc(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    acc = float((p.argmax(1) == y).mean())
    present = np.unique(y)
    if len(present) < 2:
        return float("nan"), acc
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1])), acc
    try:
        return float(roc_auc_score(y, p, multi_class="ovr", labels=list(range(p.shape[1])))), acc
    except ValueError:
        return float("nan"), acc


# ------------------------------------------------------------------------------------ result
@dataclass
class SynthesisEvaluation:
    """What :meth:`Synthesizer.evaluate` measured: tidy tables with named indexes.

    Attributes:
        quality: :func:`~medgen.generative.synthesis_metrics.quality_table`, indexed
            ``(attribute, group)``: FID, KID, precision, recall, density, coverage and each
            ``*_floor`` (real vs real, same n).
        fidelity: indexed ``(condition, value)`` (value ``"overall"`` first): ``n``,
            ``accuracy``, ``auc`` of the real-trained classifier on samples conditioned on the
            value, and ``accuracy_real``, ``auc_real`` on real held-out images (the ceiling).
        tstr: indexed ``train_on`` (``real``, ``synthetic``): ``n_train``, ``n_test``, ``auc``,
            ``accuracy`` of the target on the real test images.
        near_copies: :func:`~medgen.generative.synthesis_metrics.count_near_copies` per
            subgroup, indexed ``(attribute, group)``.
        memorisation: the per-sample table of the gate, indexed ``sample``.
        provenance: model id, extractor and classifier hashes, seeds, sizes.
        figures: arrays the report draws (sample grids, interpolation strip, distances).
        quality_classifier: ``quality`` again on another extractor, the real-trained
            classifier's 64-d embedding: a cross-check that does not share the generator's
            encoder (and so its blind spots).
    """

    quality: pd.DataFrame
    fidelity: pd.DataFrame
    tstr: pd.DataFrame
    near_copies: pd.DataFrame
    memorisation: pd.DataFrame
    provenance: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict, repr=False)
    quality_classifier: pd.DataFrame = field(default_factory=pd.DataFrame)

    TABLES = ("quality", "quality_classifier", "fidelity", "tstr", "near_copies", "memorisation")

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by name (the CSV files of :meth:`to_csv`)."""
        return {name: getattr(self, name) for name in self.TABLES}

    def to_csv(self, directory: Any) -> list[Any]:
        """Write each table as ``<name>.csv`` (atomically) into ``directory``; return the paths."""
        from pathlib import Path

        from medgen._internal.files import write_table

        d = Path(directory).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return [
            write_table(t.reset_index(), d / f"{name}.csv", what=f"{name} table")
            for name, t in self.tables().items()
        ]

    def to_html(self, path: Any = None, *, images: bool = True) -> str:
        """The self-contained HTML page (tables, sample grids per condition, interpolation
        strip, memorisation histogram; figures as base64 PNG). Written atomically to ``path``
        when given; returns the HTML."""
        from medgen.generative._synth_report import render

        return render(self, path, images=images)

    def _repr_html_(self) -> str:
        return self.to_html(images=False)

    def __repr__(self) -> str:
        p = self.provenance
        return (
            f"SynthesisEvaluation(model={p.get('model_id')!r}, samples={p.get('n_samples')}, "
            f"near_copies={int(self.memorisation['near_copy'].sum())})"
        )


# ------------------------------------------------------------------------------------ evaluate
def _check_positive(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise MedgenValueError(f"evaluate: {name} must be a positive integer, not {value!r}.")


def evaluate(
    syn: Synthesizer,
    cohort: Any,
    *,
    n: int | None = None,
    by: str | Sequence[str] | None = None,
    target: str | None = "label",
    seed: int = 0,
    classifier_epochs: int = 10,
    kid_subsets: int = 100,
    k: int = 5,
    quantile: float = 0.01,
    figures: bool = True,
) -> SynthesisEvaluation:
    """See :meth:`Synthesizer.evaluate`."""
    import torch

    from medgen.generative.synthesis import _as_cohort
    from medgen.generative.synthesis_metrics import count_near_copies, quality_table

    syn._check_trained("evaluate")
    _check_positive(n, "n", allow_none=True)
    _check_positive(classifier_epochs, "classifier_epochs")
    conds = list(syn.conditions)
    cols = conds if by is None else ([by] if isinstance(by, str) else list(by))
    syn._check_columns(cols, "evaluate(by=...)")
    if target is not None and target not in conds:
        raise MedgenValueError(
            f"evaluate: target {target!r} is not a condition of this model (conditions: "
            f"{conds}); TSTR needs samples that carry the target. Pass target= one of them or "
            "target=None to skip TSTR."
        )
    c = _as_cohort(cohort)
    df = c.df
    missing = [col for col in conds if col not in df.columns]
    if missing:
        raise MedgenValueError(
            f"evaluate: the cohort has no column(s) {missing}; it must carry the model's "
            f"conditions {conds}."
        )
    real = df[df["source"].astype(str) != "synthetic"]  # real or simulated
    train = df[df["split"] == "train"].reset_index(drop=True)  # what the model trained on
    hold = real[real["split"] != "train"].reset_index(drop=True)
    test = hold[hold["split"] == "test"].reset_index(drop=True)
    if len(test) == 0:
        test = hold
    if len(hold) < 2:
        raise MedgenValueError(
            f"evaluate: the cohort has {len(hold)} held-out (val/test) real image(s); the real "
            "reference needs at least 2 (better: dozens per subgroup). Assign splits with "
            "cohort.split(...)."
        )
    for col in conds:  # every held-out value must be known to the model
        for v in pd.unique(hold[col]):
            syn._value_index(col, v)

    gate = build_gate(syn, c, quantile=quantile)
    hold_units, _ = load_units(syn, hold, "evaluate")
    train_units = torch.from_numpy(gate.train_pixels.astype(np.float32)).reshape(
        len(train), 1, *syn.image_size
    )
    # samples conditioned like the held-out rows
    rng = np.random.default_rng([int(seed), 21])
    if n is None:
        pick = np.arange(len(hold))
    else:
        pick = np.sort(rng.choice(len(hold), int(n), replace=int(n) > len(hold)))
    where = hold.loc[pick, conds].reset_index(drop=True)
    samples = syn.sample(None, where, seed=int(seed))
    s_units = result_units(syn, samples)
    s_feat = encoder_features(syn, s_units)
    h_feat = gate.holdout_features

    # quality per subgroup
    real_groups = hold[cols].astype(str).reset_index(drop=True)
    fake_groups = samples.conditions[cols].astype(str).reset_index(drop=True)
    quality = quality_table(
        h_feat, s_feat, real_groups=real_groups, fake_groups=fake_groups, by=cols,
        kid_subsets=kid_subsets, k=k, seed=int(seed),
    )  # fmt: skip

    # conditioning fidelity: a classifier trained on real train images, one head per condition
    sd = int(syn.options["spatial_dims"])
    heads = {col: len(syn.vocabulary[col]) for col in conds}
    y_train = {col: _codes(syn, train[col].tolist(), col) for col in conds}
    clf_real = train_classifier(
        train_units, y_train, heads, spatial_dims=sd, epochs=classifier_epochs, seed=seed
    )
    p_fake = clf_real.predict(s_units)
    p_hold = clf_real.predict(hold_units)
    # the same classifier on the model's reconstructions of the held-out images (under their
    # own conditions): what the autoencoder keeps of each condition, before any sampling
    p_rec = clf_real.predict(reconstruct_units(syn, hold_units, hold))
    quality_clf = quality_table(
        clf_real.embed(hold_units), clf_real.embed(s_units), real_groups=real_groups,
        fake_groups=fake_groups, by=cols, kid_subsets=kid_subsets, k=k, seed=int(seed),
    )  # fmt: skip
    fid_rows = []
    for col in conds:
        y_f = _codes(syn, samples.conditions[col].tolist(), col)
        y_h = _codes(syn, hold[col].tolist(), col)
        values = ["overall", *[str(v) for v in syn.vocabulary[col]]]
        masks_f = [np.ones(len(y_f), bool), *[y_f == j for j in range(heads[col])]]
        masks_h = [np.ones(len(y_h), bool), *[y_h == j for j in range(heads[col])]]
        auc_f, acc_f = _auc_acc(y_f, p_fake[col])
        auc_h, acc_h = _auc_acc(y_h, p_hold[col])
        auc_rc, acc_rc = _auc_acc(y_h, p_rec[col])
        for j, (value, mf, mh) in enumerate(zip(values, masks_f, masks_h, strict=True)):
            if j == 0:
                rec = {"n": int(mf.sum()), "accuracy": acc_f, "auc": auc_f}
                rec.update({"n_real": int(mh.sum()), "accuracy_real": acc_h, "auc_real": auc_h})
                rec.update({"accuracy_reconstruction": acc_rc, "auc_reconstruction": auc_rc})
            else:
                rec = {
                    "n": int(mf.sum()),
                    "accuracy": float((p_fake[col][mf].argmax(1) == j - 1).mean())
                    if mf.any()
                    else np.nan,
                    "auc": _ovr_auc(mf, p_fake[col][:, j - 1]),
                    "n_real": int(mh.sum()),
                    "accuracy_real": float((p_hold[col][mh].argmax(1) == j - 1).mean())
                    if mh.any()
                    else np.nan,
                    "auc_real": _ovr_auc(mh, p_hold[col][:, j - 1]),
                    "accuracy_reconstruction": float((p_rec[col][mh].argmax(1) == j - 1).mean())
                    if mh.any()
                    else np.nan,
                    "auc_reconstruction": _ovr_auc(mh, p_rec[col][:, j - 1]),
                }
            fid_rows.append(((col, value), rec))
    fidelity = pd.DataFrame(
        [r for _, r in fid_rows],
        index=pd.MultiIndex.from_tuples([i for i, _ in fid_rows], names=["condition", "value"]),
    )

    # TSTR: same classifier trained on synthetic images conditioned like the train rows
    hashes = {"classifier_real_sha256": clf_real.sha256}
    tstr_rows = []
    if target is not None:
        test_units, _ = load_units(syn, test, "evaluate")
        y_test = _codes(syn, test[target].tolist(), target)
        auc_r, acc_r = _auc_acc(y_test, clf_real.predict(test_units)[target])
        tstr_rows.append(("real", len(train), len(test), auc_r, acc_r))
        syn_train = syn.sample(None, train[conds].reset_index(drop=True), seed=int(seed) + 1)
        st_units = result_units(syn, syn_train)
        y_syn = {col: _codes(syn, syn_train.conditions[col].tolist(), col) for col in conds}
        clf_syn = train_classifier(
            st_units, y_syn, heads, spatial_dims=sd, epochs=classifier_epochs, seed=seed
        )
        auc_s, acc_s = _auc_acc(y_test, clf_syn.predict(test_units)[target])
        tstr_rows.append(("synthetic", len(syn_train), len(test), auc_s, acc_s))
        hashes["classifier_synthetic_sha256"] = clf_syn.sha256
        # and on the model's reconstructions of the train images (their own latents, decoded
        # under their own conditions): what any sampler could teach at best with this decoder,
        # so the gap to "synthetic" is the sampler's and the gap to "real" the decoder's
        rec_train = reconstruct_units(syn, train_units, train)
        clf_rec = train_classifier(
            rec_train, y_train, heads, spatial_dims=sd, epochs=classifier_epochs, seed=seed
        )
        auc_rt, acc_rt = _auc_acc(y_test, clf_rec.predict(test_units)[target])
        tstr_rows.append(("reconstructions", len(train), len(test), auc_rt, acc_rt))
        hashes["classifier_reconstruction_sha256"] = clf_rec.sha256
    tstr = pd.DataFrame(
        [
            dict(zip(("n_train", "n_test", "auc", "accuracy"), r[1:], strict=True))
            for r in tstr_rows
        ],
        index=pd.Index([r[0] for r in tstr_rows], name="train_on"),
        columns=["n_train", "n_test", "auc", "accuracy"],
    )

    # memorisation of the evaluation samples
    memo = gate.check_units(syn, s_units)
    near = count_near_copies(memo, samples.conditions.astype(str), by=cols)

    prov: dict[str, Any] = {
        "model_id": syn.model_id,
        "weights_sha256": syn.weights_sha256,
        "feature_extractor": (
            f"the synthesizer's encoder (posterior mean pooled to <= {POOL[sd]} per axis), "
            f"weights_sha256 {syn.weights_sha256}"
        ),
        "classifier": f"MONAI DenseNet {CLASSIFIER_DENSENET} -> {CLASSIFIER_EMBEDDING}-d + a head "
        "per condition, "
        f"{classifier_epochs} epochs, seed {seed}",
        **hashes,
        "reference": gate.reference,
        "n_train": len(train),
        "n_holdout": len(hold),
        "n_test": len(test),
        "n_samples": len(samples),
        "seed": int(seed),
        "target": target,
        "by": cols,
        "quantile": float(quantile),
        "k": int(k),
        "kid_subsets": int(kid_subsets),
        "memorisation_thresholds": {
            str(key): float(v) for key, v in memo.attrs.items() if str(key).endswith("_threshold")
        },
    }
    figs: dict[str, Any] = {}
    if figures:
        figs = _figure_data(syn, hold, hold_units, memo, gate, seed=int(seed))
    return SynthesisEvaluation(
        quality=quality,
        quality_classifier=quality_clf,
        fidelity=fidelity,
        tstr=tstr,
        near_copies=near,
        memorisation=memo,
        provenance=prov,
        figures=figs,
    )


def _ovr_auc(mask: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if mask.all() or not mask.any():
        return float("nan")
    return float(roc_auc_score(mask, score))


def _middle(x: np.ndarray) -> np.ndarray:
    """A 2D view of ``1x[SPATIAL]`` (3D: the middle axial slice)."""
    a = np.asarray(x)[0]
    return a if a.ndim == 2 else a[..., a.shape[-1] // 2]


def _figure_data(
    syn: Synthesizer,
    hold: pd.DataFrame,
    hold_units: torch.Tensor,
    memo: pd.DataFrame,
    gate: MemorisationGate,
    *,
    seed: int,
    per_row: int = 6,
) -> dict[str, Any]:
    """What the report draws: per condition value a row of samples (unit intensities) and a
    row of real held-out images; an interpolation strip between two held-out images; the
    nearest-training distances of samples and held-out images."""
    from medgen.generative.synthesis_metrics import _nearest, _pixel_nearest

    grids: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for col in syn.conditions:
        rows = []
        for v in syn.vocabulary[col]:
            s = syn.sample(per_row, {col: v}, seed=seed + 2)
            su = result_units(syn, s).numpy()
            real_idx = np.flatnonzero(hold[col].astype(str).to_numpy() == str(v))[:per_row]
            ru = hold_units[real_idx].numpy()
            rows.append(
                (
                    str(v),
                    np.stack([_middle(x) for x in su]),
                    np.stack([_middle(x) for x in ru]) if len(ru) else np.zeros((0, 1, 1)),
                )
            )
        grids[col] = rows
    out: dict[str, Any] = {"grids": grids}
    if len(hold) >= 2:
        i, j = 0, 1
        first = syn.conditions[0]
        other = np.flatnonzero(hold[first].astype(str).to_numpy() != str(hold[first].iloc[0]))
        if len(other):
            j = int(other[0])
        conds = hold.loc[[i, j], list(syn.conditions)].reset_index(drop=True)
        strip = syn.interpolate(hold_units[i], hold_units[j], 8, conditions=conds)
        strip_units, _ = syn._to_units(strip, "interpolation")
        out["interpolation"] = {
            "images": np.stack([_middle(x) for x in strip_units.numpy()]),
            "ends": [str(hold["image_id"].iloc[i]), str(hold["image_id"].iloc[j])],
        }
    _, hf = _nearest(gate.train_features, gate.holdout_features)
    _, hp = _pixel_nearest(gate.train_pixels, gate.holdout_pixels, "ncc")
    out["distances"] = {
        "feature": (memo["feature_distance"].to_numpy(), hf),
        "pixel": (memo["pixel_distance"].to_numpy(), hp),
        "thresholds": {
            "feature": memo.attrs.get("feature_threshold"),
            "pixel": memo.attrs.get("pixel_threshold"),
        },
    }
    return out
