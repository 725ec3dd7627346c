"""De-identification by allow-list: what may leave the source, and keyed pseudonyms for the rest.

medgen keeps patient identity where it came from. Anything it writes (derived and synthetic
DICOM, disk caches, manifests, prediction tables) carries only header fields on an explicit
allow-list; every other field is dropped, whatever it is. The allow-list follows the DICOM PS3.15
Annex E *Basic Application Level Confidentiality Profile*: nothing in that profile's table is on
the default list, and its *retain* options put groups of fields back on request
(:data:`RETAIN_OPTIONS`). Outputs say so: ``PatientIdentityRemoved = YES`` and a
``DeidentificationMethod`` naming the profile and the options used.

Where an identifier is needed to link records (a subject id from PatientID, a new UID for a source
UID), it is a keyed hash (HMAC-SHA-256) under a per-project secret the user controls
(:func:`project_secret`): the same input gives the same pseudonym within a project, and nobody
without the secret can recover short record numbers by enumeration, as they could from a plain
hash. See docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

__all__ = [
    "ANNEX_E_BASIC_PROFILE",
    "DEIDENTIFICATION_CODES",
    "RETAIN_OPTIONS",
    "SAFE_KEYWORDS",
    "allowed_keywords",
    "deidentification_method",
    "filter_header",
    "keyed_id",
    "project_secret",
    "remap_uid",
]

#: attributes of PS3.15 Table E.1-1 (Basic Application Level Confidentiality Profile), by
#: keyword: none of them leaves medgen unless a retain option names it
ANNEX_E_BASIC_PROFILE: tuple[str, ...] = (
    "AccessionNumber", "AcquisitionComments", "AcquisitionContextSequence", "AcquisitionDate",
    "AcquisitionDateTime", "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription", "AcquisitionTime", "ActualHumanPerformersSequence",
    "AdditionalPatientHistory", "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription", "AdmittingTime", "Allergies", "Arbitrary",
    "AuthorObserverSequence", "BranchOfService", "CassetteID",
    "CommentsOnThePerformedProcedureStep", "ConfidentialityConstraintOnPatientDataDescription",
    "ContentCreatorIdentificationCodeSequence", "ContentCreatorName", "ContentDate",
    "ContentSequence", "ContentTime", "ContrastBolusAgent", "ContributionDescription",
    "CountryOfResidence", "CurrentPatientLocation", "CurveDate", "CurveTime",
    "CustodialOrganizationSequence", "DataSetTrailingPadding", "DerivationDescription",
    "DetectorID", "DeviceSerialNumber", "DeviceUID", "DigitalSignaturesSequence",
    "DischargeDiagnosisDescription", "DistributionAddress", "DistributionName",
    "DoseReferenceUID", "EthnicGroup", "FailedSOPInstanceUIDList", "FiducialUID",
    "FillerOrderNumberImagingServiceRequest", "FrameComments", "FrameOfReferenceUID", "GantryID",
    "GeneratorID", "GraphicAnnotationSequence", "HumanPerformerName",
    "HumanPerformerOrganization", "IconImageSequence", "IdentifyingComments", "ImageComments",
    "ImagePresentationComments", "ImagingServiceRequestComments", "Impressions",
    "InstanceCreatorUID", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionName",
    "InstitutionalDepartmentName", "InsurancePlanIdentification",
    "IntendedRecipientsOfResultsIdentificationSequence", "InterpretationApproverSequence",
    "InterpretationAuthor", "InterpretationDiagnosisDescription", "InterpretationIDIssuer",
    "InterpretationRecorder", "InterpretationText", "InterpretationTranscriber",
    "IrradiationEventUID", "IssuerOfAdmissionID", "IssuerOfPatientID",
    "IssuerOfServiceEpisodeID", "LargePaletteColorLookupTableUID", "MAC",
    "MediaStorageSOPInstanceUID", "MedicalAlerts", "MedicalRecordLocator", "MilitaryRank",
    "ModifiedAttributesSequence", "ModifiedImageDescription", "ModifyingDeviceID",
    "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults", "Occupation",
    "OperatorIdentificationSequence", "OperatorsName", "OrderCallbackPhoneNumber",
    "OrderEnteredBy", "OrderEntererLocation", "OriginalAttributesSequence", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "OverlayDate",
    "OverlayTime", "PaletteColorLookupTableUID", "ParticipantSequence", "PatientAddress",
    "PatientAge", "PatientBirthDate", "PatientBirthName", "PatientBirthTime", "PatientComments",
    "PatientID", "PatientInstitutionResidence", "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName", "PatientName", "PatientPrimaryLanguageCodeSequence",
    "PatientPrimaryLanguageModifierCodeSequence", "PatientReligiousPreference", "PatientSex",
    "PatientSexNeutered", "PatientSize", "PatientState", "PatientTelephoneNumbers",
    "PatientTransportArrangements", "PatientWeight", "PerformedLocation",
    "PerformedProcedureStepDescription", "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime", "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence",
    "PerformedStationName", "PerformedStationNameCodeSequence",
    "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName", "PersonAddress",
    "PersonIdentificationCodeSequence", "PersonName", "PersonTelephoneNumbers",
    "PhysicianApprovingInterpretation", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
    "PlacerOrderNumberImagingServiceRequest", "PlateID", "PreMedication", "PregnancyStatus",
    "ProtocolName", "ReasonForStudy", "ReasonForTheImagingServiceRequest",
    "ReferencedDigitalSignatureSequence", "ReferencedFrameOfReferenceUID",
    "ReferencedImageSequence", "ReferencedPatientAliasSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "ReferencedSOPInstanceMACSequence",
    "ReferencedSOPInstanceUID", "ReferencedSOPInstanceUIDInFile", "ReferencedStudySequence",
    "ReferringPhysicianAddress", "ReferringPhysicianIdentificationSequence",
    "ReferringPhysicianName", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
    "RelatedFrameOfReferenceUID", "RequestAttributesSequence", "RequestedContrastAgent",
    "RequestedProcedureComments", "RequestedProcedureDescription", "RequestedProcedureID",
    "RequestedProcedureLocation", "RequestedSOPInstanceUID", "RequestingPhysician",
    "RequestingService", "ResponsibleOrganization", "ResponsiblePerson", "ResultsComments",
    "ResultsDistributionListSequence", "ResultsIDIssuer", "ReviewerName",
    "ScheduledHumanPerformersSequence", "ScheduledPatientInstitutionResidence",
    "ScheduledPerformingPhysicianIdentificationSequence", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
    "ScheduledStationAETitle", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledStationName", "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
    "ScheduledStudyLocationAETitle", "SeriesDate", "SeriesDescription", "SeriesInstanceUID",
    "SeriesTime", "ServiceEpisodeDescription", "ServiceEpisodeID", "SmokingStatus",
    "SOPInstanceUID", "SourceImageSequence", "SpecialNeeds", "StationName",
    "StorageMediaFileSetUID", "StudyComments", "StudyDate", "StudyDescription", "StudyID",
    "StudyIDIssuer", "StudyInstanceUID", "StudyTime", "SynchronizationFrameOfReferenceUID",
    "TextComments", "TextString", "TimezoneOffsetFromUTC", "TopicAuthor", "TopicKeywords",
    "TopicSubject", "TopicTitle", "TransactionUID", "UID",
    "VerifyingObserverIdentificationCodeSequence", "VerifyingObserverName",
    "VerifyingObserverSequence", "VerifyingOrganization", "VisitComments",
)  # fmt: skip

#: technical fields that identify nobody and that analyses need; always allowed
SAFE_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "ImageType",
    "BodyPartExamined",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "KVP",
    "SliceThickness",
    "ScanningSequence",
    "SequenceVariant",
    "ContrastBolusRoute",
)

#: the profile's retain options (PS3.15 E.3) medgen offers, with the fields each puts back
RETAIN_OPTIONS: dict[str, tuple[str, ...]] = {
    # E.3.5 Retain Patient Characteristics Option
    "patient_characteristics": (
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "PatientSize",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
    ),
    # E.3.6 Retain Device Identity Option (with the manufacturer, which names no person)
    "device_identity": (
        "Manufacturer",
        "ManufacturerModelName",
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "GantryID",
        "DetectorID",
        "PlateID",
        "CassetteID",
        "GeneratorID",
    ),
    # E.3.7 Retain Institution Identity Option
    "institution_identity": (
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
    ),
    # E.3.11 without the cleaning: free-text descriptions, which may name people
    "descriptors": ("StudyDescription", "SeriesDescription", "ProtocolName"),
}

#: CID 7050 codes for DeidentificationMethodCodeSequence
DEIDENTIFICATION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "institution_identity": ("113112", "Retain Institution Identity Option"),
    "descriptors": ("113105", "Clean Descriptors Option"),
}


def _check_retain(retain: Iterable[str]) -> tuple[str, ...]:
    opts = tuple(dict.fromkeys(str(r) for r in retain))
    for r in opts:
        if r not in RETAIN_OPTIONS:
            raise ConfigError(
                f"retain={r!r} is not a de-identification retain option; choose from "
                f"{sorted(RETAIN_OPTIONS)}.{did_you_mean(r, RETAIN_OPTIONS)}"
            )
    return opts


def allowed_keywords(retain: Iterable[str] = ()) -> frozenset[str]:
    """The header keywords allowed out of medgen with the ``retain`` options.

    Example:
        >>> "PatientSex" in allowed_keywords(), "PatientSex" in allowed_keywords(
        ...     ["patient_characteristics"])
        (False, True)
    """
    out = set(SAFE_KEYWORDS)
    for r in _check_retain(retain):
        out.update(RETAIN_OPTIONS[r])
    return frozenset(out)


def filter_header(header: Mapping[str, Any], retain: Iterable[str] = ()) -> dict[str, Any]:
    """The entries of ``header`` (keyword -> value) on the allow-list; everything else dropped.

    Example:
        >>> filter_header({"Modality": "CT", "PatientName": "Smith^John", "Foo": 1})
        {'Modality': 'CT'}
    """
    allowed = allowed_keywords(retain)
    return {k: v for k, v in header.items() if k in allowed}


def deidentification_method(retain: Iterable[str] = ()) -> list[str]:
    """The values of ``DeidentificationMethod`` (LO, several values) for outputs with ``retain``.

    Example:
        >>> deidentification_method(["device_identity"])
        ['medgen allow-list, PS3.15 Annex E basic profile', 'retain device_identity']
    """
    opts = _check_retain(retain)
    return ["medgen allow-list, PS3.15 Annex E basic profile", *(f"retain {r}" for r in opts)]


#: environment variable holding the project secret (any string), overriding the secret file
SECRET_ENV = "MEDGEN_PROJECT_SECRET"
#: environment variable naming the secret file
SECRET_FILE_ENV = "MEDGEN_SECRET_FILE"


def default_secret_file() -> Path:
    """``$MEDGEN_SECRET_FILE``, else ``$XDG_CONFIG_HOME/medgen/project_secret`` (``~/.config``)."""
    if os.environ.get(SECRET_FILE_ENV):
        return Path(os.environ[SECRET_FILE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "medgen" / "project_secret"


def project_secret(path: str | os.PathLike[str] | None = None) -> bytes:
    """The per-project secret keying pseudonyms (created on first use).

    Looked up in order: ``$MEDGEN_PROJECT_SECRET``; the file ``path``; the file
    :func:`default_secret_file`. A missing file is created with 32 random bytes (hex), readable by
    its owner only. Keep it outside the data you share, and share it only with whoever must be
    able to link pseudonyms back to the same subjects in new data.
    """
    if path is None and os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].encode("utf-8")
    p = Path(path).expanduser() if path is not None else default_secret_file()
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created by a concurrent process: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigError(
            f"the project secret file {p} is empty; delete it to create a new one (pseudonyms "
            "then change), or restore it from a backup."
        )
    return text.encode("utf-8")


def keyed_id(value: str, *, secret: bytes, prefix: str = "sub-", length: int = 12) -> str:
    """A pseudonym for ``value``: ``prefix`` + the first ``length`` hex digits of its HMAC.

    Example:
        >>> keyed_id("1CT1", secret=b"k") == keyed_id("1CT1", secret=b"k") != keyed_id(
        ...     "1CT1", secret=b"other")
        True
    """
    mac = hmac.new(secret, b"subject:" + str(value).encode("utf-8"), hashlib.sha256)
    return prefix + mac.hexdigest()[:length]


def remap_uid(uid: str, *, secret: bytes) -> str:
    """A new DICOM UID for ``uid``, the same every time within a project (``2.25.<integer>``).

    Example:
        >>> u = remap_uid("1.2.840.113619.2.1", secret=b"k")
        >>> u.startswith("2.25.") and len(u) <= 64 and u == remap_uid("1.2.840.113619.2.1", secret=b"k")
        True
    """
    mac = hmac.new(secret, b"uid:" + str(uid).encode("ascii", "replace"), hashlib.sha256)
    return "2.25." + str(int.from_bytes(mac.digest()[:16], "big"))
