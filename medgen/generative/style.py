"""Style transfer by a reference image, learned: an AdaIN-style network conditioned on one
reference image (issue 14), and its evaluation against the simulator's counterfactual truth
beside histogram matching to the same reference
(:func:`~medgen.generative.translation.transfer_style`).

- :class:`StyleTransfer` (model kind ``"style-transfer"``): ``fit(cohort, attribute="site")``
  trains on triples of a simulated cohort's training split, ``apply(image, reference)`` gives
  the image the reference's appearance (in the image's own units), ``save`` /
  :func:`medgen.generative.load`.
- :func:`evaluate_style_transfer`: masked PSNR / SSIM and lesion contrast of the identity,
  reference histogram matching and the learned model, per test image and reference group.

Training triples (:meth:`StyleTransfer.fit`): the content ``x`` is a factual training image of
subject ``s`` at value ``a`` of ``attribute`` (e.g. a site), the reference ``r`` a factual
training image of another subject at a value ``b != a``, drawn anew every step, and the target
the counterfactual render of ``s`` at ``b`` (``simulate(..., counterfactual=("site",))``).
Every image is scaled by its own robust range (0.5th..99.5th percentile to 0..1), as
:class:`~medgen.generative.Translator` does; the output is mapped back through the content's
range. Networks and loss: :mod:`medgen.generative.objectives.reference`.

See docs/style_transfer.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenValueError
from medgen.generative._model import GenerativeModel, register_model_kind

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from medgen.generative.objectives.reference import StyleTransferConfig

__all__ = ["KIND", "TRAIN_DEFAULTS", "StyleTransfer", "evaluate_style_transfer"]

#: the registry name of :class:`StyleTransfer`
KIND = "style-transfer"
#: engine options of a fit when the caller gives none
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "steps_per_epoch": 100,
    "batch_size": 8,
    "ema_decay": 0.99,
    "device": "auto",
}


def _prepare(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scaled to its robust range, its foreground mask as float32)``."""
    from medgen.generative.translation import _scaled, foreground_mask

    u = _scaled(arr)
    return u, foreground_mask(u).astype(np.float32)


def _factual(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["counterfactual_of"].isna()]


def _check_cohort(df: pd.DataFrame, attribute: str, owner: str) -> list[Any]:
    """The sorted values of ``attribute`` among the factual rows; errors for no counterfactual
    column, a missing attribute column or a single value."""
    if "counterfactual_of" not in df.columns:
        raise MedgenValueError(
            f"{owner}: the cohort has no 'counterfactual_of' column, so there is no truth (the "
            "content's subject rendered in the reference's group) to train or score on; "
            "simulate it with counterfactual=('site',) (CLI: medgen simulate --counterfactual "
            "site)."
        )
    if not isinstance(attribute, str) or attribute not in df.columns:
        cols = [str(c) for c in df.columns]
        raise MedgenValueError(
            f"{owner}: attribute={attribute!r} is not a manifest column; its columns: {cols}."
            f"{did_you_mean(str(attribute), cols)}"
        )
    values = sorted(_factual(df)[attribute].dropna().unique().tolist(), key=str)
    if len(values) < 2:
        raise MedgenValueError(
            f"{owner}: attribute {attribute!r} has {len(values)} value(s) in the cohort "
            f"({[str(v) for v in values]}); style transfer by a reference needs at least two "
            "(e.g. two sites), so that each image has a reference of another group."
        )
    return values


def _truths(df: pd.DataFrame, factual: pd.DataFrame, attribute: str, value: Any, split: str) -> Any:
    """``factual`` rows of another value joined to their counterfactual render at ``value``."""
    from medgen.generative.translation import _counterfactual_pairs

    other = factual[factual[attribute] != value]
    return _counterfactual_pairs(df, other, {attribute: value}, split=split)


