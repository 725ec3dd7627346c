"""Lazy public names (so ``import medgen`` and ``medgen --help`` stay instant) and optional
imports that name the extra to install (STYLE.md item 8)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from medgen.errors import MissingDependencyError

__all__ = ["lazy_attributes", "optional_import"]


def lazy_attributes(
    package: str, where: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package whose names live in submodules.

    Args:
        package: the package's ``__name__`` (for the error message).
        where: public name -> the module that defines it, imported on first access.
        public: the package's ``__all__``.

    Example:
        >>> getattr_, dir_ = lazy_attributes("pkg", {"sqrt": "math"}, ["sqrt"])
        >>> getattr_("sqrt")(4.0), dir_()
        (2.0, ['sqrt'])
    """
    names = sorted(set(public))

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__


def optional_import(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install command.

    Example:
        >>> optional_import("math", extra="none", purpose="tests").sqrt(9.0)
        3.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module.split('.')[0]!r}: "
            f"pip install 'medgen[{extra}]'."
        ) from err
