"""``medgen scan DIR -o manifest.csv``: a thin shell over :func:`medgen.io.scan`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd


def register(app: typer.Typer) -> None:
    """Add the ``scan`` command to ``app``."""
    app.command("scan")(scan_command)


def _errors_path(out: Path) -> Path:
    name = out.name
    for suf in (".parquet", ".csv"):
        if name.lower().endswith(suf):
            return out.with_name(name[: -len(suf)] + ".errors" + suf)
    return out.with_name(name + ".errors.csv")


def scan_command(
    directory: Annotated[Path, typer.Argument(help="Folder of DICOM and NIfTI files to scan.")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Manifest to write (.csv, or .parquet)."),
    ] = Path("manifest.csv"),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = False,
    retain: Annotated[
        list[str] | None,
        typer.Option(
            "--retain",
            help="De-identification retain option (repeatable): institution_identity keeps "
            "InstitutionName as site (default: a keyed pseudonym), descriptors keeps "
            "series_description. See docs/privacy.md.",
        ),
    ] = None,
) -> None:
    """Scan DIRECTORY (headers only) into a manifest of images plus an errors table beside it.

    Image paths in the manifest are written relative to the manifest's folder, so
    ``medgen info`` and ``Cohort.from_manifest`` find the files.
    """
    from medgen._internal.paths import check_output_not_input
    from medgen.errors import MedgenValueError
    from medgen.io import scan

    if not output.name.lower().endswith((".csv", ".parquet")):
        raise MedgenValueError(f"--output {output} must end .csv or .parquet.")
    err_path = _errors_path(output)
    for out in (output, err_path):  # never inside the scanned folder: it may be the only copy
        check_output_not_input(out, [directory], what="--output")
    manifest, errors = scan(directory, progress=progress, retain=retain or ())
    root = directory.expanduser().resolve()
    out_dir = output.expanduser().resolve().parent
    shown_errors = errors.copy()
    if out_dir != root:
        # relative to the manifest's folder when they share more than "/", else absolute
        rel = os.path.commonpath([root, out_dir]) != root.anchor

        def move(p: str) -> str:
            return Path(os.path.relpath(root / p, out_dir) if rel else root / p).as_posix()

        if not manifest.empty:
            manifest["image_path"] = [move(p) for p in manifest["image_path"]]
        if not errors.empty:
            errors["path"] = [move(p) for p in errors["path"]]
    _write(manifest, output)
    _write(errors, err_path)
    n_dicom = int((manifest["format"] == "dicom").sum()) if not manifest.empty else 0
    typer.echo(
        f"Scanned {directory}: {len(manifest)} images ({n_dicom} DICOM, {len(manifest) - n_dicom} NIfTI), "
        f"{manifest['subject_id'].nunique() if not manifest.empty else 0} subjects, "
        f"{len(errors)} unreadable."
    )
    if not manifest.empty:
        counts = manifest["modality"].fillna("(none)").value_counts()
        typer.echo("by modality: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    typer.echo(f"Wrote {output} and {err_path}.")
    if len(errors):
        typer.echo(f"First unreadable files (paths relative to {directory}):")
        for row in shown_errors.head(5).itertuples():
            typer.echo(f"  {row.path}: {str(row.reason)[:120]}")


def _write(df: pd.DataFrame, path: Path) -> None:
    from medgen._internal.files import atomic_path

    path = path.expanduser()
    suffix = ".parquet" if path.name.lower().endswith(".parquet") else ".csv"
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