@register_model_kind(KIND)
class StyleTransfer(GenerativeModel):
    """Give an image the appearance of one reference image with a network trained on the
    simulator's counterfactual truth (AdaIN-style, Huang & Belongie 2017; see
    :mod:`medgen.generative.objectives.reference` for the network and loss).

    Args:
        options: :class:`~medgen.generative.objectives.reference.StyleTransferConfig` options
            (``channels``, ``style_channels``, ``n_quantiles``, ``patch_size``, ``l1_weight``,
            ``mse_weight``, ``adv_weight``, ...); an unknown one is an error listing them.
            ``spatial_dims`` other than 2 is refused (a 2D model).

    Attributes:
        attribute: the manifest column whose groups it learned (set by :meth:`fit`).
        values: the attribute's values it saw as references (targets) in training.
        held_out: the values kept out of training as references (:meth:`fit`'s ``held_out``).

    Example (untrained; the networks and options only):
        >>> m = StyleTransfer(channels=(4, 8), style_channels=(4,), patch_size=16)
        >>> m.config.channels, m.fitted
        ((4, 8), False)
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        from medgen.generative.objectives.reference import StyleTransferConfig

        known = [f.name for f in fields(StyleTransferConfig)]
        for key in options:
            if key not in known:
                raise ConfigError(
                    f"StyleTransfer: option {key!r} is unknown; known: {known}."
                    f"{did_you_mean(key, known)}"
                )
        self.options = dict(options)
        self.config: StyleTransferConfig = StyleTransferConfig(**self.options)
        self.attribute: str | None = None
        self.values: list[str] = []
        self.held_out: list[str] = []
        self._nets: dict[str, nn.Module] = {}
        self._build()

    def _build(self, seed: int | None = None) -> dict[str, nn.Module]:
        import torch

        from medgen.generative.objectives.reference import build_style_networks

        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            nets = build_style_networks(self.config)
        self._nets = {"generator": nets["generator"].eval()}
        return nets

    # ------------------------------------------------------------------ GenerativeModel
    def networks(self) -> dict[str, nn.Module]:
        return dict(self._nets)

    def model_config(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self.config), default=list))
        return {
            "options": out,
            "attribute": self.attribute,
            "values": self.values,
            "held_out": self.held_out,
        }

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> StyleTransfer:
        opts = dict(config.get("options") or {})
        for key in ("channels", "style_channels", "betas"):
            if key in opts:
                opts[key] = tuple(opts[key])
        obj = cls(**opts)
        obj.attribute = config.get("attribute")
        obj.values = [str(v) for v in config.get("values") or []]
        obj.held_out = [str(v) for v in config.get("held_out") or []]
        return obj

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or a load of a fitted model) trained the network."""
        return self.steps_trained > 0

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the network's tensors: names the exact model that made an output."""
        from medgen.generative.translation import _weights_sha256

        return _weights_sha256(self._nets)

    def __repr__(self) -> str:
        return (
            f"StyleTransfer(attribute={self.attribute!r}, values={self.values}, "
            f"steps_trained={self.steps_trained})"
        )

    # ------------------------------------------------------------------ fitting
    def _triples(
        self, cohort: Any, attribute: str, held_out: Sequence[Any]
    ) -> tuple[
        list[tuple[np.ndarray, ...]], dict[str, list[tuple[str, np.ndarray, np.ndarray]]], str
    ]:
        """``(pairs, references, data hash)``: pairs ``(x, x_mask, target, target_mask,
        subject, value b)`` of the training split; references by value: ``(subject, scaled,
        mask)`` of the factual training rows."""
        from medgen.generative._restorer import as_spatial
        from medgen.io import load

        df = cohort.df
        values = _check_cohort(df, attribute, "StyleTransfer.fit")
        names = [str(v) for v in values]
        bad = [str(v) for v in held_out if str(v) not in names]
        if bad:
            raise ConfigError(
                f"StyleTransfer.fit: held_out={list(held_out)} names value(s) {bad} that "
                f"{attribute!r} does not take; its values: {names}."
            )
        keep = [v for v in values if str(v) not in {str(h) for h in held_out}]
        train = df[df["split"] == "train"]
        factual = _factual(train)
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def image(path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
            if path not in cache:
                arr = as_spatial(load(path), name)[0]
                if arr.ndim != 2:
                    raise MedgenValueError(
                        f"StyleTransfer.fit: {name} is a {arr.ndim}D image of shape "
                        f"{arr.shape}; the model is 2D: train it on a cohort of 2D slices."
                    )
                cache[path] = _prepare(arr)
            return cache[path]

        h = hashlib.sha256(json.dumps([attribute, [str(v) for v in held_out]]).encode())
        refs: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for v in keep:
            rows = factual[factual[attribute] == v]
            refs[str(v)] = []
            for _, r in rows.iterrows():
                u, m = image(str(r["image_path"]), f"image {r['image_id']}")
                refs[str(v)].append((str(r["subject_id"]), u, m))
                h.update(f"r{v}|{r['subject_id']}|{u.shape}".encode())
                h.update(u.tobytes())
        pairs: list[tuple[Any, ...]] = []
        for v in keep:
            joined = _truths(df, factual, attribute, v, "train")
            for _, r in joined.iterrows():
                subject = str(r["subject_id"])
                if not any(s != subject for s, _, _ in refs[str(v)]):
                    continue
                x, xm = image(str(r["image_path"]), f"image {r['image_id']}")
                y, ym = image(str(r["truth_path"]), f"image {r['truth_id']}")
                if x.shape != y.shape:
                    raise MedgenValueError(
                        f"StyleTransfer.fit: image {r['image_id']!r} has shape {x.shape} and "
                        f"its counterfactual {r['truth_id']!r} {y.shape}; training needs "
                        "aligned pairs on one grid."
                    )
                pairs.append((x, xm, y, ym, subject, str(v)))
                h.update(f"p{r['image_id']}|{r['truth_id']}|{v}".encode())
                h.update(x.tobytes())
                h.update(y.tobytes())
        if not pairs:
            raise MedgenValueError(
                f"StyleTransfer.fit: no training triples: no training-split image has a "
                f"counterfactual render at another value of {attribute!r} (of {names}, held "
                f"out: {[str(v) for v in held_out]}) with a reference image of another subject "
                "there; simulate the cohort with counterfactual=(attribute,) and enough "
                "subjects per group."
            )
        ps = self.config.patch_size
        small = [p[0].shape for p in pairs if min(p[0].shape) < ps]
        small += [u.shape for group in refs.values() for _, u, _ in group if min(u.shape) < ps]
        if small:
            raise MedgenValueError(
                f"StyleTransfer.fit: images of shape {small[0]} are smaller than patch_size="
                f"{ps}; lower patch_size (divisible by 2**(len(channels)-1))."
            )
        return pairs, refs, h.hexdigest()

    def fit(
        self,
        cohort: Any,
        *,
        attribute: str = "site",
        held_out: Sequence[Any] = (),
        run_dir: Any = None,
        config: Any = None,
        seed: int = 0,
        progress: bool = False,
        overwrite: bool = False,
        resume: bool = False,
    ) -> StyleTransfer:
        """Train on the triples of ``cohort``'s training split (see the module docstring).

        Args:
            cohort: a :class:`~medgen.cohort.Cohort` or manifest path with counterfactual
                renders of ``attribute`` (``simulate(..., counterfactual=("site",))``).
            attribute: the manifest column whose groups are the styles (e.g. ``"site"``).
            held_out: values of ``attribute`` never used as reference or target in training
                (their images still serve as content), to measure an unseen style.
            run_dir: train there as an engine run (``checkpoint.pt``, ``train_state.json``,
                ``metrics.csv``) and save the model there; ``None``: in memory.
            config: engine options (an :class:`~medgen.generative.engine.EngineConfig` or a
                dict overriding :data:`TRAIN_DEFAULTS`, e.g. ``time_budget_s``).
            seed: seeds the weights, the batches and the reference draws (replaces the engine
                options' ``seed``).
            progress: the engine's progress bar.
            overwrite, resume: replace, or continue, the run in ``run_dir``.

        Raises:
            MedgenValueError: no ``counterfactual_of`` column; ``attribute`` is not a column
                or has one value; no training triple; images that are not 2D or smaller than
                ``patch_size``.
            ConfigError: ``held_out`` names a value the attribute does not take; ``resume``
                without ``run_dir``.
        """
        from pathlib import Path

        from medgen.cohort import Cohort
        from medgen.generative.engine import EngineConfig, fit_objective, run_objective
        from medgen.generative.objectives.reference import ReferenceStyleObjective

        if resume and run_dir is None:
            raise ConfigError("StyleTransfer.fit: resume=True needs the run_dir of the run.")
        if not isinstance(cohort, Cohort):
            cohort = Cohort.from_manifest(cohort)
        if isinstance(config, EngineConfig):
            ec = replace(config, seed=int(seed))
        else:
            ec = EngineConfig.from_dict({**TRAIN_DEFAULTS, **dict(config or {}), "seed": int(seed)})
        pairs, refs, data_hash = self._triples(cohort, attribute, held_out)
        self.attribute = attribute
        self.values = sorted(refs)
        self.held_out = [str(v) for v in held_out]
        self.data_hash = data_hash
        nets = self._build(seed=ec.seed)
        ps, bs = self.config.patch_size, int(ec.batch_size)

        def sample_batch(step: int) -> dict[str, torch.Tensor]:
            return _triple_batch(pairs, refs, bs, ps, np.random.default_rng([int(ec.seed), step]))

        objective = ReferenceStyleObjective(
            nets["generator"],
            sample_batch,
            config=self.config,
            discriminator=nets.get("discriminator"),
        )
        if run_dir is None:
            result = fit_objective(objective, config=ec, progress=progress)
        else:
            from medgen._internal.runs import run_lock
            from medgen.generative._run import OWNED, check_training, prepare_training

            rd = Path(run_dir).expanduser()
            what = "style transfer training run"
            check_training(rd, resume=resume, overwrite=overwrite, what=what)
            info = {"kind": KIND, "model": self.model_config(), "data_sha256": data_hash}
            with run_lock(rd, what=what, owned=OWNED):

                def prepare() -> None:
                    prepare_training(rd, resume=resume, overwrite=overwrite, what=what)

                early = not resume or overwrite
                if early:
                    prepare()
                result = run_objective(
                    objective,
                    config=ec,
                    run_dir=rd,
                    resume=resume,
                    run_info=json.loads(json.dumps(info, default=list)),
                    progress=progress,
                    prepare=None if early else prepare,
                )
                self._finish(result, ec)
                self._write_model(rd)
            return self
        self._finish(result, ec)
        return self

    def _finish(self, result: Any, ec: Any) -> None:
        self._nets = {"generator": result.inference_networks()["generator"].eval()}
        self.record_training(result, train_config=ec, data_hash=self.data_hash)

    @classmethod
    def train_config_from_dict(cls, d: Mapping[str, Any]) -> Any:
        from medgen.generative.engine import EngineConfig

        return EngineConfig.from_dict(d)

    # ------------------------------------------------------------------ applying
    def apply(self, image: Any, reference: Any) -> Any:
        """``image`` in the appearance of ``reference``.

        Args:
            image: a 2D one-channel MetaTensor (as :func:`medgen.io.load` gives), tensor or
                array ``(X, Y)``, in its own units (any range, CT HU included).
            reference: the image whose style to take (same kinds, 2D, any size and units).

        Returns:
            ``image``'s type and shape, float32, in ``image``'s units (scaled back through its
            robust range, within its min..max span or 0..1 of the range, whichever is wider);
            a MetaTensor keeps its affine and meta, with ``meta["translation"] = {"model":
            "style-transfer", "weights_sha256": ..., "attribute": ...}``.

        Raises:
            MedgenValueError: the model is not fitted; an image or reference that is not 2D.
        """
        import torch

        from medgen.generative._restorer import as_spatial
        from medgen.generative.translation import _as_output, robust_range

        if not self.fitted:
            raise MedgenValueError(
                "StyleTransfer.apply: the model is not fitted; call fit(cohort) first or load "
                "a fitted one with medgen.generative.load(run_dir)."
            )
        arr, _, _ = as_spatial(image, "image")
        ref, _, _ = as_spatial(reference, "reference")
        for name, a in (("image", arr), ("reference", ref)):
            if a.ndim != 2:
                raise MedgenValueError(
                    f"StyleTransfer.apply: {name} is a {a.ndim}D image of shape {a.shape}; the "
                    "model is 2D: apply it to each slice (image[..., k]) with a 2D reference."
                )
        lo, hi = robust_range(arr)
        u = ((arr - lo) / (hi - lo)).astype(np.float32)
        _, um = _prepare(arr)
        r, rm = _prepare(ref)
        k = 2 ** (len(self.config.channels) - 1)
        pads = [(0, (-s) % k) for s in u.shape]
        up = np.pad(u, pads, mode="reflect") if any(p for _, p in pads) else u
        ump = np.pad(um, pads, mode="reflect") if any(p for _, p in pads) else um
        net = self._nets["generator"]
        dev = next(net.parameters()).device

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None].to(dev)

        with torch.no_grad():
            y = net(t(up), t(ump), t(r), t(rm))[0, 0].float().cpu().numpy()
        y = y[tuple(slice(0, s) for s in u.shape)]
        low, high = min(float(u.min()), 0.0), max(float(u.max()), 1.0)
        out = (lo + np.clip(y, low, high) * (hi - lo)).astype(np.float32)
        info = {"model": KIND, "weights_sha256": self.weights_sha256, "attribute": self.attribute}
        return _as_output(image, out, info)


