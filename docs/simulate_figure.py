"""Make docs/img/simulate_samples.png: simulated slices by site (rows) and sex x label (columns).

Run from the repository root: ``python docs/simulate_figure.py``. Uses the ``demo`` preset's
configuration, rendered in memory (nothing written but the figure).
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medgen.simulate import iter_subjects, preset


def main(out: pathlib.Path = pathlib.Path("docs/img/simulate_samples.png")) -> None:
    cfg = preset("demo")
    cfg.population.n_subjects = 300
    sites = [s.name for s in cfg.sites]
    cols = [("F", 0), ("F", 1), ("M", 0), ("M", 1)]
    chosen: dict[tuple[str, str, int], np.ndarray] = {}
    for subj in iter_subjects(cfg, seed=3):
        r = subj.record
        key = (r["site"], r["sex"], int(r["label_true"]))
        if key in chosen or (key[2] == 1 and r["severity"] < 0.6):
            continue
        chosen[key] = subj.image
        if len(chosen) == len(sites) * len(cols):
            break
    fig, axes = plt.subplots(len(sites), len(cols), figsize=(2.2 * len(cols), 2.3 * len(sites)))
    for i, site in enumerate(sites):
        for j, (sex, label) in enumerate(cols):
            ax = axes[i, j]
            img = chosen.get((site, sex, label))
            if img is not None:
                # arrays are (x: R->L index, y: P->A); show anterior up, patient left on the right
                ax.imshow(np.flipud(img.T), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"sex={sex} label={label}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{site} ({cfg.sites[i].contrast})", fontsize=9)
    fig.suptitle("medgen.simulate demo preset: severity >= 0.6 positives; women: subtler lesions")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main()
