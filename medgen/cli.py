"""The ``medgen`` command line. Each command is a thin shell over the library API.

Heavy imports (torch, MONAI, pandas) happen inside the commands so ``medgen --help`` is instant.
Commands are registered by their own modules' ``register(app)`` functions, listed in ``_COMMANDS``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
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
    "medgen.audit._cli",
]


@app.callback()
def _main() -> None:
    """medgen: generative augmentation and fairness auditing for medical imaging."""


for _module in _COMMANDS:
    importlib.import_module(_module).register(app)

if __name__ == "__main__":
    app()
