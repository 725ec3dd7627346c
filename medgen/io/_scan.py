"""``scan``: walk a folder of DICOM and NIfTI files into a manifest (placeholder, filled below)."""

from __future__ import annotations

import os
from typing import Any


def scan(root: str | os.PathLike[str], **kwargs: Any) -> Any:
    raise NotImplementedError("medgen.io.scan is being built")
