"""``medgen audit PREDICTIONS``: audit a prediction table and write a self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to ``app``."""
    app.command("audit")(audit_command)


def _threshold(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def audit_command(
    predictions: Annotated[
        Path, typer.Argument(help="Prediction table (.csv or .parquet), one row per image.")
    ],
    sensitive: Annotated[
        list[str],
        typer.Option("--sensitive", "-s", help="Sensitive attribute column; repeat for several."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML report to write.")] = Path(
        "audit.html"
    ),
    y_true: Annotated[str, typer.Option("--y-true", help="Label column (0/1).")] = "y_true",
    y_score: Annotated[
        str, typer.Option("--y-score", help="Score column (probability in [0, 1]).")
    ] = "y_score",
    threshold: Annotated[
        str,
        typer.Option(help="A number, 'youden', 'sensitivity:0.9' or 'specificity:0.9'."),
    ] = "0.5",
    threshold_by: Annotated[
        str | None, typer.Option("--threshold-by", help="Column whose groups get own thresholds.")
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Bootstrap resamples (0: no CIs).")
    ] = 1000,
    ci: Annotated[float, typer.Option(help="CI coverage.")] = 0.95,
    intersections: Annotated[
        bool, typer.Option("--intersections/--no-intersections", help="Audit combinations too.")
    ] = True,
    min_group_size: Annotated[int, typer.Option("--min-group-size")] = 30,
    p_adjust: Annotated[str, typer.Option("--p-adjust", help="'holm' or 'bh'.")] = "holm",
    cluster: Annotated[
        str | None,
        typer.Option(help="Cluster column (e.g. subject_id): resample whole clusters."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Bootstrap seed (default: drawn, recorded).")
    ] = None,
    csv_dir: Annotated[
        Path | None, typer.Option("--csv-dir", help="Also write the tables as CSV here.")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option("--markdown", help="Also write a Markdown summary here.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = False,
) -> None:
    """Audit PREDICTIONS per subgroup (metrics, bootstrap CIs, disparities) and write an HTML report."""
    import warnings

    import pandas as pd

    from medgen._internal.files import read_table
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.report import atomic_write_text
    from medgen.audit import audit
    from medgen.errors import MetricWarning

    for out, option in ((output, "--output"), (csv_dir, "--csv-dir"), (markdown, "--markdown")):
        if out is not None:
            check_output_not_input(out, [predictions], what=option)
    data = read_table(predictions, what="prediction table")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        report = audit(
            data,
            y_true=y_true,
            y_score=y_score,
            sensitive=sensitive,
            threshold=_threshold(threshold),
            threshold_by=threshold_by,
            n_boot=n_boot,
            ci=ci,
            intersections=intersections,
            min_group_size=min_group_size,
            p_adjust=p_adjust,
            cluster=cluster,
            seed=seed,
            progress=progress,
        )
    report.to_html(output)
    if csv_dir is not None:
        report.to_csv(csv_dir)
    if markdown is not None:
        atomic_write_text(markdown, report.to_markdown())

    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    cols = ["n_groups", "worst_group_auc", "auc_gap", "equalized_odds_difference", "ece_gap"]
    if report.classes is not None:  # multi-class: macro AUC and the gaps of the whole decision
        cols = ["n_groups", "worst_group_macro_auc", "macro_auc_gap", "accuracy_gap", "ece_gap"]
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        typer.echo(report.summary[cols].to_string())
    n_flag = int(report.disparities["flagged"].sum())
    n_sig = int(report.disparities["significant"].sum())
    typer.echo(
        f"{len(data)} rows, seed {report.provenance['seed']}: {n_flag} disparities outside the "
        f"tolerance band, {n_sig} significant after {p_adjust} adjustment"
    )
    typer.echo(f"report written to {output}")
