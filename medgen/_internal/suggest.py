"""One "Did you mean ...?" helper for every error that rejects a name (STYLE.md item 7)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_matches", "did_you_mean"]


def close_matches(
    value: object,
    options: Iterable[object],
    *,
    n: int = 1,
    cutoff: float = 0.6,
    ignore_case: bool = False,
    prefix: bool = False,
) -> list[str]:
    """The options closest to ``value`` (at most ``n``), best first.

    Args:
        value: what the user gave (converted with ``str``).
        options: the accepted names.
        n: how many matches at most.
        cutoff: :func:`difflib.get_close_matches` similarity threshold in [0, 1].
        ignore_case: compare ``value`` lower-cased (the options are taken as they are).
        prefix: when nothing is similar enough, take an option ``value`` starts with
            (``"validation"`` -> ``"val"``).

    Example:
        >>> close_matches("unett", ["unet", "vae"])
        ['unet']
    """
    names = [str(o) for o in options]
    text = str(value).lower() if ignore_case else str(value)
    close = difflib.get_close_matches(text, names, n=n, cutoff=cutoff)
    if not close and prefix:
        close = [o for o in names if o and text.startswith(o)][:n]
    return close


def did_you_mean(value: object, options: Iterable[object], **kwargs: object) -> str:
    """``" Did you mean 'x'?"`` (several: ``" Did you mean 'x', 'y'?"``), or ``""``.

    Takes the options of :func:`close_matches`; the leading space lets callers append it to a
    sentence.

    Example:
        >>> did_you_mean("meduim", ["none", "light", "medium"])
        " Did you mean 'medium'?"
        >>> did_you_mean("zzz", ["none", "light", "medium"])
        ''
    """
    close = close_matches(value, options, **kwargs)  # type: ignore[arg-type]
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"
