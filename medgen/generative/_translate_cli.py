"""``medgen translate train|apply``: thin shells over :class:`medgen.generative.Translator`.

``train`` parses the ``--from`` / ``--to`` selectors against the manifest (values typed like
the column: ``label=1`` selects the integer 1), refuses selectors that cannot train (an unknown
column, a value no row has, a group that is empty or everything, source equal to target) in one
line before anything trains, then fits and saves the translator into its run folder. ``apply``
is the generative ``apply`` command of kind ``"translate"`` (:mod:`medgen.generative._cli`).

Heavy imports happen inside the commands; commands raise medgen errors and never print them.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import pandas as pd

#: the translator models the CLI names in its help (the Translator decides what exists)
MODEL_HELP = "histogram | nyul | cyclegan | pix2pix"


def _typed(value: str, column: pd.Series, *, flag: str, key: str) -> Any:
    """``value`` (text) as the column holds it: the column's own value whose text it is."""
    import math

    from medgen._internal.suggest import did_you_mean
    from medgen.errors import MedgenValueError

    present = list(dict.fromkeys(column.dropna().tolist()))
    for v in present:
        plain = v.item() if hasattr(v, "item") else v
        if str(plain) == value:
            return plain
    for v in present:  # 1 selects 1.0, 1.0 selects 1
        plain = v.item() if hasattr(v, "item") else v
        if isinstance(plain, int | float) and not isinstance(plain, bool):
            try:
                number = float(value)
            except ValueError:
                continue
            if not math.isnan(number) and float(plain) == number:
                return plain
    shown = sorted(map(str, present))
    raise MedgenValueError(
        f"{flag} {key}={value} matches no rows: column {key!r} holds "
        f"{', '.join(shown) if shown else 'no values'}.{did_you_mean(value, shown)}"
    )


def parse_selector(text: str, df: pd.DataFrame, *, flag: str) -> dict[str, Any]:
    """``"site=site_A"`` (or ``"site=site_A,sex=F"``) as a Translator selector, each value
    typed like the manifest column ``df[col]`` holds it.

    Raises:
        ConfigError: not ``COLUMN=VALUE`` pairs, a column given twice.
        MedgenValueError: a column the manifest lacks (the closest is suggested), a value no
            row holds (the values present are listed).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"site": ["site_A", "site_B"], "label": [0, 1]})
        >>> parse_selector("site=site_A, label=1", df, flag="--from")
        {'site': 'site_A', 'label': 1}
    """
    from medgen._internal.suggest import did_you_mean
    from medgen.errors import ConfigError, MedgenValueError

    out: dict[str, Any] = {}
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{flag} must be COLUMN=VALUE, like site=site_A; got {text!r}.")
    for part in parts:
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise ConfigError(
                f"{flag} must be COLUMN=VALUE pairs separated by commas, like site=site_A; "
                f"{part!r} is not one."
            )
        if key in out:
            raise ConfigError(f"{flag} gives column {key!r} twice: {text!r}.")
        if key not in df.columns:
            cols = [str(c) for c in df.columns]
            raise MedgenValueError(
                f"{flag} {key}={value}: the manifest has no column {key!r}.{did_you_mean(key, cols)}"
                f" Its columns: {', '.join(cols)}."
            )
        out[key] = _typed(value, df[key], flag=flag, key=key)
    return out


