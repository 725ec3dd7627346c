"""Image I/O: ``load`` and ``save`` DICOM and NIfTI with RAS geometry; ``scan`` folders into manifests.

torch and MONAI are imported on the first call, not at import time.
"""

from __future__ import annotations

from medgen.io._api import load, save
from medgen.io._scan import scan

__all__ = ["load", "save", "scan"]
