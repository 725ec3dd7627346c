"""One clear line per error on the command line, with the traceback behind ``--debug``.

:class:`MedgenGroup` is the click group class of the ``medgen`` app. It wraps every command:

- a medgen error, a file-system error (missing file, permission, full disk) or a decoding error
  is printed as one ``Error: ...`` line on stderr, exit code 2;
- any other exception is a bug: one line that says so and how to get the traceback, exit code 1;
- ``Ctrl-C`` prints ``Interrupted`` and exits with 130;
- ``medgen --debug ...`` or ``MEDGEN_DEBUG=1`` lets the exception through with its traceback.

Commands therefore raise medgen errors and never catch them to print them themselves.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from medgen.errors import MedgenError

try:  # typer >= 0.20 runs on its own copy of click
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - older typer on the installed click
    from click import exceptions as _click_exceptions  # type: ignore[no-redef]

#: exceptions click and typer use for their own flow (usage errors, --help, exit codes)
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    _click_exceptions.ClickException,
)

__all__ = ["DEBUG_ENV", "EXIT_BAD_INPUT", "MedgenGroup", "debug_enabled", "error_line"]

#: environment variable that switches tracebacks on (``MEDGEN_DEBUG=1``)
DEBUG_ENV = "MEDGEN_DEBUG"
#: exit code of a command refused for bad input
EXIT_BAD_INPUT = 2
_META_KEY = "medgen.debug"


def debug_enabled(ctx: Any = None) -> bool:
    """True when ``--debug`` was given or ``MEDGEN_DEBUG`` is set to a true value."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return bool(ctx is not None and ctx.meta.get(_META_KEY))


def set_debug(ctx: Any, value: bool) -> None:
    """Record the ``--debug`` option for :class:`MedgenGroup` (called by the app callback)."""
    ctx.meta[_META_KEY] = bool(value)


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line (white space folded), naming files where it can."""
    if isinstance(err, UnicodeDecodeError):
        text = (
            f"cannot decode the input as {err.encoding} text ({err.reason} at byte {err.start}); "
            "is it a binary file, or saved in another encoding? Save it as UTF-8."
        )
    elif isinstance(err, OSError) and not isinstance(err, MedgenError) and err.filename:
        what = err.strerror or type(err).__name__
        text = f"{err.filename}: {what}"
        if isinstance(err, FileNotFoundError):
            text += "; check the path"
        elif isinstance(err, PermissionError):
            text += "; check the file's permissions or choose another location"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _is_bad_input(err: BaseException) -> bool:
    return isinstance(err, MedgenError | OSError | UnicodeError)


class MedgenGroup(TyperGroup):
    """A typer group that turns exceptions into one line and an exit code (module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BrokenPipeError:
            # the reader went away (`medgen ... | head`): not an error of the user's input
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            if debug_enabled(ctx):
                raise
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            if debug_enabled(ctx):
                raise
            if _is_bad_input(err):
                typer.echo(f"Error: {error_line(err)}", err=True)
                raise typer.Exit(EXIT_BAD_INPUT) from err
            typer.echo(
                f"Error: internal error ({type(err).__name__}: {error_line(err)}). This is a bug "
                "in medgen: rerun with --debug (or MEDGEN_DEBUG=1) for the traceback and report "
                "it.",
                err=True,
            )
            raise typer.Exit(1) from err