def _triple_batch(
    pairs: Sequence[tuple[Any, ...]],
    refs: Mapping[str, Sequence[tuple[str, np.ndarray, np.ndarray]]],
    n: int,
    patch_size: int,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """``n`` training triples: a uniform pair (content, target at value b), one window cut from
    both; a reference drawn uniformly among the value-b images of other subjects, its own
    window."""
    import torch

    cols: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("input", "input_mask", "target", "target_mask", "reference", "reference_mask")
    }
    for _ in range(int(n)):
        x, xm, y, ym, subject, value = pairs[int(rng.integers(len(pairs)))]
        starts = [int(rng.integers(s - patch_size + 1)) for s in x.shape]
        win = tuple(slice(s, s + patch_size) for s in starts)
        others = [i for i, (s, _, _) in enumerate(refs[value]) if s != subject]
        _, r, rm = refs[value][others[int(rng.integers(len(others)))]]
        rs = [int(rng.integers(s - patch_size + 1)) for s in r.shape]
        rwin = tuple(slice(s, s + patch_size) for s in rs)
        for key, a in zip(cols, (x[win], xm[win], y[win], ym[win], r[rwin], rm[rwin]), strict=True):
            cols[key].append(a)
    return {k: torch.from_numpy(np.stack(v)[:, None].astype(np.float32)) for k, v in cols.items()}