def check_selectors(df: pd.DataFrame, source: dict[str, Any], target: dict[str, Any]) -> None:
    """Refuse ``--from`` / ``--to`` selectors that cannot train a translator on ``df``'s
    factual training rows: equal selectors, a group without training rows or with all of them,
    groups that share rows.

    Raises:
        ConfigError: source equals target.
        MedgenValueError: an empty, all-rows or overlapping group (counts named).
    """
    from medgen.errors import ConfigError, MedgenValueError
    from medgen.generative.translation import _matches

    def show(sel: dict[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in sel.items())

    if source == target:
        raise ConfigError(
            f"--from and --to select the same group ({show(source)}); translate between two "
            "groups, e.g. --from site=site_A --to site=site_B."
        )
    rows = df[df["split"].fillna("").astype(str) == "train"]
    if "counterfactual_of" in rows.columns:
        rows = rows[rows["counterfactual_of"].isna()]
    picked = {}
    for flag, sel in (("--from", source), ("--to", target)):
        mask = _matches(rows, sel)  # the rows the Translator will train on
        n = int(mask.sum())
        if n == 0:
            raise MedgenValueError(
                f"{flag} {show(sel)} matches no training-split rows (of {len(rows)}); the "
                "translator trains on split=train rows only."
            )
        if n == len(rows):
            raise MedgenValueError(
                f"{flag} {show(sel)} matches every training-split row ({n}), so the other "
                "group is empty; select one group, e.g. one site."
            )
        picked[flag] = mask
    both = int((picked["--from"] & picked["--to"]).sum())
    if both:
        raise MedgenValueError(
            f"--from {show(source)} and --to {show(target)} both match {both} training rows; "
            "the two groups must be disjoint."
        )


def train_command(
    manifest: Path,
    source_text: str,
    target_text: str,
    output: Path,
    *,
    model: str,
    spatial_dims: int,
    patch_size: int,
    channels: str | None,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    time_budget: float | None,
    resume: bool,
    overwrite: bool,
    device: str,
    seed: int,
    progress: bool,
) -> None:
    """``medgen translate train`` (every check before anything trains)."""
    from medgen._internal.paths import check_output_not_input
    from medgen._internal.runs import run_state
    from medgen.cohort import Cohort
    from medgen.errors import ConfigError, OutputPathError, RunFolderError
    from medgen.generative.translation import Translator

    cohort = Cohort.from_manifest(manifest)
    df = cohort.df
    source = parse_selector(source_text, df, flag="--from")
    target = parse_selector(target_text, df, flag="--to")
    check_selectors(df, source, target)
    images = [
        p
        for col in ("image_path", "mask_path")
        if col in df
        for p in df[col]
        if isinstance(p, str) and p
    ]
    check_output_not_input(output, [manifest, *images], what="--output")
    if output.exists() and not output.is_dir():
        raise OutputPathError(f"--output {str(output)!r} is a file; pass a folder.")
    can_resume = "resume" in inspect.signature(Translator.fit).parameters
    if resume and not can_resume:
        raise ConfigError(
            "--resume: translator training cannot be resumed yet (Translator.fit has no resume); "
            "train into a new folder, or pass --overwrite to train again."
        )
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; pass one of them.")
    if not (resume or overwrite) and output.is_dir() and run_state(output) != "empty":
        # refused now, not after minutes of training
        raise RunFolderError(
            f"--output {str(output)!r} already holds files (a model or a run). Choose a new or "
            "empty folder, or pass --overwrite to replace its run."
        )
    networks: dict[str, Any] = {}
    if channels is not None:
        from medgen.generative._synth_cli import _ints

        if model not in inspect.signature(Translator).parameters:
            raise ConfigError(
                f"--channels sets the networks of a learned model (cyclegan, pix2pix); "
                f"--model {model} has none. Drop --channels."
            )
        networks[model] = {"channels": _ints(channels, "--channels")}
    translator = Translator(
        model,
        source=source,
        target=target,
        spatial_dims=spatial_dims,
        patch_size=patch_size,
        **networks,
    )
    config: dict[str, Any] = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "time_budget_s": time_budget,
        "device": device,
        "seed": seed,
    }
    extra: dict[str, Any] = {"resume": resume} if can_resume else {}
    translator.fit(
        cohort, run_dir=output, config=config, overwrite=overwrite, progress=progress, **extra
    )
    typer.echo(f"translator ({model}, {source_text} -> {target_text}) -> {output}")


def register(app: typer.Typer) -> None:
    """Add the ``translate`` command group (``train``, ``apply``) to the ``medgen`` app."""
    from medgen.generative._cli import _apply_command

    translate = typer.Typer(
        help="Image-to-image translation between groups of a cohort (e.g. site harmonisation).",
        no_args_is_help=True,
    )
    app.add_typer(translate, name="translate")

    @translate.command("train")
    def translate_train(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest (trains on split=train)")],
        source: Annotated[
            str, typer.Option("--from", help="the source group, COLUMN=VALUE (e.g. site=site_A)")
        ],
        target: Annotated[
            str, typer.Option("--to", help="the target group, COLUMN=VALUE (e.g. site=site_B)")
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        model: Annotated[str, typer.Option(help=MODEL_HELP)] = "cyclegan",
        spatial_dims: Annotated[int, typer.Option(help="2 (slices) or 3 (patches)")] = 2,
        patch_size: Annotated[int, typer.Option(help="training patch edge (learned models)")] = 32,
        channels: Annotated[
            str | None, typer.Option(help="generator widths per level (learned models)")
        ] = None,
        epochs: Annotated[int, typer.Option(help="epochs (learned models)")] = 10,
        steps_per_epoch: Annotated[int, typer.Option(help="steps per epoch")] = 100,
        batch_size: Annotated[int, typer.Option(help="patches per step")] = 8,
        time_budget: Annotated[float | None, typer.Option(help="seconds of training")] = None,
        resume: Annotated[bool, typer.Option(help="continue the run in OUTPUT")] = False,
        overwrite: Annotated[
            bool, typer.Option(help="replace the run in OUTPUT (its files only)")
        ] = False,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """Train a translator from the --from group to the --to group of MANIFEST into OUTPUT
        (config.json, model.safetensors, run_complete.json; medgen.generative.load reads it).

        The baselines (histogram, nyul) fit in seconds and ignore the training options."""
        train_command(
            manifest, source, target, output, model=model, spatial_dims=spatial_dims,
            patch_size=patch_size, channels=channels, epochs=epochs,
            steps_per_epoch=steps_per_epoch, batch_size=batch_size, time_budget=time_budget,
            resume=resume, overwrite=overwrite, device=device, seed=seed, progress=progress,
        )  # fmt: skip

    translate.command("apply")(
        _apply_command(
            "translate",
            "Translate images (files, DICOM folders or a manifest) with the translator in RUN; "
            "outputs are marked DERIVED and name the model; writes outputs.csv and a manifest.",
        )
    )
