"""One shard of a synthetic dataset: sampled, gated, written. This is the code workers run.

:func:`run_shard` is a top-level function of a picklable job (a dict) and a shard number, so it
runs the same in this process and on a Dask worker. The model and its memorisation gate are
loaded once per process (:func:`cached_synthesizer`, :func:`cached_gate`) and kept for the next
shards.

A shard's images are written each to a temporary name and renamed (:func:`medgen.io.save`);
its manifest part ``shards/shard-<k>.csv`` is written last, atomically: a shard is done exactly
when its part exists. A shard that is redone writes the same names with the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medgen.errors import RunFolderError

if TYPE_CHECKING:
    from medgen.generative.synthesis import Synthesizer

__all__ = ["cached_gate", "cached_synthesizer", "path_sha256", "run_shard", "shard_name"]

#: the folder of the shards (image folders and manifest parts) inside the output folder
SHARDS = "shards"
#: a mask-conditioned model's datasets: the manifest columns of each image's lesion mask (the
#: synthesizer's default ``mask_column``, so the dataset trains a lesion-weighted model as is)
MASK_COLUMN = "mask_path"
MASK_SHA256 = "mask_sha256"
#: models and gates kept per process (a worker may serve two jobs in turn)
_KEEP = 2
_MODELS: OrderedDict[tuple[str, str, str], Synthesizer] = OrderedDict()
_GATES: OrderedDict[tuple[str, str, float], Any] = OrderedDict()


def _keep(cache: OrderedDict[Any, Any], key: Any, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _KEEP:
        cache.popitem(last=False)
    return value


def remember(syn: Synthesizer, run: str, device: str) -> None:
    """Put an already loaded model in this process's cache (the in-process executor reuses the
    driver's model instead of loading it again)."""
    _keep(_MODELS, (run, syn.weights_sha256, device), syn)


def cached_synthesizer(run: str, weights_sha256: str, device: str) -> Synthesizer:
    """The synthesizer of run folder ``run``, loaded once per process.

    Raises:
        RunFolderError: the folder's weights are no longer ``weights_sha256`` (it was retrained
            while the dataset was being generated).
    """
    key = (run, weights_sha256, device)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    from medgen.generative.synthesis import Synthesizer

    syn = Synthesizer.load(run, device=device)
    if syn.weights_sha256 != weights_sha256:
        raise RunFolderError(
            f"run folder {run!r} now holds other weights (sha256 {syn.weights_sha256[:12]}...) "
            f"than the model this dataset is generated with ({weights_sha256[:12]}...): it was "
            "retrained meanwhile. Generate into a new folder."
        )
    return _keep(_MODELS, key, syn)  # type: ignore[no-any-return]


def cached_gate(syn: Synthesizer, reference: str, quantile: float) -> Any:
    """The memorisation gate of ``syn`` against the cohort ``reference``, built once per
    process (it loads the training and held-out images)."""
    key = (syn.weights_sha256, reference, float(quantile))
    if key in _GATES:
        _GATES.move_to_end(key)
        return _GATES[key]
    return _keep(_GATES, key, syn.memorisation_gate(reference, quantile=quantile))


def shard_name(job: dict[str, Any], shard: int) -> str:
    """``shard-00012``: the shard's image folder, and its manifest part with ``.csv``."""
    return f"shard-{shard:0{int(job['shard_width'])}d}"


def image_id(job: dict[str, Any], item: int) -> str:
    """``syn-<dataset id>-<item>``: the image (and subject) id of item ``item``."""
    return f"syn-{job['dataset_id']}-{item:0{int(job['id_width'])}d}"


def shard_items(job: dict[str, Any], shard: int) -> range:
    """The items of shard ``shard``."""
    size = int(job["shard_size"])
    return range(shard * size, min(int(job["n"]), (shard + 1) * size))


