"""The ``sample(n, where)`` argument every generator takes, as one table of condition rows.

Shared by :class:`medgen.generative.Synthesizer` and :class:`medgen.simulate.SimulatedGenerator`
(the two generators of the augmentation study's protocol), so both accept and refuse the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from medgen.errors import MedgenValueError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["condition_rows"]


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
