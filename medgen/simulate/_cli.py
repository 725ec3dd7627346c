"""``medgen simulate``: a thin shell over :func:`medgen.simulate.simulate`."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to the medgen app."""

    @app.command("simulate")
    def simulate_cmd(
        out_dir: Annotated[
            pathlib.Path, typer.Option("--out", "-o", help="Output folder (created).")
        ],
        preset_name: Annotated[
            str | None,
            typer.Option(
                "--preset",
                help="Named preset: tiny (default), demo, demo3d, or the study's ground-truth "
                "presets demo-underrep and tiny-underrep (docs/simulate.md).",
            ),
        ] = None,
        config: Annotated[
            pathlib.Path | None,
            typer.Option("--config", help="YAML config file (overrides --preset)."),
        ] = None,
        seed: Annotated[
            int | None, typer.Option("--seed", help="Seed (default: config's).")
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", help="Image format: nifti or dicom.")
        ] = "nifti",
        n_subjects: Annotated[
            int | None, typer.Option("--n-subjects", help="Override the cohort size.")
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
        overwrite: Annotated[
            bool,
            typer.Option("--overwrite", help="Replace a previous simulation in the output folder."),
        ] = False,
        counterfactual: Annotated[
            list[str] | None,
            typer.Option(
                "--counterfactual",
                help="Also render every subject at every other value of this attribute: site "
                "(the other scanners), contrast (t1/t2/flair at its own site) or severity (0, "
                "0.5, 1: lesions scaled, none at 0). Same anatomy, linked by the manifest's "
                "counterfactual_of column (ground truth for translation; docs/simulate.md). "
                "Repeatable.",
            ),
        ] = None,
    ) -> None:
        """Simulate a cohort with known disease, site and bias effects on MNI152 anatomy."""
        from medgen.simulate import SimulationConfig, preset, simulate

        if config is not None:
            cfg = SimulationConfig.from_yaml(config)
        else:
            cfg = preset(preset_name or "tiny")
        if n_subjects is not None:
            cfg.population.n_subjects = n_subjects
        manifest = simulate(
            cfg,
            out_dir,
            seed=seed,
            progress=progress,
            format=fmt,
            overwrite=overwrite,
            counterfactual=tuple(counterfactual or ()),
        )
        typer.echo(f"wrote {manifest}")
