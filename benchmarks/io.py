"""Cold-load throughput of medgen.io.load against plain nibabel/pydicom and MONAI LoadImage.

Writes (a) the MNI152 T1 template (nilearn, 1 mm, 197x233x189) as .nii.gz and (b) a 100-slice
256x256 DICOM series (uint16 + RescaleSlope/Intercept, shuffled file names) to a temp folder,
then times each loader in one process and prints volumes/s and ratios.

Targets (issue 2): medgen.io.load at least as fast as MONAI LoadImage (ratio >= 1.0) and within
1.2x of the plain library (ratio to plain >= 0.83).

Then times one epoch of ``Cohort.dataset`` over 100 volumes with no cache, the memory cache and
the disk cache (``benchmarks/cohort_dataset.py``; target: cached epochs >= 10x faster).

Then ``scan`` over generated DICOM archives of 2,000 and 20,000 files (100-file series, one folder
each, real MR header fields from pydicom's ``MR_small.dcm``): files/s against a bare
``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files (the floor, same process)
and peak Python memory (tracemalloc) per size. Targets (issue 11): at least 1,000 files/s, peak
memory at 20,000 files within 1.2x of 2,000.

Run: ``python benchmarks/io.py [--repeats 7] [--cohort-volumes 100] [--scan-sizes 2000,20000]
[--only-scan]``
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

# this file is named like the stdlib's io: run as a script, keep its folder off sys.path and put
# the repository root on it so a source checkout works without installing
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds per call after one warm-up call (imports, page cache)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plain_nibabel(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def plain_nibabel_stdlib_gzip(path: Path) -> np.ndarray:
    """nibabel on bytes decompressed by the stdlib's zlib (what medgen does with isal)."""
    data = gzip.decompress(path.read_bytes())
    return np.asarray(nib.Nifti1Image.from_bytes(data).get_fdata(dtype=np.float32))


def plain_pydicom(folder: Path) -> np.ndarray:
    """Read every file, sort by position along z, stack, rescale: the minimal correct reader."""
    dss = [pydicom.dcmread(p) for p in folder.iterdir()]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array for d in dss]).astype(np.float32)
    slopes = np.asarray([float(d.RescaleSlope) for d in dss], np.float32)[:, None, None]
    inters = np.asarray([float(d.RescaleIntercept) for d in dss], np.float32)[:, None, None]
    return vol * slopes + inters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--cohort-volumes",
        type=int,
        default=100,
        help="volumes in the Cohort.dataset cache benchmark (0 skips it)",
    )
    parser.add_argument(
        "--scan-sizes",
        default="2000,20000",
        help="comma-separated archive sizes (files) for the scan benchmark ('' skips it)",
    )
    parser.add_argument("--only-scan", action="store_true", help="run only the scan benchmark")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only_scan:
        _scan_benchmark([int(v) for v in args.scan_sizes.split(",") if v])
        return
    warnings.filterwarnings("ignore")
    from monai.transforms import LoadImage
    from nilearn.datasets import load_mni152_template

    from medgen.io import load, save

    tmp = Path(tempfile.mkdtemp(prefix="medgen-bench-io-"))
    nii = tmp / "mni152_t1.nii.gz"
    nib.save(load_mni152_template(resolution=1), nii)
    rng = np.random.default_rng(0)
    series = tmp / "series"
    vol = rng.normal(100.0, 40.0, size=(1, 256, 256, 100)).astype(np.float32)
    save(vol, series, affine=np.diag([0.7, 0.7, 1.5, 1.0]), dicom_tags={"Modality": "CT"})
    for p in sorted(series.iterdir()):  # shuffle file names: no loader may rely on them
        p.rename(series / f"{rng.integers(1e12):012d}.dcm")

    monai_nifti = LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")
    monai_dicom = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")
    cases = {
        "MNI152 T1 .nii.gz": [
            ("medgen.io.load", lambda: load(nii)),
            ("plain nibabel", lambda: plain_nibabel(nii)),
            ("nibabel + stdlib gzip bytes", lambda: plain_nibabel_stdlib_gzip(nii)),
            ("MONAI LoadImage", lambda: monai_nifti(str(nii))),
        ],
        "DICOM 100x256x256": [
            ("medgen.io.load", lambda: load(series)),
            ("plain pydicom + np.stack", lambda: plain_pydicom(series)),
            ("MONAI LoadImage", lambda: monai_dicom(str(series))),
        ],
    }
    print(f"{'case':<20} {'loader':<30} {'vol/s':>8} {'medgen/this':>12}")
    for case, loaders in cases.items():
        rates = {name: 1.0 / _time(fn, args.repeats) for name, fn in loaders}
        ours = rates["medgen.io.load"]
        for name, rate in rates.items():
            print(f"{case:<20} {name:<30} {rate:8.2f} {ours / rate:12.2f}")
    # sanity: everyone read the same voxels
    a, b = load(nii)[0].numpy(), plain_nibabel(nii)
    assert np.array_equal(a, b), "medgen and nibabel disagree on the MNI152 voxels"
    c, d = load(series)[0].numpy().transpose(2, 1, 0), plain_pydicom(series)
    assert np.allclose(c, d), "medgen and pydicom disagree on the DICOM voxels"
    print(
        "\nmedgen/this > 1: medgen is faster. Targets: >= 1.0 vs MONAI, >= 0.83 vs the plain library."
    )
    if args.cohort_volumes > 0:  # issue 2: epoch time of Cohort.dataset by cache mode
        print()
        _cohort_benchmark().run(n=args.cohort_volumes)
    if args.scan_sizes:
        print()
        _scan_benchmark([int(v) for v in args.scan_sizes.split(",") if v])


