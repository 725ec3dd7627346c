"""``medgen info MANIFEST``: validate a manifest and print counts by subgroup, split and label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``info`` command to ``app``."""
    app.command("info")(info)


def info(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.csv or .parquet).")],
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="Attribute column to break counts down by; repeat for several."),
    ] = None,
    label: Annotated[str, typer.Option(help="Label column of the breakdown.")] = "label",
    root: Annotated[
        Path | None,
        typer.Option(help="Folder relative image paths are relative to (default: the manifest's)."),
    ] = None,
    check_files: Annotated[
        bool, typer.Option("--check-files/--no-check-files", help="Check that every image exists.")
    ] = True,
) -> None:
    """Validate MANIFEST and print counts of images and subjects by subgroup, split and label."""
    import pandas as pd

    from medgen.cohort import Cohort
    from medgen.errors import MedgenError

    try:
        cohort = Cohort.from_manifest(manifest, root=root, check_files=check_files)
        table = cohort.subgroups(by or [], label=label)
    except MedgenError as err:
        if isinstance(err, FileNotFoundError) and "check_files=False" in str(err):
            hint = " (On the command line: --root DIR or --no-check-files.)"
            raise type(err)(f"{err}{hint}") from err
        raise

    df = cohort.df
    typer.echo(f"{manifest}: {len(cohort)} images, {df['subject_id'].nunique()} subjects")
    typer.echo("by source: " + _inline(df["source"].value_counts(sort=False)))
    split = df["split"].replace("", "(unassigned)")
    typer.echo("by split:  " + _inline(split.value_counts(sort=False)))
    if label in df.columns:
        lab = df[label].astype(object).where(df[label].notna(), "(missing)")
        typer.echo(f"by {label}:  " + _inline(lab.value_counts(sort=False)))
    attrs = cohort.attributes
    if attrs:
        typer.echo("attributes: " + ", ".join(attrs))
    typer.echo("")
    shown = table.reset_index()
    shown["split"] = shown["split"].replace("", "(unassigned)")
    for col in by or []:
        shown[col] = shown[col].astype(object).where(shown[col].notna(), "(missing)")
    with pd.option_context("display.max_rows", 500, "display.width", 120):
        typer.echo(shown.to_string(index=False))


def _inline(counts: object) -> str:
    items = getattr(counts, "items", None)
    if items is None:  # pragma: no cover
        return str(counts)
    return ", ".join(f"{k}={v}" for k, v in sorted(items(), key=lambda kv: str(kv[0])))
