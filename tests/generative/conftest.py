"""Fixtures of the generative tests: small NIfTI cohorts of MNI152 slices, the tensors of a run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

#: ``write_cohort(folder, *, affine, gains)``: the manifest path
WriteCohort = Callable[..., Path]
#: ``run_tensors(engine_result)``: every network's and EMA copy's tensors by name
RunTensors = Callable[[Any], dict[str, torch.Tensor]]
#: ``simulate_counterfactual(name, n_subjects, counterfactual)``: the manifest path
SimulateCounterfactual = Callable[[str, int, Sequence[str]], Path]


@pytest.fixture(scope="session")
def simulate_counterfactual(tmp_path_factory: pytest.TempPathFactory) -> SimulateCounterfactual:
    """Simulates the ``tiny`` preset with ``n_subjects`` subjects (seed 0) into a new folder
    named after ``name``, every subject also rendered at the other values of each attribute of
    ``counterfactual``; returns the manifest path."""
    from medgen.simulate import preset, simulate

    def run(name: str, n_subjects: int, counterfactual: Sequence[str]) -> Path:
        cfg = preset("tiny")
        cfg.population.n_subjects = n_subjects
        out = tmp_path_factory.mktemp(name)
        return Path(
            simulate(cfg, out, seed=0, progress=False, counterfactual=tuple(counterfactual))
        )

    return run


@pytest.fixture(scope="session")
def write_cohort(mni_slices: np.ndarray) -> WriteCohort:
    """Writes three 3D NIfTI volumes (64x80x4: the MNI152 slices stacked, rolled by 3 voxels per
    volume and multiplied by ``gains[i]``) and their manifest (sites A, A, B) into a folder."""
    from medgen.io import save

    def write(
        folder: Path, *, affine: np.ndarray, gains: Sequence[float] = (1.0, 1.0, 1.0)
    ) -> Path:
        rows = []
        for i, gain in enumerate(gains):
            vol = np.roll(np.moveaxis(mni_slices, 0, -1), 3 * i, axis=0) * gain
            save(vol[None], folder / f"s{i}.nii.gz", affine=affine)
            rows.append(
                {
                    "image_id": f"img{i}",
                    "image_path": f"s{i}.nii.gz",
                    "subject_id": f"sub{i}",
                    "split": "train",
                    "source": "real",
                    "site": "A" if i < 2 else "B",
                }
            )
        pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
        return folder / "manifest.csv"

    return write


def _run_tensors(res: Any) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for n, net in res.networks.items():
        out.update({f"{n}.{k}": v for k, v in net.state_dict().items()})
    for n, net in res.ema.items():
        out.update({f"ema.{n}.{k}": v for k, v in net.state_dict().items()})
    return out


@pytest.fixture(scope="session")
def run_tensors() -> RunTensors:
    """The state-dict tensors of an :class:`~medgen.generative.EngineResult`'s networks and
    their EMA copies (``ema.`` prefix), to compare runs bitwise."""
    return _run_tensors
