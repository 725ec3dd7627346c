"""Tests of medgen.cohort: manifest validation, selection, subgroups, splits, datasets, `medgen info`.

Images are real anatomy: crops of nilearn's MNI152 T1 template written as NIfTI, and pydicom's
CT_small for the single-slice DICOM case. Split statistics use simulated metadata tables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medgen.cohort import Cohort, load_schema
from medgen.errors import ManifestError, MedgenFileNotFoundError, MedgenValueError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- fixtures
def _write_nifti(path: Path, data: np.ndarray, spacing: float = 2.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([spacing, spacing, spacing, 1.0])), str(path))


@pytest.fixture()
def cohort_dir(tmp_path: Path, mni: np.ndarray) -> Path:
    """12 subjects x 2 images (16x16x8 MNI crops), a manifest.csv with relative paths."""
    rng = np.random.default_rng(0)
    rows = []
    sites = ["A", "B", "C"]
    for s in range(12):
        for k in range(2):
            x0, y0, z0 = (int(v) for v in rng.integers(20, 60, size=3))
            crop = mni[x0 : x0 + 16, y0 : y0 + 16, z0 : z0 + 8].copy()
            rel = f"images/sub-{s:02d}/img-{k}.nii.gz"
            _write_nifti(tmp_path / rel, crop)
            rows.append(
                {
                    "image_id": f"s{s:02d}_{k}",
                    "image_path": rel,
                    "subject_id": f"sub-{s:02d}",
                    "split": "",
                    "source": "real" if s < 10 else "synthetic",
                    "label": s % 2,
                    "sex": ["F", "M", None][s % 3],
                    "age": 30.0 + s,
                    "site": sites[s % 3],
                    "scanner_field": 1.5 if s < 6 else 3.0,
                }
            )
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def _manifest(cohort_dir: Path) -> pd.DataFrame:
    return pd.read_csv(cohort_dir / "manifest.csv", dtype={"split": str})


def _write(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def simulated_table(n_subjects: int, *, seed: int = 0) -> pd.DataFrame:
    """Metadata of a realistic cohort: 1-4 images per subject, 30% positive, 3 sites, 2 sexes."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        label = int(rng.random() < 0.3)
        sex = "F" if rng.random() < 0.55 else "M"
        site = rng.choice(["A", "B", "C"], p=[0.5, 0.3, 0.2])
        for k in range(int(rng.integers(1, 5))):
            rows.append(
                {
                    "image_id": f"{s}-{k}",
                    "image_path": f"/data/{s}/{k}.nii.gz",
                    "subject_id": f"P{s:04d}",
                    "split": "",
                    "source": "real",
                    "label": label,
                    "sex": sex,
                    "site": str(site),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- schema
def test_schema_copy_in_repo_matches_packaged_schema() -> None:
    repo_copy = json.loads((REPO / "data_manifests" / "schema.json").read_text())
    assert repo_copy == load_schema()
    spec = load_schema()["x-medgen"]
    assert spec["required_columns"] == load_schema()["required"]
    assert spec["required_columns"] == ["image_id", "image_path", "subject_id", "split", "source"]


def test_example_manifest_validates_against_schema_without_files() -> None:
    example = REPO / "data_manifests" / "example_manifest.csv"
    cohort = Cohort.from_manifest(example, check_files=False)
    assert len(cohort) >= 4
    assert {"sex", "age", "site"} <= set(cohort.attributes)


# ---------------------------------------------------------------------- reading
def test_from_manifest_resolves_paths_relative_to_manifest(cohort_dir: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    assert len(cohort) == 24
    assert cohort.root == cohort_dir.resolve()
    assert all(p.is_absolute() and p.is_file() for p in cohort.paths)
    assert cohort.paths[0] == cohort_dir.resolve() / "images/sub-00/img-0.nii.gz"
    assert cohort.label_columns == ("label",)
    assert cohort.attributes == ["sex", "age", "site", "scanner_field"]
    assert cohort.splits == {"": 24}
    assert len(cohort.subjects) == 12
    import hashlib

    digest = hashlib.sha256((cohort_dir / "manifest.csv").read_bytes()).hexdigest()
    assert cohort.history[0]["sha256"] == digest
    # .df is a copy: mutating it does not change the cohort
    df = cohort.df
    df.loc[0, "image_id"] = "changed"
    assert cohort.image_ids[0] == "s00_0"


def test_from_manifest_with_root_and_dataframe(cohort_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    manifest = shutil.copy(cohort_dir / "manifest.csv", moved / "manifest.csv")
    with pytest.raises(MedgenFileNotFoundError):
        Cohort.from_manifest(manifest)
    cohort = Cohort.from_manifest(manifest, root=cohort_dir)
    assert all(p.is_file() for p in cohort.paths)

    df = _manifest(cohort_dir)
    with pytest.raises(ManifestError, match=r"relative paths .* Pass root="):
        Cohort.from_manifest(df)
    assert len(Cohort.from_manifest(df, root=cohort_dir)) == 24
    df["image_path"] = [str(cohort_dir / p) for p in df["image_path"]]
    assert Cohort.from_manifest(df).paths == Cohort.from_manifest(df, root="/nowhere").paths


def test_parquet_roundtrip_and_to_manifest_relative(cohort_dir: Path, tmp_path: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").split(seed=3)
    out_dir = tmp_path / "derived" / "deeper"
    for name in ("m.parquet", "m.csv"):
        written = cohort.to_manifest(out_dir / name)
        raw = pd.read_parquet(written) if name.endswith("parquet") else pd.read_csv(written)
        # written paths are relative to the new file's folder and point at the same images
        assert not any(os.path.isabs(p) for p in raw["image_path"])
        assert raw["image_path"][0].startswith("../../")
        back = Cohort.from_manifest(written)
        assert back.paths == cohort.paths
        assert back.image_ids == cohort.image_ids
        assert back.df["split"].tolist() == cohort.df["split"].tolist()
        np.testing.assert_array_equal(back.df["age"], cohort.df["age"])
    # atomic write leaves no temporary files
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.csv", "m.parquet"]
    with pytest.raises(MedgenValueError, match=r"to_manifest\('.*m\.xlsx'\): use a path ending"):
        cohort.to_manifest(out_dir / "m.xlsx")


def test_to_manifest_failure_keeps_existing_file(cohort_dir: Path, tmp_path: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    target = cohort.to_manifest(tmp_path / "keep.parquet")
    before = target.read_bytes()
    bad = cohort.select()
    bad._df["weird"] = [object()] * len(bad)  # pyarrow cannot write arbitrary objects
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's own error type
        bad.to_manifest(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


# ---------------------------------------------------------------------- validation errors
def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(MedgenFileNotFoundError, match=r"nope\.csv' does not exist"):
        Cohort.from_manifest(tmp_path / "nope.csv")


def test_bad_suffix(tmp_path: Path) -> None:
    p = tmp_path / "m.xlsx"
    p.write_text("x")
    with pytest.raises(ManifestError, match=r"suffix '\.xlsx'; medgen reads manifests ending in"):
        Cohort.from_manifest(p)


def test_missing_required_column_names_file_and_column(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir).drop(columns=["subject_id"]).rename(columns={"source": "Source"})
    path = _write(df, cohort_dir / "bad.csv")
    with pytest.raises(ManifestError) as info:
        Cohort.from_manifest(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing required column(s) ['subject_id', 'source']" in msg
    assert "Rename 'Source' -> 'source'" in msg
    assert isinstance(info.value, ValueError)


def test_semicolon_separated_csv_gets_a_hint(cohort_dir: Path) -> None:
    path = cohort_dir / "semi.csv"
    _manifest(cohort_dir).to_csv(path, sep=";", index=False)
    with pytest.raises(ManifestError, match=r"looks ';'-separated; medgen reads comma-separated"):
        Cohort.from_manifest(path)


def test_empty_manifest(cohort_dir: Path) -> None:
    path = _write(_manifest(cohort_dir).iloc[:0], cohort_dir / "empty.csv")
    with pytest.raises(ManifestError, match=r"empty\.csv has the columns but no rows"):
        Cohort.from_manifest(path)


def test_duplicate_image_ids_listed(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df.loc[1, "image_id"] = "s00_0"
    df.loc[5, "image_id"] = "s01_0"
    path = _write(df, cohort_dir / "dup.csv")
    with pytest.raises(ManifestError) as info:
        Cohort.from_manifest(path)
    msg = str(info.value)
    assert "column 'image_id' must be unique, but 2 id(s) appear more than once" in msg
    assert "'s00_0', 's01_0'" in msg and "dup.csv" in msg


def test_missing_files_listed_with_count(cohort_dir: Path) -> None:
    for k in range(4):
        (cohort_dir / f"images/sub-0{k}/img-1.nii.gz").unlink()
    with pytest.raises(MedgenFileNotFoundError) as info:
        Cohort.from_manifest(cohort_dir / "manifest.csv")
    msg = str(info.value)
    assert "4 of 24 file(s) in column 'image_path' do not exist" in msg
    assert "sub-00/img-1.nii.gz" in msg and "(and 1 more)" in msg
    assert "check_files=False" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert len(Cohort.from_manifest(cohort_dir / "manifest.csv", check_files=False)) == 24


def test_subject_in_two_splits(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df["split"] = "train"
    df.loc[df["image_id"] == "s03_1", "split"] = "test"
    path = _write(df, cohort_dir / "leak.csv")
    with pytest.raises(ManifestError) as info:
        Cohort.from_manifest(path)
    assert "1 subject(s) have images in more than one split" in str(info.value)
    assert "'sub-03' in ['test', 'train']" in str(info.value)


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [("valid", "val"), ("Train", "train"), ("testing", "test"), ("validation", "val")],
)
def test_unknown_split_suggests_closest(cohort_dir: Path, bad: str, suggestion: str) -> None:
    df = _manifest(cohort_dir)
    df.loc[df["subject_id"] == "sub-02", "split"] = bad
    path = _write(df, cohort_dir / "split.csv")
    with pytest.raises(ManifestError) as info:
        Cohort.from_manifest(path)
    msg = str(info.value)
    assert f"column 'split' has unknown value(s) {bad!r}" in msg
    assert "allowed are ['train', 'val', 'test'] or empty" in msg
    assert msg.endswith(f"Did you mean {suggestion!r}?")


def test_unknown_source(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df.loc[3, "source"] = "synth"
    with pytest.raises(
        ManifestError, match=r"'source' has unknown value\(s\) 'synth'.*Did you mean 'synthetic'\?"
    ):
        Cohort.from_manifest(df, root=cohort_dir)


def test_empty_required_cell_names_line(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df.loc[4, "subject_id"] = None
    with pytest.raises(
        ManifestError, match=r"column 'subject_id' is empty in 1 row\(s\) \(file lines 6\)"
    ):
        Cohort.from_manifest(_write(df, cohort_dir / "hole.csv"))


def test_non_numeric_age(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df["age"] = df["age"].astype(object)
    df.loc[2, "age"] = "forty"
    with pytest.raises(ManifestError, match=r"column 'age' must be numeric; found 'forty'"):
        Cohort.from_manifest(_write(df, cohort_dir / "age.csv"))


# ---------------------------------------------------------------------- select / subgroups
def test_select(cohort_dir: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    df = cohort.df
    assert len(cohort.select(source="synthetic")) == 4
    assert len(cohort.select(sex="F", site=["A", "B"])) == int(
        ((df["sex"] == "F") & df["site"].isin(["A", "B"])).sum()
    )
    assert len(cohort.select(sex=None)) == int(df["sex"].isna().sum()) == 8
    assert len(cohort.select(split="train")) == 0
    with pytest.raises(MedgenValueError, match=r"unknown split.*Did you mean 'val'\?"):
        cohort.select(split="valid")
    with pytest.raises(MedgenValueError, match=r"no column 'sx'.*Did you mean 'sex'\?"):
        cohort.select(sx="F")


def test_subgroups_match_pandas_groupby_and_keep_missing(cohort_dir: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").split(seed=1)
    table = cohort.subgroups(["sex", "site"])
    assert table.index.names == ["sex", "site", "split", "label"]
    assert list(table.columns) == ["n_images", "n_subjects"]
    assert table["n_images"].sum() == len(cohort)
    df = cohort.df
    expected = df.groupby(["sex", "site", "split", "label"], dropna=False).size()
    pd.testing.assert_series_equal(
        table["n_images"].sort_index(), expected.sort_index(), check_names=False
    )
    # missing sex is its own group, never dropped
    nan_rows = table[table.index.get_level_values("sex").isna()]
    assert nan_rows["n_images"].sum() == int(df["sex"].isna().sum()) == 8
    subj = df.groupby(["site", "split"]).subject_id.nunique()
    got = cohort.subgroups(["site"], label=None)["n_subjects"]
    pd.testing.assert_series_equal(got.sort_index(), subj.sort_index(), check_names=False)
    with pytest.raises(MedgenValueError, match=r"no column 'sexx'"):
        cohort.subgroups(["sexx"])
    with pytest.raises(MedgenValueError, match=r"subgroups\(label='grade'\)"):
        cohort.subgroups(["sex"], label="grade")


# ---------------------------------------------------------------------- split
def test_split_is_subject_level_deterministic_and_recorded() -> None:
    cohort = Cohort.from_manifest(simulated_table(200), check_files=False)
    a = cohort.split(seed=7)
    b = cohort.split(seed=7)
    c = cohort.split(seed=8)
    assert a.df["split"].tolist() == b.df["split"].tolist()
    assert a.df["split"].tolist() != c.df["split"].tolist()
    per_subject = a.df.groupby("subject_id")["split"].nunique()
    assert per_subject.max() == 1
    assert set(a.df["split"]) == {"train", "val", "test"}
    assert a.history[-1] == {
        "op": "split",
        "seed": 7,
        "fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
        "stratify": ["label"],
        "unit": "subject",
        "n_strata": 2,
    }
    # a split cohort re-validates (no leakage) and round-trips
    Cohort.from_manifest(a.df, check_files=False)
    with pytest.raises(ManifestError, match=r"already have a split.*overwrite=True"):
        a.split(seed=1)
    assert (
        a.split(seed=1, overwrite=True).df["split"].tolist()
        == cohort.split(seed=1).df["split"].tolist()
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_split_fractions_and_stratification_within_sampling_error(seed: int) -> None:
    n = 600
    cohort = Cohort.from_manifest(simulated_table(n, seed=seed), check_files=False)
    out = cohort.split(seed=seed, stratify=("label", "sex"))
    subj = out.df.drop_duplicates("subject_id")
    frac = subj["split"].value_counts(normalize=True)
    for name, f in {"train": 0.7, "val": 0.15, "test": 0.15}.items():
        # stratified allocation: off by at most one subject per stratum (4 strata)
        assert abs(frac[name] - f) <= 4 / n + 1e-9, (name, frac[name])
    overall = subj.groupby(["label", "sex"]).size() / len(subj)
    for name in ("train", "val", "test"):
        part = subj[subj["split"] == name]
        share = part.groupby(["label", "sex"]).size() / len(part)
        # each stratum's share within a split is within rounding of its overall share
        # (count off by < 1 per stratum, split size off by < 4 subjects: bound 5 / len(part))
        np.testing.assert_allclose(share.reindex(overall.index), overall, atol=5.0 / len(part))


def test_unstratified_split_is_looser_than_stratified() -> None:
    """Stratification must actually help: label balance of small val sets over many seeds."""
    cohort = Cohort.from_manifest(simulated_table(150, seed=5), check_files=False)
    subj = cohort.df.drop_duplicates("subject_id")
    p = subj["label"].mean()
    err_strat, err_plain = [], []
    for seed in range(20):
        for stratify, errs in (((("label",)), err_strat), ((), err_plain)):
            val = cohort.split(seed=seed, stratify=stratify).df.drop_duplicates("subject_id")
            val = val[val["split"] == "val"]
            errs.append(abs(val["label"].mean() - p))
    assert max(err_strat) < 0.05
    assert np.mean(err_strat) < np.mean(err_plain)


def test_split_stratifies_mixed_subjects_on_majority_value() -> None:
    from medgen.cohort._splits import majority_by_subject

    df = pd.DataFrame(
        {
            "subject_id": ["a", "a", "a", "b", "b", "c", "c", "c", "d"],
            "label": [1, 0, 0, 1, 0, np.nan, np.nan, 1, 0],
        }
    )
    got = majority_by_subject(df, "label")
    assert got.to_dict() == {"a": 0, "b": 1, "c": None, "d": 0}  # tie -> first seen; NaN counts

    # 60 subjects whose images disagree: 2 of 3 images carry the subject's true label
    rows = []
    for s in range(60):
        true = int(s < 20)
        for k, lab in enumerate([true, true, 1 - true]):
            rows.append(
                {
                    "image_id": f"{s}-{k}",
                    "image_path": f"/x/{s}-{k}.nii.gz",
                    "subject_id": f"S{s}",
                    "split": "",
                    "source": "real",
                    "label": lab,
                }
            )
    out = Cohort.from_manifest(pd.DataFrame(rows), check_files=False).split(
        seed=0, fractions={"train": 0.5, "test": 0.5}
    )
    subj = out.df.groupby("subject_id")["split"].first()
    positives = [f"S{s}" for s in range(20)]
    # stratified on the majority label: the 20 true positives are split 10/10 exactly
    assert (subj[positives] == "train").sum() == 10
    assert (subj == "train").sum() == 30


def test_split_warns_when_strata_are_too_fine(caplog: pytest.LogCaptureFixture) -> None:
    df = simulated_table(50, seed=3)
    df["age"] = df["subject_id"].str[1:].astype(float) + 20.0  # one age per subject
    cohort = Cohort.from_manifest(df, check_files=False)
    with caplog.at_level("WARNING", logger="medgen.cohort"):
        out = cohort.split(seed=0, stratify=("age",))
    assert "50 strata for 50 subjects" in caplog.text and "age_group" in caplog.text
    assert out.history[-1]["n_strata"] == 50


def test_split_without_label_column_is_unstratified() -> None:
    df = simulated_table(40).drop(columns=["label"])
    out = Cohort.from_manifest(df, check_files=False).split(seed=2)
    assert out.history[-1]["stratify"] == [] and out.history[-1]["n_strata"] == 1
    assert out.df.groupby("subject_id")["split"].nunique().max() == 1


def test_split_argument_errors() -> None:
    cohort = Cohort.from_manifest(simulated_table(30), check_files=False)
    with pytest.raises(MedgenValueError, match=r"fractions must sum to 1, not 1\.2"):
        cohort.split(seed=0, fractions={"train": 0.8, "val": 0.2, "test": 0.2})
    with pytest.raises(MedgenValueError, match=r"unknown split name 'valid'.*Did you mean 'val'\?"):
        cohort.split(seed=0, fractions={"train": 0.8, "valid": 0.2})
    with pytest.raises(MedgenValueError, match=r"must be a number >= 0, not -0\.1"):
        cohort.split(seed=0, fractions={"train": 1.1, "val": -0.1})
    with pytest.raises(MedgenValueError, match=r"no column 'gender'"):
        cohort.split(seed=0, stratify=("gender",))
    with pytest.raises(MedgenValueError, match=r"seed must be an int"):
        cohort.split(seed=0.5)  # type: ignore[arg-type]


def test_concat_checks_unique_ids(cohort_dir: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    real, synth = cohort.select(source="real"), cohort.select(source="synthetic")
    both = Cohort.concat([real, synth])
    assert sorted(both.image_ids) == sorted(cohort.image_ids)
    with pytest.raises(ManifestError, match="must be unique"):
        Cohort.concat([real, real])


# ---------------------------------------------------------------------- CLI
def test_cli_info_counts_and_errors(cohort_dir: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").split(seed=0)
    path = cohort.to_manifest(cohort_dir / "split.csv")
    result = CliRunner().invoke(app, ["info", str(path), "--by", "sex", "--by", "site"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "24 images, 12 subjects" in out
    assert "real=20, synthetic=4" in out
    counts = cohort.df["split"].value_counts()
    assert f"train={counts['train']}" in out
    assert re.search(r"sex\s+site\s+split\s+label\s+n_images\s+n_subjects", out)
    assert "(missing)" in out  # missing sex shown as its own group

    bad = _manifest(cohort_dir).drop(columns=["source"])
    bad_path = _write(bad, cohort_dir / "nosource.csv")
    result = CliRunner().invoke(app, ["info", str(bad_path)])
    assert result.exit_code == 2
    assert "missing required column(s) ['source']" in result.output


# ---------------------------------------------------------------------- datasets
def _items(ds) -> list[dict]:  # type: ignore[no-untyped-def]
    return [ds[i] for i in range(len(ds))]


def test_dataset_items_and_three_cache_modes_identical(cohort_dir: Path, tmp_path: Path) -> None:
    import torch
    from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
    from monai.transforms import ScaleIntensityd

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").split(seed=0)
    tf = ScaleIntensityd(keys="image")
    plain = cohort.dataset(tf, split="train")
    memory = cohort.dataset(tf, split="train", cache="memory")
    disk = cohort.dataset(tf, split="train", cache="disk", cache_dir=tmp_path / "cache")
    assert isinstance(plain, Dataset) and not isinstance(plain, CacheDataset)
    assert isinstance(memory, CacheDataset) and isinstance(disk, PersistentDataset)
    n_train = int((cohort.df["split"] == "train").sum())
    assert len(plain) == len(memory) == len(disk) == n_train

    first = plain[0]
    assert set(first) == {
        "image",
        "image_id",
        "subject_id",
        "label",
        "sex",
        "age",
        "site",
        "scanner_field",
    }
    img = first["image"]
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert tuple(img.shape) == (1, 16, 16, 8)
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0  # ScaleIntensityd ran
    np.testing.assert_allclose(img.affine.numpy()[:3, :3], np.diag([2.0, 2.0, 2.0]))
    row = cohort.df.set_index("image_id").loc[first["image_id"]]
    raw = nib.load(row["image_path"]).get_fdata()
    np.testing.assert_allclose(
        img[0].numpy(), (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6
    )
    assert first["label"] == row["label"] and first["site"] == row["site"]

    for a, b, c in zip(_items(plain), _items(memory), _items(disk), strict=True):
        assert a["image_id"] == b["image_id"] == c["image_id"]
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(a["image"].as_tensor(), c["image"].as_tensor(), rtol=0, atol=0)
        assert isinstance(c["image"], MetaTensor)
        np.testing.assert_array_equal(a["image"].affine, c["image"].affine)
        assert {k: v for k, v in a.items() if k != "image"} == {
            k: v for k, v in c.items() if k != "image"
        }
    # cache files load with weights_only=True: a warm read must not warn about corrupt files
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warm = _items(disk)
    assert [w["image_id"] for w in warm] == [a["image_id"] for a in _items(plain)]
    # a second disk epoch reads the cache (same files, no new entries) and still agrees
    n_files = len(list((tmp_path / "cache").glob("*.mgc")))
    assert n_files == n_train
    again = _items(cohort.dataset(tf, split="train", cache="disk", cache_dir=tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.mgc"))) == n_train
    for a, c in zip(_items(plain), again, strict=True):
        torch.testing.assert_close(a["image"].as_tensor(), c["image"].as_tensor(), rtol=0, atol=0)


def test_dataset_batches_collate_with_missing_attributes(cohort_dir: Path) -> None:
    from monai.data import DataLoader

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    batch = next(iter(DataLoader(cohort.dataset(), batch_size=6, num_workers=0)))
    assert tuple(batch["image"].shape) == (6, 1, 16, 16, 8)
    assert batch["sex"] == ["F", "F", "M", "M", "", ""]  # missing sex collates as ""
    assert batch["label"].tolist() == [0, 0, 1, 1, 0, 0]


def test_disk_cache_invalidated_when_file_or_transform_changes(
    cohort_dir: Path, tmp_path: Path, mni: np.ndarray
) -> None:
    import torch
    from monai.transforms import ScaleIntensityd, ShiftIntensityd

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").select(subject_id="sub-00")
    cache = tmp_path / "cache"
    ds = cohort.dataset(cache="disk", cache_dir=cache)
    before = ds[0]["image"].clone()
    assert len(list(cache.glob("*.mgc"))) == 1

    # overwrite the image in place with different anatomy (new content, size and mtime)
    path = cohort.paths[0]
    _write_nifti(path, mni[40:56, 40:56, 40:48].copy() * 3.0)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = cohort.dataset(cache="disk", cache_dir=cache)[0]["image"]
    np.testing.assert_allclose(after[0].numpy(), nib.load(path).get_fdata(), rtol=1e-6)
    assert not torch.equal(before, after)
    assert len(list(cache.glob("*.mgc"))) == 2  # stale entry not reused

    # a different deterministic transform gets its own entries, not the cached raw image
    shifted = cohort.dataset(
        ShiftIntensityd(keys="image", offset=5.0), cache="disk", cache_dir=cache
    )
    torch.testing.assert_close(shifted[0]["image"].as_tensor(), after.as_tensor() + 5.0)
    scaled = cohort.dataset(ScaleIntensityd(keys="image", maxv=2.0), cache="disk", cache_dir=cache)
    assert float(scaled[0]["image"].max()) == pytest.approx(2.0)
    assert len(list(cache.glob("*.mgc"))) == 4


def test_dataset_spatial_dims_2_squeezes_single_dicom_slice(tmp_path: Path) -> None:
    from monai.data import MetaTensor
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    mr = Path(get_testdata_file("MR_small.dcm"))
    df = pd.DataFrame(
        {
            "image_id": ["ct", "mr"],
            "image_path": [str(ct), str(mr)],
            "subject_id": ["p1", "p2"],
            "split": ["train", "test"],
            "source": ["real", "real"],
            "label": [1, 0],
        }
    )
    cohort = Cohort.from_manifest(df)
    vol = cohort.dataset()[0]["image"]
    assert tuple(vol.shape) == (1, 128, 128, 1)
    flat = cohort.dataset(spatial_dims=2)
    img = flat[0]["image"]
    assert isinstance(img, MetaTensor)
    assert tuple(img.shape) == (1, 128, 128)
    assert tuple(img.affine.shape) == (3, 3)
    np.testing.assert_array_equal(img.numpy(), vol[..., 0].numpy())
    assert tuple(flat[1]["image"].shape) == (1, 64, 64)


def test_dataset_spatial_dims_2_rejects_volumes_and_bad_options(cohort_dir: Path) -> None:
    from medgen.errors import ImageReadError

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    with pytest.raises(ImageReadError, match=r"has shape \(1, 16, 16, 8\), not a single slice"):
        cohort.dataset(spatial_dims=2)[0]
    with pytest.raises(MedgenValueError, match=r"cache='disk'\) needs cache_dir"):
        cohort.dataset(cache="disk")
    with pytest.raises(MedgenValueError, match=r"dataset\(cache='ram'\)"):
        cohort.dataset(cache="ram")  # type: ignore[arg-type]
    with pytest.raises(MedgenValueError, match=r"key 'mask' reads column 'mask_path'"):
        cohort.dataset(keys=("image", "mask"))
    with pytest.raises(MedgenValueError, match=r"spatial_dims=4"):
        cohort.dataset(spatial_dims=4)


def test_dataset_loads_masks(cohort_dir: Path, mni: np.ndarray) -> None:
    df = _manifest(cohort_dir).head(4)
    masks = []
    for i, rel in enumerate(df["image_path"]):
        m = (nib.load(cohort_dir / rel).get_fdata() > 5000).astype(np.float32)
        mp = f"masks/{i}.nii.gz"
        _write_nifti(cohort_dir / mp, m)
        masks.append(mp)
    df["mask_path"] = masks
    cohort = Cohort.from_manifest(df, root=cohort_dir)
    assert "mask_path" not in cohort.attributes
    item = cohort.dataset(keys=("image", "mask"))[2]
    np.testing.assert_array_equal(item["mask"][0].numpy(), (item["image"][0].numpy() > 5000))


def test_disk_cache_roundtrips_metadata_and_recovers_from_corruption(
    cohort_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientationd, Spacingd

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").select(subject_id="sub-01")
    tf = [Orientationd(keys="image", axcodes="LPS"), Spacingd(keys="image", pixdim=(4.0, 4.0, 4.0))]
    cache = tmp_path / "cache"
    fresh = cohort.dataset(tf, cache="disk", cache_dir=cache)[0]
    warm = cohort.dataset(tf, cache="disk", cache_dir=cache)[0]
    img, back = fresh["image"], warm["image"]
    assert isinstance(back, MetaTensor) and tuple(back.shape) == (1, 8, 8, 4)
    torch.testing.assert_close(img.as_tensor(), back.as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(img.affine, back.affine, rtol=0, atol=0)
    assert back.meta["spacing"] == img.meta["spacing"] and isinstance(back.meta["spacing"], tuple)
    np.testing.assert_array_equal(back.meta["spatial_shape"], img.meta["spatial_shape"])
    assert [op["class"] for op in back.applied_operations] == ["Orientation", "SpatialResample"]
    # the cached item can be inverted like the fresh one (Spacingd's inverse restores the grid)
    inv = Spacingd(keys="image", pixdim=(4.0, 4.0, 4.0)).inverse({"image": back})
    assert tuple(inv["image"].shape) == (1, 16, 16, 8)
    assert {k: v for k, v in warm.items() if k != "image"} == {
        k: v for k, v in fresh.items() if k != "image"
    }
    # a truncated cache file is logged, deleted and recomputed, not fatal and not reused
    entries = sorted(cache.glob("*.mgc"))
    assert len(entries) == len(cohort) == 2
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="medgen.cohort"):
        again = cohort.dataset(tf, cache="disk", cache_dir=cache)[0]["image"]
    assert "corrupt cache entry" in caplog.text
    torch.testing.assert_close(again.as_tensor(), img.as_tensor(), rtol=0, atol=0)
    assert sorted(e.stat().st_size > 1000 for e in entries) == [False, True]


def test_disk_cache_falls_back_to_torch_save_for_objects(cohort_dir: Path, tmp_path: Path) -> None:
    from fractions import Fraction

    from monai.transforms import Lambdad

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").select(subject_id="sub-02")
    tf = Lambdad(keys="age", func=lambda a: Fraction(int(a), 3))
    cache = tmp_path / "cache"
    ds = cohort.dataset(tf, cache="disk", cache_dir=cache)
    assert ds[0]["age"] == Fraction(32, 3)
    assert len(list(cache.glob("*.pt"))) == 1 and not list(cache.glob("*.mgc"))
    # read back with weights_only=True: a Fraction is not allow-listed, so it is recomputed
    assert ds[0]["age"] == Fraction(32, 3)


def test_dataset_surfaces_medgen_errors_for_corrupt_images(
    cohort_dir: Path, tmp_path: Path
) -> None:
    from medgen.errors import ImageReadError

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").select(subject_id="sub-04")
    cohort.paths[0].write_bytes(b"\x1f\x8b not really a gzip file")
    with pytest.raises(ImageReadError, match=r"img-0\.nii\.gz"):
        cohort.dataset()[0]
    with pytest.raises(ImageReadError, match=r"img-0\.nii\.gz"):
        cohort.dataset(cache="disk", cache_dir=tmp_path / "c")[0]
    with pytest.raises(ImageReadError, match=r"img-0\.nii\.gz"):
        cohort.dataset(cache="memory")


def test_extra_path_columns_resolve_check_and_load(cohort_dir: Path, tmp_path: Path) -> None:
    """Any `*_path` column (e.g. paired clean/noisy images) is a path like image_path."""
    import torch

    df = _manifest(cohort_dir).head(4)
    df["noisy_path"] = df["image_path"]  # pairs: same anatomy for the test
    cohort = Cohort.from_manifest(df, root=cohort_dir)
    assert "noisy_path" not in cohort.attributes
    assert all(os.path.isabs(p) for p in cohort.df["noisy_path"])
    item = cohort.dataset(keys=("image", "noisy"))[1]
    torch.testing.assert_close(item["noisy"].as_tensor(), item["image"].as_tensor())
    written = cohort.to_manifest(tmp_path / "out" / "pairs.csv")
    raw = pd.read_csv(written)
    assert raw["noisy_path"][0].startswith("../")
    assert (
        Cohort.from_manifest(written).df["noisy_path"].tolist() == cohort.df["noisy_path"].tolist()
    )
    df.loc[2, "noisy_path"] = "images/nope.nii.gz"
    with pytest.raises(MedgenFileNotFoundError, match=r"1 of 4 file\(s\) in column 'noisy_path'"):
        Cohort.from_manifest(df, root=cohort_dir)


def test_dataset_with_random_transform_memory_cache_and_workers(cohort_dir: Path) -> None:
    """Caching stops at the first random transform; items still batch with worker processes."""
    import torch
    from monai.data import DataLoader
    from monai.transforms import RandFlipd, ScaleIntensityd

    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv").split(seed=0)
    tf = [ScaleIntensityd(keys="image"), RandFlipd(keys="image", prob=1.0, spatial_axis=0)]
    ds = cohort.dataset(tf, split="test", cache="memory")
    ref = cohort.dataset(ScaleIntensityd(keys="image"), split="test")
    for i in range(len(ds)):
        # the flip is applied on top of the cached scaled image, every access
        torch.testing.assert_close(ds[i]["image"].as_tensor(), ref[i]["image"].as_tensor().flip(1))
        torch.testing.assert_close(ds[i]["image"].as_tensor(), ref[i]["image"].as_tensor().flip(1))
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    ids = [i for batch in loader for i in batch["image_id"]]
    assert ids == [str(i) for i in cohort.select(split="test").image_ids]


def test_iteration_and_records(cohort_dir: Path) -> None:
    cohort = Cohort.from_manifest(cohort_dir / "manifest.csv")
    rows = list(cohort)
    assert len(rows) == 24 and rows[0]["image_id"] == "s00_0"
    assert rows[2]["sex"] == "M" and rows[4]["sex"] is None
    recs = cohort.records()
    assert recs[4]["sex"] == "" and recs[4]["image"] == str(cohort.paths[4])
    assert isinstance(recs[0]["label"], int) and isinstance(recs[0]["age"], float)
    assert "Cohort(24 images, 12 subjects" in repr(cohort)
    assert "<table" in cohort._repr_html_()


def test_integer_ids_become_strings_and_paths_are_trimmed(cohort_dir: Path) -> None:
    df = _manifest(cohort_dir)
    df["image_id"] = range(100, 124)
    df["subject_id"] = [int(s.split("-")[1]) for s in df["subject_id"]]
    df["image_path"] = "  " + df["image_path"] + " "
    cohort = Cohort.from_manifest(df, root=cohort_dir)
    assert cohort.image_ids[:2] == ["100", "101"]
    assert cohort.subjects[:2] == ["0", "1"]
    assert all(p.is_file() for p in cohort.paths)
    assert cohort.split(seed=0).df.groupby("subject_id")["split"].nunique().max() == 1


def test_split_many_subjects_many_strata() -> None:
    """~20k images of 8000 subjects, 12 strata: the vectorised majority/strata code path."""
    df = simulated_table(8000, seed=1)
    cohort = Cohort.from_manifest(df, check_files=False)
    out = cohort.split(seed=0, stratify=("label", "sex", "site"))
    assert len(out) == len(df)
    assert out.df.groupby("subject_id")["split"].nunique().max() == 1


def test_cli_info_reads_parquet_without_labels(cohort_dir: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    df = _manifest(cohort_dir).drop(columns=["label"])
    cohort = Cohort.from_manifest(df, root=cohort_dir)
    path = cohort.to_manifest(cohort_dir / "nolabel.parquet")
    result = CliRunner().invoke(app, ["info", str(path), "--by", "site"])
    assert result.exit_code == 0, result.output
    assert re.search(r"site\s+split\s+n_images\s+n_subjects", result.output)
    assert re.search(r"A\s+\(unassigned\)\s+8\s+4", result.output)
    moved = CliRunner().invoke(app, ["info", str(path), "--root", "/nonexistent"])
    assert moved.exit_code == 2 and "--root DIR or --no-check-files" in moved.output


def test_dicom_series_directory_cached_and_invalidated(tmp_path: Path, mni: np.ndarray) -> None:
    """image_path may be a DICOM series folder: the cache key covers every file in it."""
    import torch

    from medgen.io import save

    vol = np.ascontiguousarray(mni[30:62, 30:62, 40:46])[None]  # (1, 32, 32, 6)
    series = save(
        vol, tmp_path / "ct" / "series1", format="dicom", affine=np.diag([2.0, 2.0, 3.0, 1.0])
    )
    df = pd.DataFrame(
        {
            "image_id": ["ct1"],
            "image_path": ["ct/series1"],
            "subject_id": ["p1"],
            "split": ["train"],
            "source": ["real"],
            "label": [1],
        }
    )
    cohort = Cohort.from_manifest(df, root=tmp_path)
    cache = tmp_path / "cache"
    first = cohort.dataset(cache="disk", cache_dir=cache)[0]["image"]
    assert tuple(first.shape) == (1, 32, 32, 6)
    np.testing.assert_allclose(first.numpy(), vol, atol=1.0)  # DICOM stores integers
    warm = cohort.dataset(cache="disk", cache_dir=cache)[0]["image"]
    torch.testing.assert_close(warm.as_tensor(), first.as_tensor(), rtol=0, atol=0)
    assert len(list(cache.glob("*.mgc"))) == 1
    # rewrite the series with different values: one more entry, and the new values come back
    save(vol * 0.5, series, format="dicom", affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    changed = cohort.dataset(cache="disk", cache_dir=cache)[0]["image"]
    np.testing.assert_allclose(changed.numpy(), vol * 0.5, atol=1.0)
    assert len(list(cache.glob("*.mgc"))) == 2


def test_scan_manifest_becomes_a_cohort_and_loads_each_series(
    tmp_path: Path, mni: np.ndarray
) -> None:
    """medgen.io.scan -> Cohort -> dataset, including a folder that holds two DICOM series."""
    import torch

    from medgen.io import save, scan

    root = tmp_path / "data"
    vol = np.ascontiguousarray(mni[30:46, 30:46, 40:44])[None]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    save(vol, root / "tmp1", format="dicom", affine=affine, dicom_tags={"PatientID": "P1"})
    save(vol * 0.5, root / "tmp2", format="dicom", affine=affine, dicom_tags={"PatientID": "P1"})
    (root / "mixed").mkdir()
    for name in ("tmp1", "tmp2"):
        for f in sorted((root / name).iterdir()):
            f.rename(root / "mixed" / f"{name}_{f.name}")
        (root / name).rmdir()
    _write_nifti(root / "sub-02" / "t1.nii.gz", mni[20:36, 20:36, 20:28].copy())
    manifest, errors = scan(root)
    assert errors.empty and len(manifest) == 3
    path = tmp_path / "manifest.csv"
    manifest.to_csv(path, index=False)
    cohort = Cohort.from_manifest(path, root=root)
    assert cohort.df["needs_series"].sum() == 2
    items = {it["image_id"]: it for it in cohort.dataset()}
    means = sorted(float(it["image"].mean()) for it in items.values() if it["image"].shape[-1] == 4)
    # the two series in one folder load separately: one at full, one at half intensity
    assert len(means) == 2 and means[0] == pytest.approx(means[1] * 0.5, rel=0.01)
    nifti = next(it for it in items.values() if it["image"].shape[-1] == 8)
    torch.testing.assert_close(nifti["image"][0], torch.from_numpy(mni[20:36, 20:36, 20:28]))


def test_cache_entry_format_roundtrips_values_and_rejects_truncation(tmp_path: Path) -> None:
    import torch
    from monai.data import MetaTensor

    from medgen.cohort._cache import read_entry, write_entry

    img = MetaTensor(
        torch.arange(7, dtype=torch.float32).reshape(1, 7, 1, 1),
        affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64)),
        meta={"spacing": (2.0, 3.0, 4.0), "original_affine": np.eye(4), "format": "nifti"},
    )
    item = {
        "image": img,
        "mask": torch.tensor([True, False, True]),
        "odd": np.arange(3, dtype=np.int8),
        "after_odd": np.linspace(0, 1, 5),  # float64 after a 3-byte array: needs alignment
        "scalar": np.float32(1.5),
        "path": Path("/a/b.nii.gz"),
        "nested": {"t": (1, "x", None), "l": [1.0, float("nan")]},
        "label": 1,
    }
    path = tmp_path / "e.mgc"
    write_entry(path, item)
    back = read_entry(path)
    assert isinstance(back["image"], MetaTensor)
    torch.testing.assert_close(back["image"].as_tensor(), img.as_tensor())
    torch.testing.assert_close(back["image"].affine, img.affine)
    assert back["image"].meta["spacing"] == (2.0, 3.0, 4.0)
    np.testing.assert_array_equal(back["image"].meta["original_affine"], np.eye(4))
    assert back["mask"].tolist() == [True, False, True]
    np.testing.assert_array_equal(back["odd"], item["odd"])
    assert back["after_odd"].flags.aligned
    np.testing.assert_array_equal(back["after_odd"], item["after_odd"])
    assert back["scalar"] == np.float32(1.5) and back["scalar"].dtype == np.float32
    assert back["path"] == Path("/a/b.nii.gz")
    assert back["nested"]["t"] == (1, "x", None) and np.isnan(back["nested"]["l"][1])
    assert back["label"] == 1
    back["image"] += 1  # writable, independent of the file
    assert read_entry(path)["image"].as_tensor()[0, 0, 0, 0] == 0.0

    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_entry(path)
    path.write_bytes(b"PK\x03\x04 an npz file")
    with pytest.raises(ValueError, match="not a medgen cache entry"):
        read_entry(path)


def test_dataset_items_and_disk_cache_hold_no_patient_identity(tmp_path: Path) -> None:
    """A real DICOM's PatientName/PatientID/BirthDate never reach dataset items or cache files."""
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("MR_small.dcm"))
    header = pydicom.dcmread(src, stop_before_pixels=True)
    secrets = [str(header.PatientName), str(header.PatientID)]
    assert all(secrets), "the test file must carry an identity to check"
    shutil.copy(src, tmp_path / "mr.dcm")
    pd.DataFrame(
        [
            {
                "image_id": "mr",
                "image_path": "mr.dcm",
                "subject_id": "s1",
                "split": "train",
                "source": "real",
            }
        ]
    ).to_csv(tmp_path / "manifest.csv", index=False)
    cohort = Cohort.from_manifest(tmp_path / "manifest.csv")
    cache = tmp_path / "cache"
    for mode in (None, "memory", "disk"):
        item = cohort.dataset(cache=mode, cache_dir=cache if mode == "disk" else None)[0]
        meta = item["image"].meta
        assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(meta), mode
        assert meta["Modality"] == "MR"  # the rest of the header is still there
    blobs = b"".join(p.read_bytes() for p in cache.iterdir())
    assert blobs and not any(s.encode() in blobs for s in secrets)
