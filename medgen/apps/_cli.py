"""``medgen demo`` (the main job: the augmentation study on a simulated cohort), ``medgen study
augment`` (the augmentation study on a user's manifest) and ``medgen study harmonise`` (the
harmonisation study: raw vs harmonised vs oracle images, audited by site)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``medgen`` app."""

    @app.command("demo")
    def demo_cmd(
        output: Annotated[Path, typer.Option("-o", "--output", help="output folder")],
        preset: Annotated[
            str, typer.Option(help="simulator preset: demo | demo-underrep | tiny | tiny-underrep")
        ] = "demo",
        model: Annotated[str | None, typer.Option(help="override the network")] = None,
        epochs: Annotated[
            int | None, typer.Option(help="override the classifiers' epoch cap")
        ] = None,
        synth_epochs: Annotated[
            int | None, typer.Option(help="override the synthesizer's epochs")
        ] = None,
        arm: Annotated[
            list[str] | None,
            typer.Option(
                "--arm", help="a study arm (repeat): real, reweight, augment, synthetic-balanced"
            ),
        ] = None,
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
        """Simulate a cohort with a known bias, train a synthesizer, run the augmentation study
        (real, reweight, synthetic-balanced), audit every arm, write OUT/report.html."""
        import logging

        from medgen.apps._demo import run_demo

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        res = run_demo(
            output,
            preset=preset,
            model=model,
            epochs=epochs,
            synth_epochs=synth_epochs,
            arms=tuple(arm) if arm else None,
            time_budget_s=time_budget,
            device=device,
            seed=seed,
            progress=progress,
        )
        flagged = [a for a, f in res.flagged.items() if f]
        typer.echo(
            f"report: {res.report_path}\ninjected bias: {', '.join(res.injected) or '-'}\n"
            f"flagged (real arm): {', '.join(flagged) or '-'}"
        )
        typer.echo(_summary_lines(res.study))

    study = typer.Typer(
        help="Studies: does augmentation make a classifier better and fairer, and for whom?",
        no_args_is_help=True,
    )
    app.add_typer(study, name="study")

    @study.command("augment")
    def augment_cmd(
        manifest: Annotated[Path, typer.Argument(help="the cohort manifest (train/test splits)")],
        output: Annotated[Path, typer.Option("-o", "--output", help="the study's run folder")],
        synth: Annotated[
            Path | None,
            typer.Option("--synth", help="a synthesizer run folder (medgen synth train)"),
        ] = None,
        synthetic: Annotated[
            Path | None,
            typer.Option(help="a manifest of already generated images (source = synthetic)"),
        ] = None,
        arm: Annotated[
            list[str] | None,
            typer.Option(
                "--arm",
                help="an arm (repeat): real, reweight, augment, synthetic-balanced, "
                "synthetic-only (default: real, reweight, augment, + synthetic-balanced with "
                "--synth/--synthetic)",
            ),
        ] = None,
        target: Annotated[str, typer.Option(help="the label column")] = "label",
        attribute: Annotated[
            list[str] | None,
            typer.Option("--attribute", help="a column whose cells are filled (repeat; sex)"),
        ] = None,
        seeds: Annotated[str, typer.Option(help="training seeds, comma-separated")] = "0,1,2",
        model: Annotated[str, typer.Option(help="the classifier network")] = "densenet",
        epochs: Annotated[int, typer.Option(help="classifier epochs")] = 20,
        batch_size: Annotated[int, typer.Option(help="classifier batch size")] = 32,
        n_boot: Annotated[int, typer.Option(help="paired bootstrap resamples")] = 1000,
        shortage: Annotated[str, typer.Option(help="a short synthetic cell: error | warn")] = (
            "error"
        ),
        synth_seed: Annotated[int, typer.Option(help="seed of the generated images")] = 0,
        save_models: Annotated[
            bool, typer.Option(help="save every arm's classifier under OUT/models")
        ] = False,
        overwrite: Annotated[bool, typer.Option(help="replace a study in OUT")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    ) -> None:
        """Train one classifier several ways on MANIFEST and say whom each way helped: OUT/report.html."""
        import logging

        from medgen.apps._study import augmentation_study
        from medgen.errors import ConfigError

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            seed_list = tuple(int(v) for v in seeds.split(",") if v.strip())
        except ValueError as err:
            raise ConfigError(f"--seeds must be integers like 0,1,2, not {seeds!r}") from err
        generator = None
        if synth is not None:
            from medgen.generative.synthesis import Synthesizer

            generator = Synthesizer.load(synth, device="cpu" if device == "auto" else device)
        if arm:
            arms: tuple[str, ...] = tuple(arm)
        else:
            arms = ("real", "reweight", "augment")
            if generator is not None or synthetic is not None:
                arms += ("synthetic-balanced",)
        res = augmentation_study(
            manifest,
            target=target,
            attributes=list(attribute) if attribute else ["sex"],
            arms=arms,
            synthetic=synthetic,
            synthesizer=generator,
            synthesizer_seed=synth_seed,
            seeds=seed_list,
            classifier={"model": model, "epochs": epochs, "batch_size": batch_size},
            shortage=shortage,
            n_boot=n_boot,
            out_dir=output,
            overwrite=overwrite,
            save_models=save_models,
            device=device,
            progress=progress,
        )
        typer.echo(f"report: {output / 'report.html'}")
        typer.echo(_summary_lines(res))

    @study.command("harmonise")
    def harmonise_cmd(
        manifest: Annotated[Path, typer.Argument(help="the cohort manifest (train/test splits)")],
        translator: Annotated[
            Path,
            typer.Option("--translator", help="a translator run folder (medgen translate train)"),
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="the study's run folder")],
        attribute: Annotated[str, typer.Option(help="the column audited by")] = "site",
        target: Annotated[str, typer.Option(help="the label column")] = "label",
        seeds: Annotated[str, typer.Option(help="training seeds, comma-separated")] = "0",
        model: Annotated[str, typer.Option(help="the classifier network")] = "densenet",
        epochs: Annotated[int, typer.Option(help="classifier epochs")] = 20,
        batch_size: Annotated[int, typer.Option(help="classifier batch size")] = 32,
        metric: Annotated[str, typer.Option(help="the gap the answer is about: auc | tpr")] = "auc",
        oracle: Annotated[
            bool, typer.Option(help="add the oracle arm when the cohort has counterfactuals")
        ] = True,
        n_boot: Annotated[int, typer.Option(help="paired bootstrap resamples")] = 1000,
        overwrite: Annotated[bool, typer.Option(help="replace a study in OUT")] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    ) -> None:
        """Train one classifier on raw and on harmonised images of MANIFEST (and on the true
        counterfactual renders when the cohort has them), compare their audits by --attribute,
        paired, and say whether harmonising removes the gap: OUT/report.html."""
        import logging

        from medgen.apps._harmonise import harmonisation_study

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        res = harmonisation_study(
            manifest,
            translator,
            output,
            attribute=attribute,
            target=target,
            classifier={"model": model, "epochs": epochs, "batch_size": batch_size},
            seeds=_seed_list(seeds),
            oracle=oracle,
            metric=metric,
            n_boot=n_boot,
            overwrite=overwrite,
            device=device,
            progress=progress,
        )
        typer.echo(f"report: {output / 'report.html'}")
        typer.echo(res.answer)


def _seed_list(seeds: str) -> tuple[int, ...]:
    """``"0,1,2"`` as ``(0, 1, 2)``."""
    from medgen.errors import ConfigError

    try:
        return tuple(int(v) for v in seeds.split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"--seeds must be integers like 0,1,2, not {seeds!r}") from err


def _summary_lines(res: Any) -> str:
    """One line per arm: overall AUC (± s.d. over seeds), its delta, whom it helped or hurt."""
    lines = []
    for arm, row in res.summary.iterrows():
        auc = f"AUC {float(row['overall_auc_mean']):.3f}"
        d = "" if arm == "real" else f" ({float(row['overall_auc_delta']):+.3f} vs real)"
        helped = row.get("improved") or "-"
        hurt = row.get("worse") or "-"
        lines.append(f"  {arm}: {auc}{d}; improved: {helped}; made worse: {hurt}")
    return "\n".join(lines)
