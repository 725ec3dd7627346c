"""Shared fixtures. Tests run on CPU, single-threaded torch, in seconds, on real bundled images."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# pseudonyms are keyed by a project secret (docs/privacy.md): tests use their own, never the
# user's ~/.config/medgen one; subprocesses of CLI tests inherit it
os.environ.setdefault("MEDGEN_PROJECT_SECRET", "medgen-test-suite-secret")


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """A loader of ``benchmarks/<name>.py`` as the module ``<name>_benchmark`` (the scripts are
    not a package); registered in ``sys.modules``, where dataclasses resolve their module."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    # MEDGEN_TEST_THREADS=1 when something else holds a core: two multi-threaded torch
    # processes on 2 cores slow each other down ~10x (OpenMP workers spin for busy cores)
    torch.set_num_threads(int(os.environ.get("MEDGEN_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def mni() -> np.ndarray:
    """nilearn's MNI152 T1 template at 2 mm, float32, in its own units: ``(91, 109, 91)``."""
    from nilearn.datasets import load_mni152_template

    return np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)


@pytest.fixture(scope="session")
def mni_slices(mni: np.ndarray) -> np.ndarray:
    """Four axial MNI152 slices (2 mm), cropped to 64x80, intensities 0..1: ``(4, 64, 80)``."""
    vol = mni / mni.max()
    cx, cy = vol.shape[0] // 2, vol.shape[1] // 2
    return np.stack([vol[cx - 32 : cx + 32, cy - 40 : cy + 40, z] for z in (40, 45, 50, 55)])


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's ``tiny`` preset (seed 0) written once: the path of its ``manifest.csv``.

    Shared by the simulate and classify tests; read it, never write into its folder (copy first).
    """
    from medgen.simulate import preset, simulate

    return simulate(preset("tiny"), tmp_path_factory.mktemp("tiny"), seed=0, progress=False)
