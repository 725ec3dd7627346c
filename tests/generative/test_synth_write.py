"""The one writer of a synthetic sample that ``Synthesizer.write`` and the batch shards share."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medgen.errors import MedgenValueError
from medgen.generative._synth_write import save_sample, synthetic_affine


def _sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    img = rng.normal(size=(1, 24, 20)).astype(np.float32)  # channel first, as sampled
    mask = np.zeros((1, 24, 20), dtype=np.float32)
    mask[0, 5:9, 6:10] = 1.0
    return img, mask


def test_nifti_image_and_mask_are_marked_and_on_the_model_grid(tmp_path: Path) -> None:
    img, mask = _sample(np.random.default_rng(0))
    save_sample(
        img,
        tmp_path / "a.nii.gz",
        format="nifti",
        spatial_dims=2,
        spacing=(0.8, 1.5),
        description="medgen vae-gan-abc seed 3",
        mask=mask,
        mask_path=tmp_path / "a_mask.nii.gz",
    )
    im, mk = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "a_mask.nii.gz")
    np.testing.assert_allclose(np.asarray(im.dataobj).squeeze(), img[0], rtol=0, atol=0)
    assert np.asarray(mk.dataobj).dtype == np.uint8
    assert int(np.asarray(mk.dataobj).sum()) == 16
    np.testing.assert_allclose(im.affine, synthetic_affine((0.8, 1.5)))
    np.testing.assert_allclose(mk.affine, im.affine)
    d_img = im.header["descrip"].tobytes().decode()
    d_mask = mk.header["descrip"].tobytes().decode()
    assert "medgen vae-gan-abc seed 3" in d_img and "lesion mask" not in d_img
    assert "medgen vae-gan-abc seed 3 lesion mask" in d_mask


def test_dicom_2d_is_a_one_slice_synthetic_series_with_the_callers_tags(tmp_path: Path) -> None:
    img, mask = _sample(np.random.default_rng(1))
    save_sample(
        img,
        tmp_path / "a",
        format="dicom",
        spatial_dims=2,
        spacing=(1.0, 1.0),
        description="medgen m seed 1 item 7 draw 0",
        mask=mask,
        mask_path=tmp_path / "a_mask",
        dicom_tags={"PatientName": "SYNTHETIC^07", "PatientID": "SYNTHETIC^07"},
    )
    for folder, desc in (("a", "draw 0"), ("a_mask", "draw 0 lesion mask")):
        files = sorted((tmp_path / folder).iterdir())
        assert len(files) == 1  # a 2D sample: one slice
        ds = pydicom.dcmread(files[0])
        assert ds.SyntheticData == "YES"
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert str(ds.PatientName) == "SYNTHETIC^07"
        assert ds.DerivationDescription.endswith(desc)


def test_mask_needs_its_path(tmp_path: Path) -> None:
    img, mask = _sample(np.random.default_rng(2))
    with pytest.raises(MedgenValueError, match="both mask and mask_path"):
        save_sample(
            img, tmp_path / "a.nii.gz", format="nifti", spatial_dims=2, spacing=(1, 1),
            description="d", mask=mask,
        )  # fmt: skip
    assert not (tmp_path / "a.nii.gz").exists()  # refused before anything is written
