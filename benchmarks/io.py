"""Cold-load throughput of medgen.io.load against plain nibabel/pydicom and MONAI LoadImage.

Writes (a) the MNI152 T1 template (nilearn, 1 mm, 197x233x189) as .nii.gz and (b) a 100-slice
256x256 DICOM series (uint16 + RescaleSlope/Intercept, shuffled file names) to a temp folder,
then times each loader in one process (calls interleaved round by round, median per loader, so
a change of machine load hits every loader alike) and prints volumes/s and ratios.

Targets (issue 2): medgen.io.load at least as fast as MONAI LoadImage (ratio >= 1.0) and within
1.2x of the plain library (ratio to plain >= 0.83).

Then times one epoch of ``Cohort.dataset`` over 100 volumes with no cache, the memory cache and
the disk cache (``benchmarks/cohort_dataset.py``; target: cached epochs >= 10x faster).

Then ``scan`` over generated DICOM archives of 2,000 and 20,000 files (100-file series, one folder
each, real MR header fields from pydicom's ``MR_small.dcm``): files/s against a bare
``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files (the floor, same process)
and peak Python memory (tracemalloc) per size. Targets (issue 11): at least 1,000 files/s, peak
memory at 20,000 files within 1.2x of 2,000.

Real files (issue 18): nibabel's Siemens MOSAIC ``siemens_dwi_1000.dcm.gz`` (48 slices of
128x128 in one 896x896 image; plain library: ``nibabel.nicom.dicomwrappers`` ``get_data``) and
pydicom-data's 2-frame enhanced CT ``eCT_Supplemental.dcm`` (plain: ``pydicom`` ``pixel_array``
plus rescale). MONAI's ``PydicomReader`` reads the mosaic as one 896x896 slice (wrong
geometry), so its row times a different, wrong result. Same targets.

Run: ``python benchmarks/io.py [--repeats 7] [--cohort-volumes 100] [--scan-sizes 2000,20000]
[--only-scan] [--only-real] [--real-files-table]``
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


def _time_interleaved(
    loaders: list[tuple[str, Callable[[], object]]], repeats: int
) -> dict[str, float]:
    """Median seconds per call of each loader, calls interleaved round by round (one warm-up
    each), so a change of machine load hits every loader alike."""
    times: dict[str, list[float]] = {name: [] for name, _ in loaders}
    for _, fn in loaders:
        fn()
    for _ in range(repeats):
        for name, fn in loaders:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _print_rates(cases: dict[str, list[tuple[str, Callable[[], object]]]], repeats: int) -> None:
    print(f"{'case':<24} {'loader':<30} {'vol/s':>8} {'medgen/this':>12}")
    for case, loaders in cases.items():
        rates = {name: 1.0 / t for name, t in _time_interleaved(loaders, repeats).items()}
        ours = rates["medgen.io.load"]
        for name, rate in rates.items():
            print(f"{case:<24} {name:<30} {rate:8.2f} {ours / rate:12.2f}")


def _real_cases(tmp: Path) -> dict[str, list[tuple[str, Callable[[], object]]]]:
    """Issue 18 rows: a 48-slice Siemens mosaic and a 2-frame enhanced CT, real files."""
    import os

    from monai.transforms import LoadImage
    from nibabel.nicom import dicomwrappers
    from pydicom.data import get_testdata_file

    from medgen.io import load

    mosaic = tmp / "siemens_dwi_1000.dcm"
    src = Path(os.path.dirname(nib.__file__)) / "nicom" / "tests" / "data" / (mosaic.name + ".gz")
    with gzip.open(src) as fh:
        mosaic.write_bytes(fh.read())
    ect = Path(str(get_testdata_file("eCT_Supplemental.dcm")))

    def plain_mosaic() -> np.ndarray:
        return np.asarray(dicomwrappers.wrapper_from_file(str(mosaic)).get_data(), np.float32)

    def plain_enhanced() -> np.ndarray:
        ds = pydicom.dcmread(ect)
        pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        return ds.pixel_array.astype(np.float32) * float(pvt.RescaleSlope) + float(
            pvt.RescaleIntercept
        )

    monai_dicom = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")
    assert tuple(load(mosaic).shape) == (1, 128, 128, 48)
    return {
        "Siemens mosaic 48x128²": [
            ("medgen.io.load", lambda: load(mosaic)),
            ("plain nibabel dicomwrappers", plain_mosaic),
            ("MONAI LoadImage (1 slice)", lambda: monai_dicom(str(mosaic))),
        ],
        "enhanced CT 2x512²": [
            ("medgen.io.load", lambda: load(ect)),
            ("plain pydicom + rescale", plain_enhanced),
            ("MONAI LoadImage", lambda: monai_dicom(str(ect))),
        ],
    }


#: short forms of medgen's error messages for the real-files table
_SHORT_REASONS = {
    "no pixel data": "no pixel data",
    "without an image": "no image (non-image object)",
    "no Rows/Columns": "not an image",
    "holds no DICOM image": "folder holds no image",
    "PixelSpacing is": "zero PixelSpacing, no fallback: pass `spacing=`",
    "contiguous blocks": "gap: split into blocks, pick `part=`",
    "share a position": "repeated positions no tag tells apart",
    "DICOM series; pick one": "several series: pick `series=`",
    "does not fit": "inconsistent mosaic (tiles do not fit)",
    "truncated": "truncated pixel data",
    "all available plugins": "no installed decoder succeeds",
    "invalid literal": "corrupt header value",
    "mixes multi-frame": "mixes multi-frame and single files",
    "neither ImagePositionPatient nor InstanceNumber": "no positions, no InstanceNumber",
    "different orientations": "slices in several orientations (localizer / radial)",
    "different PixelSpacing": "slices with different pixel sizes",
}


def real_files_table() -> str:
    """The markdown table of docs/io.md "Real files tested": every file of pydicom-data,
    pydicom's test files, their folders (as series) and nibabel's nicom data, with what
    ``medgen.io.load`` returns for each."""
    import os
    import re

    from pydicom.data import get_testdata_files

    from medgen.errors import MedgenError
    from medgen.io import load

    nicom = Path(os.path.dirname(nib.__file__)) / "nicom" / "tests" / "data"
    tmp = Path(tempfile.mkdtemp(prefix="medgen-real-"))
    files = [Path(p) for p in get_testdata_files()]
    files += [p.parent for p in files if p.is_file() and p.parent.name != "test_files"]
    files = list(dict.fromkeys(p for p in files if p.is_file() or any(p.iterdir())))
    for p in sorted(nicom.iterdir()):
        if p.name.endswith(".dcm.gz"):
            out = tmp / p.name[:-3]
            with gzip.open(p) as fh:
                out.write_bytes(fh.read())
            files.append(out)
        elif p.suffix == ".dcm":
            files.append(p)

    def label(p: Path) -> str:
        s = str(p)
        if str(nicom) in s or str(tmp) in s:
            return "nibabel: " + p.name + (".gz" if str(tmp) in s else "")
        m = re.search(r"(test_files|data_store/data)/(.*)$", s.replace(os.sep, "/"))
        where = "pydicom: " if "test_files" in s else "pydicom-data: "
        return where + (m.group(2) if m else p.name)

    def describe(p: Path) -> str:
        try:
            f = p if p.is_file() else sorted(q for q in p.iterdir() if q.is_file())[0]
            ds = pydicom.dcmread(f, force=True, stop_before_pixels=True)
            meta = getattr(ds, "file_meta", None)
            ts = meta.get("TransferSyntaxUID") if meta is not None else None
            sop, n = ds.get("SOPClassUID"), int(ds.get("NumberOfFrames") or 1)
        except Exception as err:
            return f"unreadable header ({type(err).__name__})"
        bits = [str(ds.get("Modality", "") or "")]
        if sop is not None:
            bits.append(getattr(sop, "name", str(sop)).replace(" Storage", ""))
        if ds.get("PhotometricInterpretation"):
            bits.append(str(ds.PhotometricInterpretation))
        if n > 1:
            bits.append(f"{n} frames")
        if ts is not None:
            bits.append(getattr(ts, "name", str(ts)))
        elif "Rows" in ds:
            bits.append("no file meta")
        if not p.is_file():
            bits.append(f"folder of {sum(1 for q in p.iterdir() if q.is_file())} files")
        return ", ".join(b for b in bits if b)

    def outcome(p: Path) -> str:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                img = load(p)
            except MedgenError as err:
                msg = str(err)
                reason = next((v for k, v in _SHORT_REASONS.items() if k in msg), msg[:80])
                return f"`{type(err).__name__}`: {reason}"
        sp = "x".join(f"{v:.4g}" for v in img.meta["spacing"])
        notes = []
        if img.meta.get("geometry_assumed"):
            notes.append("no patient geometry")
        if img.meta.get("spacing_source") not in (None, "PixelSpacing"):
            notes.append(f"pixel size: {img.meta['spacing_source']}")
        if img.meta.get("monochrome1_inverted"):
            notes.append("MONOCHROME1 inverted")
        if img.meta.get("mosaic"):
            notes.append("mosaic unpacked")
        if img.meta.get("source_photometric"):
            notes.append(f"{img.meta['source_photometric']} -> RGB")
        if any("file meta" in str(w.message) for w in caught):
            notes.append("force-read, warned")
        return f"`{tuple(img.shape)}`, {sp} mm" + (f" ({'; '.join(notes)})" if notes else "")

    rows, refused = [], []
    for p in sorted(files, key=label):
        if p.is_file() and p.suffix.lower() in (".txt", ".json", ".icc", ".dump", ".gz"):
            refused.append(label(p).split(": ", 1)[1])
            continue
        rows.append(f"| {label(p)} | {describe(p)} | {outcome(p)} |")
    return "\n".join(
        [
            "| file | what it is | what `load` returns |",
            "| --- | --- | --- |",
            *rows,
            "",
            "Not DICOM, refused by suffix (`ImageReadError`): "
            + ", ".join(sorted(set(refused)))
            + ".",
        ]
    )


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
    parser.add_argument(
        "--only-real", action="store_true", help="run only the real-file rows (mosaic, enhanced CT)"
    )
    parser.add_argument(
        "--real-files-table",
        action="store_true",
        help="print the docs/io.md table of every real DICOM file tested, then exit",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.real_files_table:
        print(real_files_table())
        return
    if args.only_scan:
        _scan_benchmark([int(v) for v in args.scan_sizes.split(",") if v])
        return
    if args.only_real:
        warnings.filterwarnings("ignore")
        _print_rates(_real_cases(Path(tempfile.mkdtemp(prefix="medgen-bench-io-"))), args.repeats)
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
    cases.update(_real_cases(tmp))
    _print_rates(cases, args.repeats)
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
