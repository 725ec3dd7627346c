"""Provenance recorded beside every output: package versions and content hashes."""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path

__all__ = ["PROVENANCE_PACKAGES", "file_sha256", "package_versions"]

#: the packages whose versions shape any medgen result (simulation, training, inference, audit)
PROVENANCE_PACKAGES = (
    "medgen",
    "torch",
    "monai",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "scikit-image",
    "torchio",
    "nibabel",
    "nilearn",
    "pydicom",
)


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """``{"python": ..., package: version or "not installed"}`` for ``PROVENANCE_PACKAGES``
    and ``extra``.

    Example:
        >>> v = package_versions()
        >>> sorted(v)[:3], "python" in v
        (['medgen', 'monai', 'nibabel'], True)
    """
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (*PROVENANCE_PACKAGES, *extra):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
