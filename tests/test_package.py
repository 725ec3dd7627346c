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
