"""``benchmarks/translation.py``'s option parsing: ``--pix2pix-set`` / ``--cyclegan-set`` values
and the row labels of pix2pix variants (the benchmark itself runs for minutes: not here)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("translation")


def test_parse_options_numbers_booleans_strings(bench: ModuleType) -> None:
    got = bench.parse_options(["cycle_weight=2", "lr_g=1e-3", "flag=False", "on=true", "x=abc"])
    assert got == {"cycle_weight": 2, "lr_g": 0.001, "flag": False, "on": True, "x": "abc"}
    assert isinstance(got["flag"], bool) and isinstance(got["cycle_weight"], int)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_options(["no_equals"])


def test_pix2pix_label_names_every_option(bench: ModuleType) -> None:
    args = argparse.Namespace(detail_sigma=None, pix2pix_set=None)
    assert bench.pix2pix_label(0.0, 0.0, None, args) == "pix2pix"
    assert (
        bench.pix2pix_label(0.0, 30.0, 0.1, args, 0.0, 5.0)
        == "pix2pix lesion=30 adv=0.1 lesion_contrast=5"
    )
    args.pix2pix_set = ["num_res_units=2"]
    assert bench.pix2pix_label(2.0, 0.0, None, args).endswith("detail=2 num_res_units=2")