def evaluate_style_transfer(
    model: StyleTransfer | None,
    cohort: Any,
    *,
    attribute: str = "site",
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Score style transfer by a reference against the counterfactual truth of a simulated
    cohort.

    For each factual ``split`` image (subject ``s`` at value ``a`` of ``attribute``) and each
    other value ``b`` at which ``s`` has a counterfactual render (the truth), a reference is
    drawn: a factual ``split`` image of another subject at ``b`` (uniformly, a pure function of
    ``seed``, the image and ``b``). The identity (the image unchanged), ``"reference-
    histogram"`` (:func:`~medgen.generative.translation.transfer_style` to that reference) and
    the learned model (``"style-transfer"``, when ``model`` is given) are scored against the
    truth as :func:`~medgen.generative.evaluate_translation` does: each scaled to its robust
    range, masked PSNR and SSIM in the truth's foreground mask (data range 1),
    ``lesion_contrast_ratio`` (the output's lesion contrast over the truth's, NaN without
    lesions), ``psnr_lesion`` and ``psnr_outside``.

    Args:
        model: a fitted :class:`StyleTransfer`, or ``None`` for the baselines only.
        cohort: a :class:`~medgen.cohort.Cohort` or manifest path with counterfactual renders
            of ``attribute``.
        attribute: the manifest column whose groups are the styles.
        split: the split scored (images and references).
        n: score at most the first ``n`` (image, reference value) pairs.
        seed: seeds the reference draws.

    Returns:
        A tidy DataFrame, one row per (image, reference value) pair and method:
        ``image_id``, ``truth_id``, ``reference_id``, ``subject_id``, ``source_value``,
        ``reference_value``, ``method``, ``psnr``, ``ssim``, ``lesion_contrast_ratio``,
        ``psnr_lesion``, ``psnr_outside`` and the subgroup columns (``sex``, ``age_group``,
        ``label``) the manifest has.

    Raises:
        MedgenValueError: no ``counterfactual_of`` column, ``attribute`` missing or with one
            value, no pair to score, ``n`` not positive; ``model`` not fitted.
        ConfigError: ``model`` is not a :class:`StyleTransfer`.
    """
    import pandas as pd

    from medgen.cohort import Cohort
    from medgen.generative._restorer import as_spatial
    from medgen.generative.translation import _load_mask, _TruthScorer, transfer_style
    from medgen.io import load

    owner = "evaluate_style_transfer"
    if model is not None and not isinstance(model, StyleTransfer):
        raise ConfigError(f"{owner}: model must be a StyleTransfer or None, not {model!r}.")
    if model is not None and not model.fitted:
        raise MedgenValueError(f"{owner}: the model is not fitted; call fit(cohort) first.")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise MedgenValueError(f"{owner}: n must be a positive integer, not {n!r}.")
    if not isinstance(cohort, Cohort):
        cohort = Cohort.from_manifest(cohort)
    df = cohort.df
    values = _check_cohort(df, attribute, owner)
    factual = _factual(df[df["split"] == split])
    jobs: list[tuple[Any, Any, Any]] = []  # (pair row, value index, reference row)
    for j, v in enumerate(values):
        joined = _truths(df, factual, attribute, v, split)
        pool = factual[factual[attribute] == v]
        for _, row in joined.iterrows():
            others = pool[pool["subject_id"] != row["subject_id"]]
            if others.empty:
                continue
            key = int(hashlib.sha256(str(row["image_id"]).encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng([int(seed), key, j])
            jobs.append((row, j, others.iloc[int(rng.integers(len(others)))]))
    if not jobs:
        raise MedgenValueError(
            f"{owner}: no {split!r}-split image has a counterfactual render at another value "
            f"of {attribute!r} with a reference of another subject there; simulate the cohort "
            f"with counterfactual=({attribute!r},)."
        )
    order = {iid: i for i, iid in enumerate(factual["image_id"])}
    jobs.sort(key=lambda t: (order[t[0]["image_id"]], t[1]))
    if n is not None:
        jobs = jobs[:n]
    groups = [c for c in ("sex", "age_group", "label") if c in df.columns and c != attribute]
    out = []
    for row, j, ref_row in jobs:
        x = as_spatial(load(row["image_path"]), str(row["image_id"]))[0]
        ref = as_spatial(load(ref_row["image_path"]), str(ref_row["image_id"]))[0]
        truth_raw = as_spatial(load(row["truth_path"]), str(row["truth_id"]))[0]
        src_lesion = _load_mask(row.get("mask_path"))
        lesion = _load_mask(row.get("truth_mask_path"))
        scorer = _TruthScorer(truth_raw, src_lesion, src_lesion if lesion is None else lesion)
        methods: list[tuple[str, np.ndarray]] = [
            ("identity", x),
            ("reference-histogram", np.asarray(transfer_style(x, ref))),
        ]
        if model is not None:
            methods.append((KIND, np.asarray(model.apply(x, ref))))
        base = {
            "image_id": row["image_id"],
            "truth_id": row["truth_id"],
            "reference_id": ref_row["image_id"],
            "subject_id": row["subject_id"],
            "source_value": row[attribute],
            "reference_value": values[j],
        }
        for method, raw in methods:
            out.append(
                {**base, "method": method, **scorer.score(raw), **{g: row[g] for g in groups}}
            )
    return pd.DataFrame(out)
