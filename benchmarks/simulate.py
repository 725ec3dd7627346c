"""Benchmark medgen.simulate: throughput, flat memory, and site effects vs a TorchIO baseline.

Run from the repository root: ``PYTHONPATH=. python benchmarks/simulate.py [--quick]``.

Prints three tables:

1. subjects/s writing NIfTI for the 2D (``demo``, 64x64) and 3D (``demo3d``, 64^3 at 3 mm) presets;
2. peak traced memory (tracemalloc) of ``simulate`` at N = 200 and N = 2,000 (2D): the ratio must
   stay near 1 since subjects are streamed to disk;
3. per-subject site effects (bias field + blur + Rician noise on a 64x64 slice): medgen's NumPy
   implementation vs the baseline TorchIO ``RandomBiasField`` + ``RandomBlur`` + ``RandomNoise``
   (ratio = baseline time / medgen time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np


def _throughput(name: str, n: int) -> float:
    from medgen.simulate import preset, simulate

    cfg = preset(name)
    cfg.population.n_subjects = n
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        simulate(cfg, d, progress=False)
        return n / (time.perf_counter() - t)


def _peak_mb(n: int) -> float:
    from medgen.simulate import preset, simulate

    cfg = preset("demo")
    cfg.population.n_subjects = n
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        simulate(cfg, d, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak / 2**20


def _site_effects(reps: int) -> tuple[float, float]:
    import torch
    import torchio as tio

    from medgen.simulate import _site
    from medgen.simulate._config import SiteConfig

    torch.set_num_threads(1)
    site = SiteConfig(bias_field=0.3, blur_fwhm_mm=3.0, noise_sigma=0.03)
    img = np.random.default_rng(0).random((64, 64)).astype(np.float64)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(reps):
        c = _site.draw_bias_coefficients(site, 2, rng)
        x = img * _site.bias_field(img.shape, c)
        x = _site.blur(x, (3.0, 3.0), (3.0, 3.0))
        _site.rician(x, site.noise_sigma, rng)
    ours = (time.perf_counter() - t) / reps
    tf = tio.Compose(
        [
            tio.RandomBiasField(coefficients=0.3, order=3),
            tio.RandomBlur(std=(3.0 / 2.3548, 3.0 / 2.3548, 0, 0, 0, 0)),
            tio.RandomNoise(std=(0.03, 0.03)),
        ]
    )
    subject = tio.Subject(t1=tio.ScalarImage(tensor=torch.from_numpy(img[None, ..., None]).float()))
    t = time.perf_counter()
    for i in range(reps):
        torch.manual_seed(i)
        tf(subject)
    base = (time.perf_counter() - t) / reps
    return ours, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (N=50/20, no N=2000)")
    args = parser.parse_args()
    n2d, n3d = (50, 10) if args.quick else (400, 40)
    print("| preset | N | subjects/s |")
    print("| --- | --- | --- |")
    print(f"| demo (2D 64x64) | {n2d} | {_throughput('demo', n2d):.1f} |")
    print(f"| demo3d (3D 64^3) | {n3d} | {_throughput('demo3d', n3d):.2f} |")
    small, large = (50, 200) if args.quick else (200, 2000)
    p_small, p_large = _peak_mb(small), _peak_mb(large)
    print()
    print(f"| N | peak traced memory (MiB) | ratio to N={small} |")
    print("| --- | --- | --- |")
    print(f"| {small} | {p_small:.1f} | 1.00 |")
    print(f"| {large} | {p_large:.1f} | {p_large / p_small:.2f} |")
    ours, base = _site_effects(50 if args.quick else 300)
    print()
    print("| site effects per 64x64 subject | ms | speed-up vs baseline |")
    print("| --- | --- | --- |")
    print(f"| baseline: TorchIO BiasField+Blur+Noise | {base * 1e3:.2f} | 1.00 |")
    print(f"| medgen.simulate (NumPy/SciPy) | {ours * 1e3:.2f} | {base / ours:.1f} |")


if __name__ == "__main__":
    main()
