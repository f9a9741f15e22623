"""core.deid under every option combination: per canary, in the encoded output file, removed unless an
option keeps it, kept (or cleaned as documented) when one does; SR content items and graphic text included.
pydicom's test files under a few combinations, with canaries from each file's own identifying values."""

from __future__ import annotations

import itertools
import re
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

from airflow_provider_kaapana.core.deid.deidentify import (
    CODE_ATTRIBUTES,
    NotEncodable,
    deidentify,
    deidentify_encoded,
    deidentify_part10,
)
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.deid.pseudonyms import date_shift_days, pseudonym_uid, shift_date
from airflow_provider_kaapana.exceptions import DeidentificationError, InvalidDicomError
from airflow_provider_kaapana.testing.synthetic import generate_series

KEY = b"options-test-site-key-0123456789abcd"
PATIENT_ID = "ZQXPID77"
STUDY_DATE = "20260117"
SAFE_PRIVATE = ("ACME SAFE", 0x0029, 0x10)
FREE_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}

FULL = Option.RETAIN_LONGITUDINAL_FULL_DATES
MODIFIED = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES
OTHERS = [o for o in Option if o not in (FULL, MODIFIED)]


def every_combination() -> list[frozenset[Option]]:
    """3 date choices (none, full, modified) x every subset of the 8 other options: 768."""
    combos = []
    for dates in ((), (FULL,), (MODIFIED,)):
        for n in range(len(OTHERS) + 1):
            for others in itertools.combinations(OTHERS, n):
                combos.append(frozenset((*dates, *others)))
    return combos


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content_item(value_type: str, relationship: str = "CONTAINS", **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [code("121071", "DCM", "Finding")]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


# SR content items and graphic annotations: uids referenced from content
CONTENT_UID = "1.2.826.0.1.3680043.10.1337.77.1"
REFERENCED_UID = "1.2.826.0.1.3680043.10.1337.77.2"
CONTENT_DATE, CONTENT_DATETIME, CONTENT_TIME = "20250305", "20250306101112", "093457"
OBSERVATION_DATETIME = "20250307080910"
VERIFICATION_DATETIME = "20250308111213"


def add_phi(k: int, ds: Dataset) -> None:
    """Every kind of identifying value, top level, nested, private, in SR content and graphic text."""
    ds.PatientAddress = "ZQXSTREET 1, Town"
    ds.PatientBirthDate = "19470203"
    ds.OtherPatientIDs = "ZQXOTHERID"
    other = Dataset()
    other.PatientID = "ZQXOPIDSEQ"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.ReferringPhysicianName = "ZQXREFDOC^Doc"
    ds.PerformingPhysicianName = "ZQXPERFDOC^Doc"
    ds.OperatorsName = "ZQXOPERATOR^Op"
    ds.AccessionNumber = "ZQXACC"
    ds.InstitutionName = "ZQXHOSPITAL"
    ds.InstitutionAddress = "ZQXINSTADDR 5, City"
    ds.StationName = "ZQXSTATION"
    ds.DeviceSerialNumber = "ZQXSERIAL42"
    ds.PatientSex = "O"
    ds.PatientAge = "077Y"
    ds.PatientWeight = "81.25"
    ds.PatientSize = "1.853"
    ds.StudyDescription = "ZQXFAMILY QQSTUDYDESC"
    ds.SeriesDescription = "QQSERIESDESC ZQXHOSPITAL"
    ds.ImageComments = "QQCOMMENT"
    request = Dataset()
    request.RequestedProcedureDescription = "ZQXFAMILY QQREQDESC"
    ds.RequestAttributesSequence = [request]
    region = code("T-D4000", "SRT", "Abdomen")
    region.OperatorsName = "ZQXNESTEDOP"  # PHI in a sequence the table does not list
    ds.AnatomicRegionSequence = [region]
    # sequences whose action is D: dummy items (an identification code is no coded value)
    ds.InstitutionCodeSequence = [code("ZQXINSTCODE", "99LOCAL", "ZQXINSTMEANING")]
    verifier = Dataset()
    verifier.VerifyingObserverName = "ZQXVERIFIER^Doc"
    verifier.VerifyingOrganization = "ZQXVERIFORG"
    verifier.VerificationDateTime = VERIFICATION_DATETIME
    verifier.VerifyingObserverIdentificationCodeSequence = [
        code("ZQXVERIFCODE", "99LOCAL", "ZQXVERIFMEANING")
    ]
    ds.VerifyingObserverSequence = [verifier]
    safe = ds.private_block(0x0029, SAFE_PRIVATE[0], create=True)
    safe.add_new(0x10, "LO", "QQSAFEPRIVATE")
    unsafe = ds.private_block(0x0031, "ACME PHI", create=True)
    unsafe.add_new(0x10, "LO", "ZQXPRIVATE")

    # SR content (a mixed object: the walk does not look at the IOD)
    text = content_item(
        "TEXT", TextValue="ZQXFAMILY told QQTEXTVALUE", ObservationDateTime=OBSERVATION_DATETIME
    )
    text.ContentSequence = [content_item("TEXT", "HAS PROPERTIES", TextValue="ZQXNESTEDTEXT")]
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
    referenced.ReferencedSOPInstanceUID = REFERENCED_UID
    measured = Dataset()
    measured.NumericValue = "123.4567"
    measured.MeasurementUnitsCodeSequence = [code("mm", "UCUM", "millimeter")]
    # one item carries the values of several value types: fewer items keep 768 runs fast, and the walk
    # does not look at Value Type
    values = content_item(
        "PNAME",
        PersonName="ZQXPNVALUE^Doc",
        Date=CONTENT_DATE,
        DateTime=CONTENT_DATETIME,
        Time=CONTENT_TIME,
        UID=CONTENT_UID,
        ConceptCodeSequence=[code("QQCODE1", "99TEST", "QQCODEMEANING")],
        ReferencedSOPSequence=[referenced],
        MeasuredValueSequence=[measured],
    )
    ds.ContentSequence = [text, values]
    ds.AcquisitionContextSequence = [content_item("TEXT", "HAS CONCEPT MOD", TextValue="ZQXACQTEXT")]

    # graphic annotations: a text object and a polyline on a layer
    annotation = Dataset()
    annotation.GraphicLayer = "QQLAYER"
    label = Dataset()
    label.UnformattedTextValue = "ZQXFAMILY QQGRAPHTEXT"
    label.AnchorPointAnnotationUnits = "PIXEL"
    label.AnchorPoint = [3.0, 4.0]
    label.AnchorPointVisibility = "Y"
    annotation.TextObjectSequence = [label]
    line = Dataset()
    line.GraphicAnnotationUnits = "PIXEL"
    line.GraphicDimensions = 2
    line.NumberOfGraphicPoints = 2
    line.GraphicData = [11.25, 12.5, 13.75, 14.125]
    line.GraphicType = "POLYLINE"
    annotation.GraphicObjectSequence = [line]
    ds.GraphicAnnotationSequence = [annotation]


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> tuple[bytes, Dataset]:
    series = generate_series(
        tmp_path_factory.mktemp("canary"),
        rows=8,
        columns=8,
        slices=1,
        patient_id=PATIENT_ID,
        patient_name="ZQXFAMILY^ZQXGIVEN",
        study_date=STUDY_DATE,
        per_instance=add_phi,
    )
    data = series.files[0].read_bytes()
    return data, pydicom.dcmread(BytesIO(data))


def element(tag: int, vr: str, value: object) -> bytes:
    """An element as the canary file encodes it (explicit VR little endian), to find short values."""
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_data_element(fp, pydicom.DataElement(tag, vr, value))
    return fp.getvalue()


# what always goes, whatever the options
ALWAYS_REMOVED = [
    b"ZQXFAMILY",
    b"ZQXGIVEN",
    PATIENT_ID.encode(),
    b"ZQXOTHERID",
    b"ZQXOPIDSEQ",
    b"ZQXSTREET",
    b"19470203",
    b"ZQXREFDOC",
    b"ZQXPERFDOC",
    b"ZQXOPERATOR",
    b"ZQXACC",
    b"ZQXNESTEDOP",
    b"ZQXPRIVATE",
    b"ZQXNESTEDTEXT",  # SR text: cleaned under Clean Structured Content, the content gone without it
    b"QQTEXTVALUE",
    b"ZQXPNVALUE",
    b"ZQXACQTEXT",
    b"QQGRAPHTEXT",  # graphic text: cleaned under Clean Graphics, the annotation gone without it
    b"ZQXVERIFIER",  # a D sequence's items: dummies, codes included
    b"ZQXVERIFORG",
    b"ZQXVERIFCODE",
    b"ZQXVERIFMEANING",
]


def kept_when(options: frozenset[Option], source: Dataset) -> dict[bytes, bool]:
    """Canary -> whether it must be in the output under ``options`` (False: must not be)."""
    has = options.__contains__
    csc, graphics = has(Option.CLEAN_STRUCTURED_CONTENT), has(Option.CLEAN_GRAPHICS)
    shift = date_shift_days(KEY, PATIENT_ID)
    expect = {
        b"ZQXHOSPITAL": has(Option.RETAIN_INSTITUTION_IDENTITY),
        b"ZQXINSTADDR": has(Option.RETAIN_INSTITUTION_IDENTITY),
        b"ZQXINSTCODE": has(Option.RETAIN_INSTITUTION_IDENTITY),  # else a D sequence: dummy codes
        b"ZQXINSTMEANING": has(Option.RETAIN_INSTITUTION_IDENTITY),
        VERIFICATION_DATETIME.encode(): has(FULL),
        (shift_date(VERIFICATION_DATETIME[:8], shift) + VERIFICATION_DATETIME[8:]).encode(): has(MODIFIED),
        b"ZQXSTATION": has(Option.RETAIN_DEVICE_IDENTITY),
        b"ZQXSERIAL42": has(Option.RETAIN_DEVICE_IDENTITY),
        element(0x00100040, "CS", "O"): has(Option.RETAIN_PATIENT_CHARACTERISTICS),
        element(0x00101010, "AS", "077Y"): has(Option.RETAIN_PATIENT_CHARACTERISTICS),
        element(0x00101030, "DS", "81.25"): has(Option.RETAIN_PATIENT_CHARACTERISTICS),
        element(0x00101020, "DS", "1.853"): has(Option.RETAIN_PATIENT_CHARACTERISTICS),
        b"QQSAFEPRIVATE": has(Option.RETAIN_SAFE_PRIVATE),
        # descriptions: kept under Clean Descriptors, the identifiers in them scrubbed
        b"QQSTUDYDESC": has(Option.CLEAN_DESCRIPTORS),
        b"QQSERIESDESC": has(Option.CLEAN_DESCRIPTORS),
        b"QQCOMMENT": has(Option.CLEAN_DESCRIPTORS),
        b"QQREQDESC": has(Option.CLEAN_DESCRIPTORS),
        # dates: kept with Full Dates, moved with Modified Dates, otherwise gone
        STUDY_DATE.encode(): has(FULL),
        shift_date(STUDY_DATE, shift).encode(): has(MODIFIED),
        # SR content: codes and numbers kept; dates and times by the date options; UIDs like every UID
        b"QQCODEMEANING": csc,
        element(0x0040A30A, "DS", "123.4567"): csc,
        CONTENT_DATE.encode(): csc and has(FULL),
        shift_date(CONTENT_DATE, shift).encode(): csc and has(MODIFIED),
        CONTENT_DATETIME.encode(): csc and has(FULL),
        (shift_date(CONTENT_DATETIME[:8], shift) + CONTENT_DATETIME[8:]).encode(): csc and has(MODIFIED),
        OBSERVATION_DATETIME.encode(): csc and has(FULL),
        element(0x0040A122, "TM", CONTENT_TIME): csc and (has(FULL) or has(MODIFIED)),
        # graphic annotations: layer and geometry kept
        b"QQLAYER": graphics,
        element(0x00700022, "FL", [11.25, 12.5, 13.75, 14.125]): graphics,
    }
    for uid, present in (
        (source.SOPInstanceUID, True),
        (source.SeriesInstanceUID, True),
        (source.StudyInstanceUID, True),
        (source.FrameOfReferenceUID, True),
        (CONTENT_UID, csc),
        (REFERENCED_UID, csc),
    ):
        expect[uid.encode()] = present and has(Option.RETAIN_UIDS)
        expect[pseudonym_uid(KEY, uid).encode()] = present and not has(Option.RETAIN_UIDS)
    for canary in ALWAYS_REMOVED:
        expect[canary] = False
    return expect


def profile_of(options: frozenset[Option]) -> DeidentificationProfile:
    """The profile of ``options``; under Retain Safe Private its list names one of the two private tags."""
    safe = frozenset({SAFE_PRIVATE}) if Option.RETAIN_SAFE_PRIVATE in options else frozenset()
    return DeidentificationProfile(options, safe_private=safe)


def test_every_option_combination_on_the_output_bytes(canary):
    data, source = canary
    combos = every_combination()
    assert len(combos) == 768
    wrong = []
    for options in combos:
        out = deidentify_encoded(data, profile_of(options), KEY).data
        for value, expected in kept_when(options, source).items():
            if (value in out) != expected:
                names = "+".join(sorted(o.value for o in options)) or "basic"
                wrong.append(f"{names}: {value!r} {'missing' if expected else 'survived'}")
    assert not wrong, f"{len(wrong)} wrong, e.g.\n" + "\n".join(wrong[:20])


@pytest.mark.parametrize(
    "options",
    [
        frozenset(),
        frozenset({Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS, MODIFIED}),
        frozenset({Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS, FULL, Option.RETAIN_UIDS}),
    ],
    ids=["basic", "clean+modified", "clean+full+uids"],
)
def test_content_cleaning_is_the_same_on_both_paths(canary, options):
    """The dataset path (deidentify + pydicom's writer) writes the bytes of the encoded path, and the
    cleaned content says what the guide says: text and names dummies, codes kept, the tree intact."""
    data, source = canary
    profile = profile_of(options)
    clean = deidentify(pydicom.dcmread(BytesIO(data)), profile, KEY)
    buffer = BytesIO()
    clean.save_as(buffer, enforce_file_format=True)
    assert deidentify_encoded(data, profile, KEY).data == buffer.getvalue()
    if Option.CLEAN_STRUCTURED_CONTENT not in options:
        # Table E.1-1: Content Sequence D (one empty item), Acquisition Context X/Z, graphics D
        assert [len(item) for item in clean.ContentSequence] == [0]
        assert len(clean.get("AcquisitionContextSequence", [])) == 0
        assert [len(item) for item in clean.GraphicAnnotationSequence] == [0]
        return
    text, values = clean.ContentSequence
    assert text.TextValue == text.ContentSequence[0].TextValue == "ANONYMIZED"
    assert text.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    assert values.PersonName == "ANONYMIZED"
    assert values.ConceptCodeSequence[0].CodeMeaning == "QQCODEMEANING"
    assert values.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm"
    assert values.ReferencedSOPSequence[0].ReferencedSOPClassUID == pydicom.uid.CTImageStorage
    if FULL in options:
        assert (values.Date, values.Time, values.UID) == (CONTENT_DATE, CONTENT_TIME, CONTENT_UID)
    else:
        assert values.Date not in ("", CONTENT_DATE) and values.Time == CONTENT_TIME
        assert values.UID == pseudonym_uid(KEY, CONTENT_UID)
    [annotation] = clean.GraphicAnnotationSequence
    assert annotation.TextObjectSequence[0].UnformattedTextValue == "ANONYMIZED"
    assert annotation.TextObjectSequence[0].AnchorPoint == [3.0, 4.0]
    # no free text at any depth of the cleaned sequences but a code's attributes and the dummy
    survivors = []
    for keyword in ("ContentSequence", "AcquisitionContextSequence", "GraphicAnnotationSequence"):
        for item in clean[keyword]:
            for elem in item.iterall():
                if elem.VR in FREE_TEXT_VRS and elem.value and elem.tag not in CODE_ATTRIBUTES:
                    if str(elem.value) != "ANONYMIZED":
                        survivors.append(f"{keyword}: {elem.keyword} {elem.value!r}")
    assert survivors == []


# ---- pydicom's test files: canaries from each file's own identifying values -------------------------

# attribute -> the option that keeps it (None: none does); Full Dates keeps the dates
IDENTIFYING: dict[str, Option | None] = {
    "PatientName": None,
    "PatientID": None,
    "OtherPatientIDs": None,
    "PatientBirthDate": None,
    "PatientBirthName": None,
    "PatientMotherBirthName": None,
    "PatientAddress": None,
    "PatientTelephoneNumbers": None,
    "ReferringPhysicianName": None,
    "PerformingPhysicianName": None,
    "PhysiciansOfRecord": None,
    "OperatorsName": None,
    "AccessionNumber": None,
    "InstitutionName": Option.RETAIN_INSTITUTION_IDENTITY,
    "InstitutionAddress": Option.RETAIN_INSTITUTION_IDENTITY,
    "InstitutionalDepartmentName": Option.RETAIN_INSTITUTION_IDENTITY,
    "StationName": Option.RETAIN_DEVICE_IDENTITY,
    "DeviceSerialNumber": Option.RETAIN_DEVICE_IDENTITY,
    "StudyDate": FULL,
    "SeriesDate": FULL,
    "AcquisitionDate": FULL,
    "ContentDate": FULL,
    "StudyInstanceUID": Option.RETAIN_UIDS,
    "SeriesInstanceUID": Option.RETAIN_UIDS,
    "SOPInstanceUID": Option.RETAIN_UIDS,
    "FrameOfReferenceUID": Option.RETAIN_UIDS,
}

FILE_COMBINATIONS = [
    frozenset(),
    frozenset(o for o in Option if o is not FULL),  # everything kept that can be, dates moved
    frozenset({FULL, Option.RETAIN_DEVICE_IDENTITY, Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS}),
    frozenset({MODIFIED, Option.CLEAN_DESCRIPTORS, Option.RETAIN_INSTITUTION_IDENTITY}),
    frozenset({Option.RETAIN_UIDS, Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_SAFE_PRIVATE}),
]


def file_canaries(source: Dataset) -> list[tuple[str, bytes, Option | None]]:
    """(attribute, value or word, the option that keeps it) from a file's own identifying values."""
    found = []
    for keyword, keeper in IDENTIFYING.items():
        if keyword not in source:
            continue
        elem = source.data_element(keyword)
        if elem is None or elem.VR == "SQ" or not elem.value:
            continue
        values = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
        for value in values:
            text = str(value).strip()
            if not text.isascii():
                continue  # its encoded bytes depend on the character set
            if elem.VR in ("DA", "UI"):
                words = [text] if len(text) >= 8 else []
            else:
                words = [w for w in re.split(r"[\^\s,=]+", text) if len(w) >= 5 and not w.isdigit()]
            found.extend((keyword, w.encode(), keeper) for w in words)
    return found


def kept_elsewhere(source: Dataset, actions: dict[str, str]) -> bytes:
    """The values of the source's public attributes the profile keeps as they are (not listed by the
    table, or K), at any depth, and its pixel data: a canary found there is not a leak."""
    parts: list[bytes] = []

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.tag.is_private:
                continue
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
                continue
            if actions.get(f"{elem.tag:08X}", "K") != "K":
                continue
            value = elem.value
            parts.append(value if isinstance(value, bytes) else str(value).encode("latin-1", "replace"))

    walk(source)
    return b"\0".join(parts)


def test_pydicom_test_files_keep_only_what_an_option_keeps(pydicom_test_files):
    checked = canaries = 0
    for path in pydicom_test_files:
        data = path.read_bytes()
        try:
            source = pydicom.dcmread(BytesIO(data))
            found = file_canaries(source)
        except Exception:  # noqa: BLE001 - deliberately broken test files
            continue
        if not found:
            continue
        for options in FILE_COMBINATIONS:
            profile = DeidentificationProfile(options, allow_burned_in_annotation=True)  # pixels: not here
            try:
                out = deidentify_part10(data, profile, KEY).data
            except (DeidentificationError, InvalidDicomError, NotEncodable):
                continue  # refused (burned-in text, truncated): their own tests
            except Exception:  # noqa: BLE001 - files pydicom cannot write back (deliberately odd)
                continue
            elsewhere = kept_elsewhere(source, profile.actions)
            for keyword, value, keeper in found:
                if value in elsewhere:
                    continue  # the same text in an attribute kept as is (a UID root, a code...)
                kept = keeper is not None and keeper in options
                assert (value in out) == kept, f"{path.name} {sorted(options)}: {keyword} {value!r}"
                canaries += 1
            checked += 1
    assert checked >= 700 and canaries >= 3_000, (checked, canaries)  # 845 and 3,509 on pydicom 3


def test_the_canaries_are_in_the_input(canary):
    """What must be removed is there to remove (what must be kept is checked present by the test above)."""
    data, _ = canary
    assert [value for value in ALWAYS_REMOVED if value not in data] == []
