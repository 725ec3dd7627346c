"""The option checks of :mod:`medgen.generative`'s configs (engine, objectives, restorers).

Each check reads attributes of a config object and raises :class:`~medgen.errors.ConfigError`
naming ``owner.attribute`` (just ``attribute`` when ``owner`` is empty); the network checks also
normalise ``channels`` to a tuple of ints, :func:`normalise_betas` makes ``betas`` two floats.

Example:
    >>> from types import SimpleNamespace
    >>> check_int(SimpleNamespace(epochs=0), "EngineConfig", ("epochs",), minimum=1)
    Traceback (most recent call last):
    ...
    medgen.errors.ConfigError: EngineConfig.epochs must be a positive integer, not 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from medgen.errors import ConfigError

__all__ = [
    "check_int",
    "check_network",
    "check_non_negative",
    "check_patch_size",
    "check_positive",
    "normalise_betas",
]


def _name(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name


def check_positive(obj: Any, owner: str, names: Sequence[str]) -> None:
    """``ConfigError`` unless every attribute in ``names`` is a positive finite number."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
            raise ConfigError(f"{_name(owner, name)} must be a positive number, not {v!r}.")


def check_non_negative(obj: Any, owner: str, names: Sequence[str]) -> None:
    """``ConfigError`` unless every attribute in ``names`` is a number >= 0."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not (isinstance(v, int | float) and v >= 0):
            raise ConfigError(f"{_name(owner, name)} must be >= 0, not {v!r}.")


def check_int(obj: Any, owner: str, names: Sequence[str], *, minimum: int | None = None) -> None:
    """``ConfigError`` unless every attribute in ``names`` is an integer (not a bool), at least
    ``minimum`` when given."""
    if minimum is None:
        what = "an integer"
    else:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
            raise ConfigError(f"{_name(owner, name)} must be {what}, not {v!r}.")


def check_network(obj: Any, owner: str, *, norm_groups: bool = False) -> None:
    """``spatial_dims`` is 2 or 3; ``channels`` becomes a tuple of ints; with ``norm_groups``,
    ``norm_num_groups`` (``None``: the smallest width) divides every width."""
    if obj.spatial_dims not in (2, 3):
        raise ConfigError(
            f"{_name(owner, 'spatial_dims')} must be 2 or 3, not {obj.spatial_dims!r}."
        )
    obj.channels = tuple(int(c) for c in obj.channels)
    if norm_groups:
        groups = obj.norm_num_groups or min(obj.channels)
        if any(c % groups for c in obj.channels):
            raise ConfigError(
                f"{_name(owner, 'norm_num_groups')}={groups} must divide every width in "
                f"channels={obj.channels}; choose widths that share a divisor or set "
                "norm_num_groups."
            )


def check_patch_size(obj: Any, owner: str, *, minimum: int | None = None) -> None:
    """``patch_size`` is an integer divisible by ``2**(len(channels)-1)`` (the networks' total
    down-sampling), at least ``minimum`` when given."""
    k = 2 ** (len(obj.channels) - 1)
    ps = obj.patch_size
    low = minimum is not None and not isinstance(ps, bool) and isinstance(ps, int) and ps < minimum
    if isinstance(ps, bool) or not isinstance(ps, int) or low or ps % k:
        at_least = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(
            f"{_name(owner, 'patch_size')} must be an integer{at_least} divisible by "
            f"2**(len(channels)-1) = {k}, not {ps!r}."
        )


def normalise_betas(obj: Any) -> None:
    """Store ``obj.betas`` (Adam's) as a tuple of two floats."""
    obj.betas = (float(obj.betas[0]), float(obj.betas[1]))
