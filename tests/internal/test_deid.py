"""De-identification by allow-list, keyed pseudonyms and consistent UID replacement."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, keyword_dict

from medgen._internal.deid import (
    ANNEX_E_BASIC_PROFILE,
    RETAIN_OPTIONS,
    allowed_keywords,
    deidentification_method,
    filter_header,
    keyed_id,
    project_secret,
    remap_uid,
)
from medgen.errors import ConfigError


def test_the_profile_list_is_real_dicom_and_complete_enough() -> None:
    assert len(ANNEX_E_BASIC_PROFILE) > 200
    assert len(set(ANNEX_E_BASIC_PROFILE)) == len(ANNEX_E_BASIC_PROFILE)
    unknown = [k for k in ANNEX_E_BASIC_PROFILE if k not in keyword_dict]
    assert unknown == []
    for kw in ("PatientName", "PatientID", "InstitutionName", "StudyDescription", "ImageComments"):
        assert kw in ANNEX_E_BASIC_PROFILE


def test_default_allow_list_lets_no_profile_attribute_out() -> None:
    assert allowed_keywords() & set(ANNEX_E_BASIC_PROFILE) == set()
    header = {kw: "x" for kw in ANNEX_E_BASIC_PROFILE} | {"Modality": "MR", "EchoTime": 90}
    assert filter_header(header) == {"Modality": "MR", "EchoTime": 90}


def test_retain_options_put_back_only_their_fields() -> None:
    header = {kw: "x" for kw in ANNEX_E_BASIC_PROFILE} | {"Manufacturer": "ACME"}
    kept = filter_header(header, ["patient_characteristics"])
    assert set(kept) == {
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
    }
    assert "PatientName" not in filter_header(header, list(RETAIN_OPTIONS))
    assert "Manufacturer" in filter_header(header, ["device_identity"])
    assert deidentification_method(["device_identity"])[1:] == ["retain device_identity"]
    assert all(len(v) <= 64 for v in deidentification_method(list(RETAIN_OPTIONS)))


def test_unknown_retain_option_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'device_identity'"):
        allowed_keywords(["device_identiy"])


def test_keyed_id_resists_enumeration_and_is_stable() -> None:
    plain = "sub-" + hashlib.sha256(b"1CT1").hexdigest()[:12]
    keyed = keyed_id("1CT1", secret=b"project A")
    assert keyed != plain and keyed.startswith("sub-") and len(keyed) == 16
    assert keyed == keyed_id("1CT1", secret=b"project A")
    assert keyed != keyed_id("1CT1", secret=b"project B")
    assert keyed != keyed_id("1CT2", secret=b"project A")


def test_remapped_uids_are_valid_consistent_and_new() -> None:
    src = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    new = remap_uid(src, secret=b"s")
    assert new == remap_uid(src, secret=b"s") != src
    assert new != remap_uid(src + "1", secret=b"s")
    assert len(new) <= 64 and all(part.isdigit() for part in new.split("."))
    assert dictionary_VR("StudyInstanceUID") == "UI"


def test_project_secret_is_created_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDGEN_PROJECT_SECRET", raising=False)
    monkeypatch.setenv("MEDGEN_SECRET_FILE", str(tmp_path / "cfg" / "secret"))
    first = project_secret()
    assert len(first) == 64 and first == project_secret()
    mode = stat.S_IMODE(os.stat(tmp_path / "cfg" / "secret").st_mode)
    assert mode == 0o600
    monkeypatch.setenv("MEDGEN_PROJECT_SECRET", "shared-team-secret")
    assert project_secret() == b"shared-team-secret"
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        project_secret(empty)
