from __future__ import annotations

import subprocess
import sys

import pytest

import medgen
from medgen import errors


@pytest.mark.parametrize(
    ("exc", "builtin"),
    [
        (errors.MedgenValueError, ValueError),
        (errors.MedgenFileNotFoundError, FileNotFoundError),
        (errors.ImageReadError, ValueError),
        (errors.DicomError, ValueError),
        (errors.ManifestError, ValueError),
        (errors.ConfigError, ValueError),
        (errors.MedgenRuntimeError, RuntimeError),
    ],
)
def test_errors_subclass_builtins_and_base(exc: type, builtin: type) -> None:
    assert issubclass(exc, builtin)
    assert issubclass(exc, errors.MedgenError)


def test_lazy_public_names() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = medgen.nope  # type: ignore[attr-defined]
    assert isinstance(medgen.__version__, str)


def test_cli_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from medgen.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "assert 'torch' not in sys.modules, 'medgen --help imported torch';"
        "assert 'monai' not in sys.modules, 'medgen --help imported monai'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


ROOMS = ("apps", "audit", "batch", "classify", "cohort", "generative", "io", "simulate")


@pytest.mark.parametrize("room", ROOMS)
def test_every_public_name_of_every_room_resolves(room: str) -> None:
    module = getattr(medgen, room)
    assert room in medgen.__all__
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"medgen.{room}.__all__ names that do not resolve: {missing}"


def test_names_live_in_their_rooms() -> None:
    from medgen.apps import DemoResult, run_demo
    from medgen.cohort import Cohort, load_schema
    from medgen.io import LoadImaged, load

    assert medgen.Cohort is Cohort and medgen.cohort.Cohort is Cohort
    assert medgen.apps.run_demo is run_demo and callable(run_demo) and isinstance(DemoResult, type)
    # the loader is an io transform, re-exported by cohort for code written before the move
    assert medgen.io.LoadImaged is LoadImaged is medgen.cohort.LoadImaged
    assert LoadImaged.__module__ == "medgen.io._transforms"
    assert callable(load) and load_schema()["x-medgen"]["required_columns"]


@pytest.mark.parametrize("module", ["medgen", "medgen.apps", "medgen.cohort", "medgen.io"])
def test_importing_a_room_does_not_import_torch_or_monai(module: str) -> None:
    code = (
        f"import sys, {module};"
        f"heavy = sorted({{'torch', 'monai'}} & set(sys.modules));"
        f"assert not heavy, f'import {module} imported {{heavy}}'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
