"""``medgen train``, ``medgen predict`` and ``medgen pretrain``: thin shells over
:mod:`medgen.classify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _parse_size(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from medgen.errors import ConfigError

    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    except ValueError as err:
        raise ConfigError(f"--image-size must look like 64x64 or 64,64,32, not {text!r}") from err
    if not parts or any(p < 1 for p in parts):
        raise ConfigError(f"--image-size must be positive integers like 64x64, not {text!r}")
    return parts


def _parse_cache(text: str) -> str | None:
    """``--cache``: ``memory``, ``disk`` or ``none`` (streamed from the files)."""
    from medgen.errors import ConfigError

    value = text.strip().lower()
    if value not in ("memory", "disk", "none"):
        raise ConfigError(
            f"--cache must be memory (one tensor in RAM), disk (streamed from --cache-dir) or "
            f"none (streamed from the image files), not {text!r}"
        )
    return None if value == "none" else value


_CACHE_HELP = (
    "memory: every image in one tensor (fastest; the cohort must fit in RAM); "
    "disk: stream preprocessed images from --cache-dir (filled once, reused by later runs); "
    "none: stream from the image files"
)
_CacheDir = Annotated[
    Path | None, typer.Option(help="disk-cache folder for --cache disk (created)")
]
_Workers = Annotated[int, typer.Option(help="DataLoader worker processes for streamed images")]


def register(app: typer.Typer) -> None:
    """Add ``train``, ``predict`` and ``pretrain`` to the ``medgen`` app."""

    @app.command("train")
    def train_cmd(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest (CSV/Parquet)")],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        target: Annotated[str, typer.Option(help="label column")] = "label",
        model: Annotated[
            str, typer.Option(help="network name (see --list-models)")
        ] = "densenet121",
        spatial_dims: Annotated[int, typer.Option(help="2 or 3")] = 2,
        image_size: Annotated[str | None, typer.Option(help="resize to e.g. 64x64")] = None,
        epochs: Annotated[int, typer.Option(help="maximum epochs")] = 10,
        batch_size: Annotated[int, typer.Option(help="images per step")] = 16,
        lr: Annotated[
            float | None,
            typer.Option(help="AdamW (peak) learning rate; default: the model's recipe, else 1e-3"),
        ] = None,
        weight_decay: Annotated[
            float | None,
            typer.Option(help="AdamW weight decay; default: the model's recipe, else 1e-4"),
        ] = None,
        augment: Annotated[
            str | None,
            typer.Option(
                help="none | light | medium | strong; default: the model's recipe, else light"
            ),
        ] = None,
        lr_schedule: Annotated[
            str | None,
            typer.Option(
                help="constant | cosine (decay to 0 at the end or the time budget); default: "
                "the model's recipe, else constant"
            ),
        ] = None,
        warmup_fraction: Annotated[
            float | None,
            typer.Option(
                help="share of training with a linear lr warm-up; default: recipe, else 0"
            ),
        ] = None,
        label_smoothing: Annotated[
            float | None,
            typer.Option(help="cross-entropy label smoothing; default: recipe, else 0"),
        ] = None,
        grad_clip: Annotated[
            float | None,
            typer.Option(
                help="clip each step's gradient norm to this; default: recipe, else 0 (off)"
            ),
        ] = None,
        balance: Annotated[
            list[str] | None, typer.Option(help="column(s) to balance by; 'label' = target")
        ] = None,
        class_weights: Annotated[bool, typer.Option(help="inverse-frequency loss weights")] = False,
        focal_gamma: Annotated[
            float | None, typer.Option(help="train with the focal loss of this gamma (e.g. 2)")
        ] = None,
        synthetic_fraction: Annotated[
            float | None, typer.Option(help="share of each epoch from source=synthetic rows")
        ] = None,
        patience: Annotated[int, typer.Option(help="early-stopping patience (0 = off)")] = 3,
        time_budget: Annotated[float | None, typer.Option(help="seconds of training")] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="continue the interrupted run in OUTPUT from its last epoch (same options)",
            ),
        ] = False,
        overwrite: Annotated[
            bool,
            typer.Option("--overwrite", help="replace the run in OUTPUT (its files only)"),
        ] = False,
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
        init: Annotated[
            Path | None,
            typer.Option(
                "--init",
                help="pretraining run (`medgen pretrain`) whose encoder initialises the model "
                "(same --model and --image-size)",
            ),
        ] = None,
        cache: Annotated[str, typer.Option(help=_CACHE_HELP)] = "memory",
        cache_dir: _CacheDir = None,
        workers: _Workers = 0,
    ) -> None:
        """Train a classifier on a cohort into the run folder OUTPUT.

        Writes checkpoint.pt, train_state.json and metrics.csv after every epoch, then
        model.safetensors, config.json and run_complete.json. OUTPUT must be new or empty:
        --overwrite replaces a previous run, --resume continues an interrupted one. Runs under
        `torchrun --nproc_per_node N` unchanged (DDP, gloo on CPU). A cohort larger than
        memory streams with --cache disk --cache-dir DIR (or --cache none); same seed, same model.
        """
        import logging

        from medgen.classify import train

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        clf = train(
            manifest,
            target=target,
            model=model,
            spatial_dims=spatial_dims,
            image_size=_parse_size(image_size),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            augment=augment,
            lr_schedule=lr_schedule,
            warmup_fraction=warmup_fraction,
            label_smoothing=label_smoothing,
            grad_clip=grad_clip,
            balance=balance or None,
            class_weights=class_weights,
            focal_gamma=focal_gamma,
            synthetic_fraction=synthetic_fraction,
            patience=patience or None,
            time_budget_s=time_budget,
            device=device,
            out_dir=output,
            resume=resume,
            overwrite=overwrite,
            seed=seed,
            progress=progress,
            init=init,
            cache=_parse_cache(cache),
            cache_dir=cache_dir,
            num_workers=workers,
        )
        m = clf.metrics
        typer.echo(
            f"saved {output}: best epoch {m['best_epoch']}, val AUC {m['best_val_auc']:.3f}, "
            f"temperature {m['temperature']:.2f}"
        )

    @app.command("predict")
    def predict_cmd(
        run: Annotated[Path, typer.Argument(help="run folder written by `medgen train`")],
        manifest: Annotated[Path, typer.Argument(help="cohort manifest to predict")],
        output: Annotated[Path, typer.Option("-o", "--output", help="predictions .csv/.parquet")],
        split: Annotated[str | None, typer.Option(help="only this split (e.g. test)")] = None,
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
        labels: Annotated[
            bool,
            typer.Option(
                "--labels/--no-labels",
                help="read the target column into y_true (its values must be the model's "
                "classes); --no-labels ignores it",
            ),
        ] = True,
        cache: Annotated[str, typer.Option(help=_CACHE_HELP)] = "none",
        cache_dir: _CacheDir = None,
        workers: _Workers = 0,
    ) -> None:
        """Predict a cohort: one row per image with the manifest columns, y_true, y_score, y_pred."""
        from medgen._internal.files import write_table
        from medgen._internal.paths import check_output_not_input
        from medgen.classify import Classifier

        check_output_not_input(output, [manifest, run], what="--output")
        clf = Classifier.load(run)
        preds = clf.predict(
            manifest,
            split=split,
            progress=progress,
            labels=labels,
            cache=_parse_cache(cache),
            cache_dir=cache_dir,
            num_workers=workers,
        )
        write_table(preds, output)
        typer.echo(f"wrote {len(preds)} predictions to {output}")

    @app.command("pretrain")
    def pretrain_cmd(
        manifest: Annotated[Path, typer.Argument(help="cohort manifest (CSV/Parquet)")],
        output: Annotated[Path, typer.Option("-o", "--output", help="run folder to write")],
        method: Annotated[str, typer.Option(help="mae | contrastive")] = "mae",
        model: Annotated[
            str | None,
            typer.Option(help="network name; default vit (mae), densenet (contrastive)"),
        ] = None,
        spatial_dims: Annotated[int, typer.Option(help="2 or 3")] = 2,
        image_size: Annotated[str | None, typer.Option(help="resize to e.g. 64x64")] = None,
        epochs: Annotated[int, typer.Option(help="passes over the images")] = 10,
        batch_size: Annotated[int, typer.Option(help="images per step")] = 32,
        lr: Annotated[float, typer.Option(help="AdamW peak learning rate")] = 1e-3,
        split: Annotated[
            list[str] | None,
            typer.Option(help="split(s) whose images are used (default: train)"),
        ] = None,
        all_rows: Annotated[
            bool,
            typer.Option(
                "--all-rows", help="use every row, val and test images included (no labels)"
            ),
        ] = False,
        time_budget: Annotated[float | None, typer.Option(help="seconds of training")] = None,
        device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        overwrite: Annotated[
            bool,
            typer.Option("--overwrite", help="replace the run in OUTPUT (its files only)"),
        ] = False,
        progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    ) -> None:
        """Pretrain an encoder on the cohort's images (labels ignored) into the run folder OUTPUT.

        --method mae trains MONAI's masked autoencoder with the registry ViT's encoder;
        --method contrastive trains SimCLR's NT-Xent on a registry network (default the small
        DenseNet). Only the train split is used unless --split or --all-rows says otherwise.
        Fine-tune with `medgen train ... --init OUTPUT`.
        """
        import logging

        from medgen.classify import pretrain
        from medgen.errors import ConfigError

        if all_rows and split:
            raise ConfigError("--all-rows and --split contradict each other; pass one of them")
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        res = pretrain(
            manifest,
            method=method,
            model=model,
            out_dir=output,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            image_size=_parse_size(image_size),
            spatial_dims=spatial_dims,
            split=None if all_rows else (split or "train"),
            lr=lr,
            time_budget_s=time_budget,
            device=device,
            overwrite=overwrite,
            progress=progress,
        )
        m = res.metrics
        typer.echo(
            f"saved {output}: {method} on {m['n_images']} images, {m['epochs_run']} epochs, "
            f"loss {m['first_epoch_loss']:.4f} -> {m['last_epoch_loss']:.4f}"
        )
