"""medgen's exception hierarchy.

Every error medgen raises on purpose is a :class:`MedgenError` and also a subclass of the matching
builtin, so callers can catch ``ValueError`` / ``FileNotFoundError`` as they would anywhere else, or
``MedgenError`` to catch only medgen's own.

Messages name the file, column or argument at fault and say how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "ConfigError",
    "DicomError",
    "DicomReadWarning",
    "ImageReadError",
    "ManifestError",
    "MedgenError",
    "MedgenFileNotFoundError",
    "MedgenRuntimeError",
    "MedgenValueError",
    "MetricWarning",
    "MissingDependencyError",
    "MultipleSeriesError",
    "NoiseLevelWarning",
    "OutputPathError",
    "RunFolderError",
    "RunLockedError",
    "SeriesGeometryError",
    "SeriesGeometryWarning",
]


class MedgenError(Exception):
    """Base class of all errors raised by medgen."""


class MedgenValueError(MedgenError, ValueError):
    """A value (argument, file content, table cell) is not acceptable."""


class MedgenFileNotFoundError(MedgenError, FileNotFoundError):
    """A file or directory that medgen was asked to read does not exist."""


class MedgenRuntimeError(MedgenError, RuntimeError):
    """An operation failed for a reason other than its input (e.g. an interrupted write)."""


class MissingDependencyError(MedgenError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ImageReadError(MedgenValueError):
    """An image file exists but cannot be read (corrupt, truncated, unsupported, empty)."""


class DicomError(ImageReadError):
    """A DICOM file or series cannot be read or is inconsistent."""


class MultipleSeriesError(DicomError):
    """A directory holds more than one DICOM series and none was chosen with ``series=``."""


class SeriesGeometryError(DicomError):
    """A DICOM series has inconsistent geometry (mixed orientation, missing slices, ...)."""


class SeriesGeometryWarning(UserWarning):
    """A DICOM series loads but its geometry is suspect (missing slices, uneven slice spacing)."""


class DicomReadWarning(UserWarning):
    """A DICOM file was read with a repair or an assumption (no file meta, a header value that
    is not valid DICOM and was dropped); the message says which."""


class ManifestError(MedgenValueError):
    """A manifest table violates the cohort schema (missing columns, duplicates, bad paths...)."""


class ConfigError(MedgenValueError):
    """A configuration (YAML file, dict or dataclass) is invalid."""


class MetricWarning(UserWarning):
    """A metric is undefined or unreliable for a group (one class only, tiny group, ...)."""


class NoiseLevelWarning(UserWarning):
    """A denoiser was given (or estimated) a noise level outside the range it was trained on."""


class OutputPathError(MedgenValueError):
    """An output path would overwrite, contain or lie inside an input, or leave its folder."""


class RunFolderError(MedgenValueError):
    """A run folder is in the wrong state for what was asked (interrupted, finished, mixed,
    or holding files that are not a run's)."""


class ChecksumError(MedgenValueError):
    """A file's SHA-256 differs from the one recorded for it (e.g. a pretrained model's weights
    against the registry's ``index.json``): the file is corrupt or was replaced."""


class RunLockedError(MedgenRuntimeError):
    """Another process is writing the run folder."""
