"""Every docstring example in the package runs (STYLE.md item 5), found by walking the source.

Modules are listed by reading their files, not by importing them, so collection stays fast and a
module whose examples would be skipped by a broken import fails here instead of going unnoticed.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medgen"

#: the rooms whose public API must show at least one runnable example
ROOMS = ("io", "cohort", "simulate", "generative", "classify", "audit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules_with_examples() -> list[str]:
    return sorted(
        _module_name(p)
        for p in PACKAGE.rglob("*.py")
        if ">>>" in p.read_text(encoding="utf-8") and "__pycache__" not in p.parts
    )


MODULES = _modules_with_examples()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name}: '>>>' in the source but no example was collected"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_has_examples(room: str) -> None:
    assert any(m == f"medgen.{room}" or m.startswith(f"medgen.{room}.") for m in MODULES), (
        f"medgen.{room} has no docstring example; add one to its public API"
    )


def test_architecture_example_runs() -> None:
    """docs/architecture.md's smallest objective is real code."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/architecture.md lost its example"
    for block in blocks:
        exec(compile(block, "docs/architecture.md", "exec"), {"__name__": "architecture_example"})
