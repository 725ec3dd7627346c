"""Every command answers bad input with one ``Error:`` line and exit code 2, never a traceback;
``--debug`` / ``MEDGEN_DEBUG=1`` bring the traceback back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medgen.cli import app


@pytest.fixture()
def bad(tmp_path: Path) -> dict[str, Path]:
    """Files a new user gets wrong: empty, binary, damaged model folders."""
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("image_id,image_path\n")
    run = tmp_path / "damaged_run"
    run.mkdir()
    (run / "config.json").write_text("{ not json")
    (run / "model.safetensors").write_bytes(b"\x00garbage")
    half = tmp_path / "half_run"
    half.mkdir()
    (half / "config.json").write_text(json.dumps({"kind": "denoise", "task": "denoise"}))
    (half / "model.safetensors").write_bytes(b"\x00garbage")
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"not a nifti")
    return {
        "empty": empty,
        "binary": binary,
        "header_only": header_only,
        "run": run,
        "half": half,
        "image": image,
        "missing": tmp_path / "missing.csv",
        "out": tmp_path / "out",
    }


CASES = {
    "info missing": ["info", "{missing}"],
    "info empty": ["info", "{empty}"],
    "info binary": ["info", "{binary}"],
    "info header only": ["info", "{header_only}"],
    "train missing": ["train", "{missing}", "-o", "{out}"],
    "train bad model": ["train", "{empty}", "-o", "{out}", "--model", "densnet"],
    "predict no run": ["predict", "{out}", "{missing}", "-o", "{out}/p.csv"],
    "predict damaged run": ["predict", "{run}", "{missing}", "-o", "{out}/p.csv"],
    "simulate bad preset": ["simulate", "--preset", "tyni", "-o", "{out}"],
    "simulate missing config": ["simulate", "--config", "{missing}", "-o", "{out}"],
    "scan missing": ["scan", "{missing}", "-o", "{out}/m.csv"],
    "audit missing": ["audit", "{missing}", "-s", "sex", "-o", "{out}/r.html"],
    "audit empty": ["audit", "{empty}", "-s", "sex", "-o", "{out}/r.html"],
    "audit binary": ["audit", "{binary}", "-s", "sex", "-o", "{out}/r.html"],
    "denoise train missing": ["denoise", "train", "{missing}", "-o", "{out}"],
    "denoise apply damaged run": ["denoise", "apply", "{run}", "{image}", "-o", "{out}"],
    "denoise apply corrupt weights": ["denoise", "apply", "{half}", "{image}", "-o", "{out}"],
    "superres apply damaged run": ["superres", "apply", "{run}", "{image}", "-o", "{out}"],
    "demo output is a file": ["demo", "-o", "{empty}"],
}


def _args(template: list[str], paths: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in template]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_exit_2(case: str, bad: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, _args(CASES[case], bad))
    out = result.output
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, out
    assert "internal error" not in errors[0]


def test_error_names_the_file(bad: dict[str, Path]) -> None:
    for case, key in (
        ("info binary", "binary"),
        ("audit empty", "empty"),
        ("predict damaged run", "run"),
    ):
        out = CliRunner().invoke(app, _args(CASES[case], bad)).output
        assert str(bad[key]) in out, (case, out)


def test_debug_shows_the_traceback(bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from medgen.errors import ManifestError

    result = CliRunner().invoke(app, ["--debug", "info", str(bad["missing"])])
    assert isinstance(result.exception, ManifestError | FileNotFoundError)
    monkeypatch.setenv("MEDGEN_DEBUG", "1")
    result = CliRunner().invoke(app, ["info", str(bad["missing"])])
    assert isinstance(result.exception, FileNotFoundError)


def test_a_bug_is_one_line_that_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import medgen.cohort

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unexpected keyword 'x'")

    monkeypatch.setattr(medgen.cohort.Cohort, "from_manifest", broken)
    result = CliRunner().invoke(app, ["info", str(tmp_path / "m.csv")])
    assert result.exit_code == 1
    assert "internal error (TypeError: unexpected keyword 'x')" in result.output
    assert "--debug" in result.output and "Traceback" not in result.output


def test_the_installed_command_prints_one_line_on_stderr(tmp_path: Path) -> None:
    env = {**os.environ, "MEDGEN_DEBUG": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "medgen.cli", "info", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: Manifest ")
    debug = subprocess.run(
        [sys.executable, "-m", "medgen.cli", "--debug", "info", str(tmp_path / "nope.csv")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(
    "case",
    [
        "scan -o onto a file in the scanned folder",
        "scan -o inside the scanned folder",
        "audit -o onto its prediction table",
        "audit --markdown onto its prediction table",
        "predict -o onto its manifest",
        "predict -o inside its run folder",
    ],
)
def test_outputs_never_land_in_or_on_their_inputs(case: str, tmp_path: Path) -> None:
    """The installed command, per writer: refused with one line, every byte left as it was."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.csv").write_text("my own notes, the only copy\n")
    preds = tmp_path / "preds.csv"
    preds.write_text("y_true,y_score,sex\n1,0.9,F\n0,0.2,M\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    args = {
        "scan -o onto a file in the scanned folder": ["scan", data, "-o", data / "manifest.csv"],
        "scan -o inside the scanned folder": ["scan", data, "-o", data / "sub" / "m.csv"],
        "audit -o onto its prediction table": ["audit", preds, "-s", "sex", "-o", preds],
        "audit --markdown onto its prediction table": [
            *("audit", preds, "-s", "sex", "-o", tmp_path / "r.html", "--markdown", preds)
        ],
        "predict -o onto its manifest": ["predict", run, preds, "-o", preds],
        "predict -o inside its run folder": ["predict", run, preds, "-o", run / "p.csv"],
    }[case]
    before = _tree(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "medgen.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "MEDGEN_DEBUG": ""},
        check=False,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "never writes over its inputs" in proc.stderr
    assert _tree(tmp_path) == before
