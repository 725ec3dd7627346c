"""``check_dataset``: verify a finished synthetic dataset folder without changing it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        out_dir: the dataset folder.
        n_expected: the images the generation was asked for (``None``: unknown).
        n_rows: the manifest's rows.
        n_checked: the images whose file was read and hashed.
        problems: one row per problem (``image_id``, ``path``, ``problem``); empty when the
            folder is sound.
    """

    out_dir: Path
    n_expected: int | None
    n_rows: int
    n_checked: int
    problems: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["image_id", "path", "problem"])
    )

    @property
    def ok(self) -> bool:
        """No problem found."""
        return len(self.problems) == 0

    def message(self, limit: int = 5) -> str:
        """One line: the summary, or the problems (the first ``limit``) and how to repair."""
        if self.ok:
            return (
                f"{self.out_dir}: {self.n_rows} images, ids unique, every file readable and "
                "matching its sha256."
            )
        shown = "; ".join(
            f"{r.image_id or r.path!s}: {r.problem!s}"
            for r in self.problems.head(limit).itertuples(index=False)
        )
        more = f" (and {len(self.problems) - limit} more)" if len(self.problems) > limit else ""
        return (
            f"check: {self.out_dir} has {len(self.problems)} problem(s): {shown}{more}. To "
            "repair a shard, delete its manifest part (shards/shard-<k>.csv) and rerun the "
            "same generate command: it redoes that shard."
        )

    def __str__(self) -> str:
        return self.message()

    def _repr_html_(self) -> str:
        head = f"<p>{self.message(0 if not self.ok else 5)}</p>"
        return head + ("" if self.ok else str(self.problems._repr_html_()))  # type: ignore[operator]


def check_dataset(out_dir: str | os.PathLike[str], *, read_images: bool = True) -> CheckReport:
    """Verify a folder written by :func:`medgen.batch.generate`.

    Checks: the completion marker and the files it vouches for (manifest, provenance, card);
    the manifest's row count against the requested ``n``, unique ``image_id`` and item
    indices ``0..n-1``; every image present, matching its ``sha256`` and (``read_images``)
    readable with :func:`medgen.io.load`; no stray files in ``shards/``. Changes nothing.

    Returns:
        :class:`CheckReport` (``report.ok``, ``report.problems``).

    Raises:
        MedgenFileNotFoundError: ``out_dir`` holds no generation (no ``generate.json``).
    """
    from medgen._internal.runs import COMPLETE, check_complete
    from medgen.batch._generate import SPEC, _read_spec
    from medgen.batch._shard import MASK_COLUMN, MASK_SHA256, SHARDS, path_sha256
    from medgen.errors import MedgenError, MedgenFileNotFoundError, RunFolderError

    out = Path(out_dir).expanduser()
    spec = _read_spec(out) if out.is_dir() else None
    if spec is None:
        raise MedgenFileNotFoundError(
            f"check: {str(out)!r} holds no synthetic dataset (no {SPEC}); pass the -o folder of "
            "`medgen synth generate`."
        )
    problems: list[dict[str, Any]] = []

    def problem(image_id: Any, path: Any, what: str) -> None:
        problems.append({"image_id": image_id, "path": path, "problem": what})

    n = int(spec["arguments"]["n"])
    if not (out / COMPLETE).is_file():
        problem("", str(out), f"unfinished (no {COMPLETE}): rerun the same generate command")
    else:
        try:
            check_complete(out, what="synthetic dataset")
        except RunFolderError as err:
            problem("", COMPLETE, str(err))
    path = out / "manifest.csv"
    if not path.is_file():
        problem("", "manifest.csv", "missing")
        return CheckReport(out, n, 0, 0, pd.DataFrame(problems))
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if len(df) != n:
        problem("", "manifest.csv", f"{len(df)} rows, but {n} images were asked for")
    for iid in df.loc[df["image_id"].duplicated(), "image_id"]:
        problem(iid, "manifest.csv", "duplicate image_id")
    items = pd.to_numeric(df["item"], errors="coerce")
    if items.isna().any() or sorted(items.astype("Int64").tolist()) != list(range(n)):
        problem("", "manifest.csv", f"item indices are not 0..{n - 1}, each once")
    listed: set[str] = set()
    checked = 0
    masked = MASK_COLUMN in df.columns and MASK_SHA256 in df.columns
    for row in df.itertuples(index=False):
        rel = str(row.image_path)
        listed.add(rel)
        p = out / rel
        if not p.exists():
            problem(row.image_id, rel, "file missing")
            continue
        if path_sha256(p) != row.sha256:
            problem(row.image_id, rel, "sha256 differs from the manifest (corrupted or replaced)")
            continue
        if masked:  # a mask-conditioned model's lesion mask, beside its image
            mrel = str(getattr(row, MASK_COLUMN))
            listed.add(mrel)
            if not (out / mrel).exists():
                problem(row.image_id, mrel, "lesion mask missing")
                continue
            if path_sha256(out / mrel) != getattr(row, MASK_SHA256):
                problem(row.image_id, mrel, "lesion mask's sha256 differs from the manifest")
                continue
        if read_images:
            from medgen.io import load

            try:
                load(p)
            except (MedgenError, OSError, ValueError) as err:
                problem(row.image_id, rel, f"unreadable ({' '.join(str(err).split())[:200]})")
                continue
        checked += 1
    shards = out / SHARDS
    if shards.is_dir():
        for sub in sorted(shards.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    rel = f"{SHARDS}/{sub.name}/{f.name}"
                    if rel not in listed:
                        problem("", rel, "not in the manifest (stray file)")
    return CheckReport(out, n, len(df), checked, pd.DataFrame(problems))
