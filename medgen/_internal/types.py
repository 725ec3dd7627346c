"""Type aliases used in public signatures (STYLE.md item 6: aliases in one place)."""

from __future__ import annotations

import os
from typing import TypeAlias

__all__ = ["PathLike"]

#: a path given by the user: a string or any ``os.PathLike`` (``pathlib.Path``)
PathLike: TypeAlias = str | os.PathLike[str]