def _write_archive(root: Path, n_files: int, per_series: int = 100) -> None:
    """``n_files`` small single-frame MR files, ``per_series`` to a series folder."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    template.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    template.Rows = template.Columns = 8
    for k in range(n_files):
        s, i = divmod(k, per_series)
        if i == 0:
            folder = root / f"patient{s // 4:04d}" / f"series{s:04d}"
            folder.mkdir(parents=True)
            series_uid = generate_uid()
            template.PatientID = f"P{s // 4:05d}"
        template.SeriesInstanceUID = series_uid
        template.SOPInstanceUID = generate_uid()
        template.InstanceNumber = i + 1
        template.ImagePositionPatient = [0.0, 0.0, float(i) * 2.0]
        template.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


_PEAK_RSS = """
import resource, sys
from medgen.io import scan
scan(sys.argv[1])
try:  # this process's high-water mark (ru_maxrss would include the parent's: it survives exec)
    with open("/proc/self/status") as fh:
        print(next(int(l.split()[1]) for l in fh if l.startswith("VmHWM")) / 1024)
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _scan_benchmark(sizes: list[int]) -> None:
    """scan files/s vs a bare header-read loop, and peak memory by archive size."""
    import gc
    import subprocess
    import tracemalloc

    from medgen.io import scan

    print(
        f"{'files':>7} {'scan files/s':>13} {'dcmread files/s':>16} {'scan/dcmread':>13} "
        f"{'peak RSS MB':>12} {'RSS / first':>12} {'traced MB':>10}"
    )
    first_rss = None
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"medgen-bench-scan-{n}-"))
        _write_archive(root, n)
        files = sorted(root.rglob("*.dcm"))
        t0 = time.perf_counter()
        for f in files:
            pydicom.dcmread(f, stop_before_pixels=True)
        floor = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        manifest, errors = scan(root)
        rate = n / (time.perf_counter() - t0)
        assert len(manifest) == -(-n // 100) and errors.empty, (len(manifest), errors.head())
        gc.collect()
        tracemalloc.start()
        scan(root)
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        # the whole process's peak, in a fresh interpreter (what a user's machine sees)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, str(root)],
            capture_output=True,
            text=True,
            check=True,
            cwd=_HERE.parent,
        )
        rss = float(out.stdout.split()[-1])
        first_rss = first_rss or rss
        print(
            f"{n:7d} {rate:13.0f} {floor:16.0f} {rate / floor:13.2f} {rss:12.1f} "
            f"{rss / first_rss:12.2f} {traced:10.2f}"
        )
    print(
        "\nTargets: scan >= 1,000 files/s; peak RSS at the largest size within 1.2x of the first. "
        "traced = Python allocations during one scan (tracemalloc; the manifest grows with the "
        "number of series, nothing grows with the number of files)."
    )


def _cohort_benchmark() -> types.ModuleType:
    """benchmarks/cohort_dataset.py, loaded by path (this folder is kept off sys.path, see top)."""
    spec = importlib.util.spec_from_file_location("cohort_dataset", _HERE / "cohort_dataset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