def path_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes; of a folder (a DICOM series): of the lines ``name NUL
    sha256-of-file`` of its files, sorted by name."""
    from medgen._internal.provenance import file_sha256

    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.iterdir() if q.is_file()):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def item_where(job: dict[str, Any], items: range, rows: list[dict[str, Any]] | None) -> Any:
    """The given conditions of ``items``: a DataFrame (a row per item) or a dict (all)."""
    if rows is not None:
        return pd.DataFrame(rows, columns=list(job["table_columns"]), dtype=object)
    where = dict(job["where"] or {})
    cells = job["cells"]
    if cells:
        return pd.DataFrame([{**where, **cells[i % len(cells)]} for i in items])
    return where or None


def _save_item(
    img: np.ndarray,
    path: Path,
    job: dict[str, Any],
    item: int,
    draw: int,
    mask: np.ndarray | None = None,
    mask_path: Path | None = None,
) -> None:
    from medgen.generative._synth_write import save_sample

    tags = None
    if job["format"] == "dicom":
        label = f"SYNTHETIC^{item:0{int(job['id_width'])}d}"
        tags = {"PatientName": label, "PatientID": label}
    save_sample(
        img,
        path,
        format=job["format"],
        spatial_dims=int(job["spatial_dims"]),
        spacing=job["spacing"],
        description=f"medgen {job['model_id']} seed {job['seed']} item {item} draw {draw}",
        mask=mask,
        mask_path=mask_path,
        dicom_tags=tags,
    )


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def run_shard(job: dict[str, Any], shard: int, rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Sample, gate and write shard ``shard`` of ``job`` (see :func:`medgen.batch.generate`).

    Args:
        job: the job description the driver built (plain, picklable values).
        shard: the shard number.
        rows: the given conditions of the shard's items (``conditions=`` tables), else ``None``.

    Returns:
        ``{"shard", "n", "rejected"}``: the shard, its images and its rejected draws.
    """
    from medgen._internal.files import write_table
    from medgen._internal.paths import confined, safe_file_name

    out = Path(job["out_dir"])
    items = shard_items(job, shard)
    syn = cached_synthesizer(job["run"], job["weights_sha256"], job["device"])
    gate = cached_gate(syn, job["reference"], float(job["quantile"]))
    res = syn.sample_items(
        np.arange(items.start, items.stop),
        item_where(job, items, rows),
        seed=int(job["seed"]),
        gate=gate,
        max_draws=int(job["max_draws"]),
        guidance_scale=job["guidance_scale"],
        num_inference_steps=job["num_inference_steps"],
        batch_size=int(job["batch_size"]),
    )
    name = shard_name(job, shard)
    folder = confined(out, SHARDS, name)
    folder.mkdir(parents=True, exist_ok=True)
    draws = np.asarray(res.draw, dtype=np.int64)
    # each condition column once, as Python values (not a pandas lookup per item and column)
    values = {c: [_plain(v) for v in res.conditions[c].tolist()] for c in job["conditions"]}
    rows_out = []
    for j, item in enumerate(res.indices.tolist()):
        iid = safe_file_name(image_id(job, item), what="image_id")
        file = iid if job["format"] == "dicom" else f"{iid}.nii.gz"
        path = folder / file  # a safe_file_name in the confined shard folder
        img = res.images[j].detach().cpu().numpy().astype(np.float32)
        mask = mask_file = None
        if res.masks is not None:  # a mask-conditioned model: the mask the image was decoded under
            mask_file = f"{iid}_mask" + ("" if job["format"] == "dicom" else ".nii.gz")
            mask = res.masks[j].detach().cpu().numpy().astype(np.uint8)
        _save_item(
            img,
            path,
            job,
            item,
            int(draws[j]),
            mask=mask,
            mask_path=None if mask_file is None else folder / mask_file,
        )
        row: dict[str, Any] = {
            "image_id": iid,
            "image_path": f"{SHARDS}/{name}/{file}",
            "subject_id": iid,
            "split": job["split"],
            "source": "synthetic",
        }
        if mask_file is not None:
            row[MASK_COLUMN] = f"{SHARDS}/{name}/{mask_file}"
            row[MASK_SHA256] = path_sha256(folder / mask_file)
        for c in job["conditions"]:
            row[c] = values[c][j]
        row.update(
            {
                "seed": int(job["seed"]),
                "item": int(item),
                "draw": int(draws[j]),
                "model_id": job["model_id"],
                "sha256": path_sha256(path),
            }
        )
        rows_out.append(row)
    rejected = res.rejected if res.rejected is not None else pd.DataFrame()
    rejected_path = out / SHARDS / f"{name}.rejected.csv"
    if len(rejected):
        table = rejected.copy()
        table.insert(0, "image_id", [image_id(job, int(i)) for i in table["item"]])
        write_table(table, rejected_path, what="rejected draws")
    else:
        rejected_path.unlink(missing_ok=True)
    # the manifest part, last: the shard is done
    write_table(pd.DataFrame(rows_out), out / SHARDS / f"{name}.csv", what="manifest part")
    return {"shard": int(shard), "n": len(rows_out), "rejected": int(draws.sum())}
