"""The arguments every generator's ``sample(n, where)`` and ``write(samples, out_dir, ...)`` take.

Shared by :class:`medgen.generative.Synthesizer` and :class:`medgen.simulate.SimulatedGenerator`
(the two generators of the augmentation study's protocol), so both accept and refuse the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import MedgenValueError, OutputPathError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_write_target", "condition_rows"]

#: the formats a generator writes
WRITE_FORMATS = ("nifti", "dicom")


def condition_rows(n: int | None, where: Any, *, unit: str = "images") -> pd.DataFrame:
    """One row per requested item: ``where`` (a DataFrame, one row each; ``n`` ``None`` or its
    length), or ``n`` copies of the dict ``where`` (``None``: no columns).

    Example:
        >>> condition_rows(2, {"label": 1}).to_dict("records")
        [{'label': 1}, {'label': 1}]

    Raises:
        MedgenValueError: ``n`` not a positive integer (or not the DataFrame's length), a
            ``where`` of another type, no rows.
    """
    import numpy as np
    import pandas as pd

    if isinstance(where, pd.DataFrame):
        if n is not None and n != len(where):
            raise MedgenValueError(
                f"sample: n={n} but where has {len(where)} rows; pass n=None (one of the {unit} "
                "per row) or a where with n rows."
            )
        rows = where.reset_index(drop=True)
    else:
        if n is None or isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
            raise MedgenValueError(f"sample: n must be a positive number of {unit}, not {n!r}.")
        if where is not None and not isinstance(where, Mapping):
            raise MedgenValueError(
                f"sample: where must be a dict of conditions, a DataFrame of condition rows "
                f"or None, not {type(where).__name__}."
            )
        spec = dict(where or {})
        rows = pd.DataFrame([spec] * int(n)) if spec else pd.DataFrame(index=range(int(n)))
    if len(rows) == 0:
        raise MedgenValueError("sample: where has no rows; pass at least one condition row.")
    return rows


def check_write_target(
    out_dir: str | os.PathLike[str], *, format: str, split: str, what: str = "samples"
) -> Path:
    """The folder a generator's ``write`` fills, after checking ``format`` and ``split``.

    Raises:
        MedgenValueError: ``format`` not nifti/dicom; ``split`` not ``""`` or ``"train"``.
        OutputPathError: ``out_dir`` exists and is not an empty folder.
    """
    if format not in WRITE_FORMATS:
        raise MedgenValueError(
            f"write: format must be 'nifti' or 'dicom', not {format!r}."
            + did_you_mean(str(format), WRITE_FORMATS)
        )
    if split not in ("", "train"):
        raise MedgenValueError(
            f"write: split must be '' (unassigned) or 'train', not {split!r}; synthetic "
            "images never enter the val or test splits."
        )
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputPathError(
            f"write: {str(out)!r} exists and is not an empty folder; write {what} into a new "
            "or empty folder (medgen never mixes them with other files)."
        )
    return out
