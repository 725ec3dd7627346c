"""The ``medgen`` command line. Each command is a thin shell over the library API.

Heavy imports (torch, MONAI, pandas) happen inside the commands so ``medgen --help`` is instant.
Commands are registered by their own modules' ``register(app)`` functions, listed in ``_COMMANDS``.

Errors: commands raise medgen errors and never print them themselves. The app's group class
(:class:`medgen._internal.cli.MedgenGroup`) turns any error into one ``Error: ...`` line and exit
code 2 (1 for a bug), with the traceback only under ``medgen --debug`` or ``MEDGEN_DEBUG=1``.
"""

from __future__ import annotations

import importlib

import typer

from medgen._internal.cli import MedgenGroup, set_debug

app = typer.Typer(
    cls=MedgenGroup,
    name="medgen",
    help="medgen: generative augmentation and fairness auditing for medical imaging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# modules that define `register(app: typer.Typer) -> None`; each adds its own commands.
_COMMANDS: list[str] = [
    "medgen.cohort._cli",
    "medgen.classify._cli",
    "medgen.apps._cli",
    "medgen.simulate._cli",
    "medgen.io._cli",
    "medgen.generative._cli",
    "medgen.generative._synth_cli",
    "medgen.generative._translate_cli",
    "medgen.audit._cli",
]


@app.callback()
def _main(
    ctx: typer.Context,
    debug: bool = typer.Option(
        False,
        "--debug",
        help="Show the full traceback of an error (also MEDGEN_DEBUG=1).",
    ),
) -> None:
    """medgen: generative augmentation and fairness auditing for medical imaging."""
    set_debug(ctx, debug)


for _module in _COMMANDS:
    importlib.import_module(_module).register(app)

if __name__ == "__main__":
    app()
