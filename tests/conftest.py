"""Shared fixtures. Tests run on CPU, single-threaded torch, in seconds, on real bundled images."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    # MEDGEN_TEST_THREADS=1 when something else holds a core: two multi-threaded torch
    # processes on 2 cores slow each other down ~10x (OpenMP workers spin for busy cores)
    torch.set_num_threads(int(os.environ.get("MEDGEN_TEST_THREADS", "2")))
