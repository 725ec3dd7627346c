"""Image I/O: ``load`` and ``save`` DICOM and NIfTI with RAS geometry; ``scan`` folders into manifests.

:class:`LoadImaged` is the MONAI dictionary transform that loads paths with :func:`load` (what
:meth:`medgen.Cohort.dataset` puts first in every pipeline). torch and MONAI are imported on the
first call (or the first use of ``LoadImaged``), not at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes
from medgen.io._api import load, save
from medgen.io._scan import scan

if TYPE_CHECKING:
    from medgen.io._transforms import LoadImaged

__all__ = ["LoadImaged", "load", "save", "scan"]

# LoadImaged needs MONAI; it is imported only when asked for.
__getattr__, __dir__ = lazy_attributes(__name__, {"LoadImaged": "medgen.io._transforms"}, __all__)
