"""``medgen demo``: the main job (simulate, train, predict, audit, report) as one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``medgen`` app."""

    @app.command("demo")
    def demo_cmd(
        output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
        preset: Annotated[str, typer.Option(help="simulator preset: demo | tiny")] = "demo",
        model: Annotated[str | None, typer.Option(help="override the network")] = None,
        epochs: Annotated[int | None, typer.Option(help="override the epoch cap")] = None,
        time_budget: Annotated[
            float | None,
            typer.Option(
                help="cap training seconds (off by default: results then depend on machine load)"
            ),
        ] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    ) -> None:
        """Simulate a cohort with a known bias, train a classifier, audit it, write OUT/report.html."""
        import logging

        from medgen.apps._demo import run_demo

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        res = run_demo(
            output,
            preset=preset,
            model=model,
            epochs=epochs,
            time_budget_s=time_budget,
            device=device,
            seed=seed,
            progress=progress,
        )
        flagged = [a for a, f in res.flagged.items() if f]
        typer.echo(
            f"report: {res.report_path}\ninjected bias: {', '.join(res.injected) or '-'}\n"
            f"flagged: {', '.join(flagged) or '-'}"
        )
