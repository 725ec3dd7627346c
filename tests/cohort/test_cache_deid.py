"""Cohort datasets and their caches hold no source header values (docs/privacy.md).

The source is the fully identified series of tests/io/test_deid_outputs.py (every PS3.15 Annex E
basic-profile attribute set); its cache files are searched byte by byte for the identifying text
and the source UIDs.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from monai.transforms import MapTransform

from medgen._internal.deid import ANNEX_E_BASIC_PROFILE, RETAIN_OPTIONS
from medgen.cohort import Cohort

_spec = importlib.util.spec_from_file_location(
    "_deid_outputs", Path(__file__).resolve().parents[1] / "io" / "test_deid_outputs.py"
)
assert _spec is not None and _spec.loader is not None
_deid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_deid)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _deid.write_profile_series(tmp_path_factory.mktemp("identified") / "series")


def _cohort(src: dict[str, Any]) -> Cohort:
    folder = src["paths"][0].parent
    df = pd.DataFrame(
        {
            "image_id": ["ct"],
            "image_path": [str(folder)],
            "subject_id": ["sub-a1"],
            "split": ["train"],
            "source": ["real"],
            "label": [1],
        }
    )
    return Cohort.from_manifest(df)


def _assert_clean_meta(meta: Mapping[str, Any], retain: tuple[str, ...] = ()) -> None:
    allowed = {kw for r in retain for kw in RETAIN_OPTIONS[r]}
    leaked = sorted(k for k in meta if k in ANNEX_E_BASIC_PROFILE and k not in allowed)
    assert leaked == []
    assert "descrip" not in meta
    for value in meta.values():
        text = str(value)
        assert not any(s in text for s in _deid.FORBIDDEN), text


def test_disk_cache_files_hold_no_source_header_values(
    source: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    item = _cohort(source).dataset(cache="disk", cache_dir=cache)[0]
    img = item["image"]
    assert tuple(img.shape) == (1, 128, 128, 3)
    _assert_clean_meta(img.meta)
    assert img.meta["Modality"] == "CT" and img.meta["spacing"][2] == pytest.approx(5.0)
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert [p.suffix for p in files] == [".mgc"]
    _deid.assert_no_source_bytes(files, source)
    # a warm read gives the same de-identified item
    warm = _cohort(source).dataset(cache="disk", cache_dir=cache)[0]["image"]
    assert sorted(map(str, warm.meta)) == sorted(map(str, img.meta))


@pytest.mark.parametrize("cache", [None, "memory"])
def test_uncached_and_memory_items_hold_no_source_header_values(
    source: dict[str, Any], cache: str | None
) -> None:
    item = _cohort(source).dataset(cache=cache)[0]  # type: ignore[arg-type]
    _assert_clean_meta(item["image"].meta)
    assert item["subject_id"] == "sub-a1"


def test_retain_options_reach_the_items(source: dict[str, Any]) -> None:
    from medgen.cohort._dataset import build_dataset

    cohort = _cohort(source)
    ds = build_dataset(
        cohort.records(),
        None,
        cache=None,
        cache_dir=None,
        keys=("image",),
        spatial_dims=None,
        retain=["patient_characteristics"],
    )
    meta = ds[0]["image"].meta
    assert meta["PatientSex"] == "F" and meta["PatientAge"] == "045Y"
    _assert_clean_meta(meta, ("patient_characteristics",))


class _PutIdentityBack(MapTransform):
    """A (careless) deterministic transform that copies header fields back into the meta."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key].meta["PatientName"] = "Smith^John"
            d[key].meta["ImageComments"] = _deid.TEXT
        return d


def test_cache_strips_identity_a_transform_puts_back(
    source: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="medgen.cohort._cache"):
        item = _cohort(source).dataset(
            _PutIdentityBack(keys="image"), cache="disk", cache_dir=cache
        )[0]
    assert "['ImageComments', 'PatientName']" in caplog.text and "not cached" in caplog.text
    assert "PatientName" not in item["image"].meta
    _deid.assert_no_source_bytes(list(cache.glob("*.mgc")), source)
