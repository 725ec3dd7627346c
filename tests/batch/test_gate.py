"""The memorisation gate's fast path (prepared once per worker, batch after batch) gives exactly
what :func:`~medgen.generative.synthesis_metrics.memorisation` and ``Synthesizer._to_units``
give: generation's results must not depend on it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from medgen.generative.synthesis_metrics import memorisation, memorisation_reference


@pytest.mark.parametrize("metric", ["ncc", "rmse"])
def test_prepared_reference_equals_memorisation(metric: str) -> None:
    rng = np.random.default_rng(3)
    tr, ho = rng.normal(size=(60, 32)), rng.normal(size=(25, 32))
    tp, hp = rng.normal(size=(60, 256)), rng.normal(size=(25, 256))
    sa, sp = rng.normal(size=(40, 32)), rng.normal(size=(40, 256))
    sa[:3], sp[:3] = tr[[5, 6, 7]], tp[[5, 6, 7]] * 3 - 1  # copies (NCC: up to a linear change)
    sp[4] = 0.0  # a constant image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer held-out images than 1 / quantile
        ref = memorisation_reference(tr, ho, train_pixels=tp, holdout_pixels=hp,
                                     quantile=0.05, pixel_metric=metric)  # fmt: skip
        for lo in range(0, 40, 16):
            whole = memorisation(tr, sa[lo : lo + 16], ho, train_pixels=tp, quantile=0.05,
                                 sample_pixels=sp[lo : lo + 16], holdout_pixels=hp,
                                 pixel_metric=metric)  # fmt: skip
            fast = ref.query(sa[lo : lo + 16], sp[lo : lo + 16])
            pd.testing.assert_frame_equal(fast, whole, check_exact=True)
            assert fast.attrs == whole.attrs
    first = ref.query(sa[:16], sp[:16])
    assert first["near_copy"].iloc[:3].all() and first["pixel_train_index"].iloc[:3].tolist() == [5, 6, 7]  # fmt: skip


def test_batched_unit_scaling_equals_the_per_image_loop() -> None:
    import torch

    from medgen.generative._synth_eval import result_units
    from medgen.generative.synthesis import SynthesisResult, Synthesizer

    syn = Synthesizer("vae-gan", ("label",), image_size=(16, 16), channels=(4, 8))
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(size=(9, 1, 16, 16)) * 300 + 40,  # CT-like units
        rng.gamma(2.0, size=(5, 1, 16, 16)),
        np.zeros((2, 1, 16, 16)),  # flat: high = low + 1
        rng.integers(0, 3, size=(4, 1, 16, 16)),
    ]
    for b in batches:
        images = torch.from_numpy(b.astype(np.float32))
        res = SynthesisResult(
            images=images, conditions=pd.DataFrame({"label": [0] * len(b)}), seed=0
        )
        loop, _ = syn._to_units(images, "samples")
        fast = result_units(syn, res)
        assert fast.dtype == loop.dtype and torch.equal(fast, loop)
