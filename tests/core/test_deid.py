"""core.deid: PHI canaries gone per option, kept where an option keeps them; keyed UIDs, dates, references."""

from __future__ import annotations

import re
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from airflow_provider_kaapana.core.deid import table
from airflow_provider_kaapana.core.deid.deidentify import NotEncodable, deidentify, deidentify_encoded
from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.deid.pseudonyms import pseudonym_uid
from airflow_provider_kaapana.exceptions import DeidentificationError, InvalidDicomError
from airflow_provider_kaapana.testing.synthetic import generate_series

KEY = b"site-key-for-tests-0123456789abcdef"
OTHER_KEY = b"another-site-key-0123456789abcdefgh"

# canaries that every profile must remove
ALWAYS = {
    "family name": "ZQXFAMILY",
    "given name": "ZQXGIVEN",
    "patient id": "ZQXPID77",
    "other patient ids": "ZQXOTHERID",
    "other patient ids sequence": "ZQXOPIDSEQ",
    "address": "ZQXSTREET",
    "referring physician": "ZQXREFDOC",
    "operator": "ZQXOPERATOR",
    "accession": "ZQXACC",
    "private tag": "ZQXPRIVATE",
    "nested in kept sequence": "ZQXNESTEDOP",
    "birth date": "19470203",
}
INSTITUTION = "ZQXHOSPITAL"
STATION = "ZQXSTATION"
STUDY_DATE = "20260101"
FREE_TEXT = "ZQXCOMMENT"


def canary_instance(tmp_path: Path) -> Dataset:
    """A synthetic CT instance carrying PHI everywhere a careless tool leaves it."""

    def add_phi(k: int, ds: Dataset) -> None:
        ds.PatientAddress = "ZQXSTREET 1, Town"
        ds.OtherPatientIDs = "ZQXOTHERID"
        other = Dataset()
        other.PatientID = "ZQXOPIDSEQ"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = [other]
        ds.ReferringPhysicianName = "ZQXREFDOC^Doc"
        ds.OperatorsName = "ZQXOPERATOR^Op"
        ds.AccessionNumber = "ZQXACC"
        ds.InstitutionName = INSTITUTION
        ds.StationName = STATION
        ds.PatientBirthDate = "19470203"
        ds.SeriesDescription = "ZQXFAMILY liver ZQXHOSPITAL"
        ds.ImageComments = FREE_TEXT
        request = Dataset()
        request.RequestedProcedureDescription = "ZQXFAMILY ZQXREQDESC"
        ds.RequestAttributesSequence = [request]
        region = Dataset()  # a sequence the table does not list: kept, and its items cleaned
        region.CodeValue = "T-D4000"
        region.CodingSchemeDesignator = "SRT"
        region.CodeMeaning = "Abdomen"
        region.OperatorsName = "ZQXNESTEDOP"
        ds.AnatomicRegionSequence = [region]
        block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
        block.add_new(0x10, "LO", "ZQXPRIVATE")

    series = generate_series(
        tmp_path / "canary",
        slices=2,
        patient_id="ZQXPID77",
        patient_name="ZQXFAMILY^ZQXGIVEN",
        study_date=STUDY_DATE,
        per_instance=add_phi,
    )
    return pydicom.dcmread(series.files[0])


def as_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


COMBINATIONS = [
    (),
    (Option.CLEAN_DESCRIPTORS,),
    (Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,),
    (Option.RETAIN_LONGITUDINAL_FULL_DATES,),
    (Option.RETAIN_INSTITUTION_IDENTITY,),
    (Option.RETAIN_DEVICE_IDENTITY,),
    (Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_UIDS),
    (Option.RETAIN_SAFE_PRIVATE, Option.CLEAN_STRUCTURED_CONTENT, Option.CLEAN_GRAPHICS),
    tuple(o for o in Option if o is not Option.RETAIN_LONGITUDINAL_FULL_DATES),
]


@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: "+".join(x.value for x in o) or "basic")
def test_no_canary_survives(tmp_path, options):
    source = canary_instance(tmp_path)
    original_uids = [source.SOPInstanceUID, source.SeriesInstanceUID, source.StudyInstanceUID]
    profile = DeidentificationProfile(frozenset(options))
    out = as_bytes(deidentify(source, profile, KEY))
    # the encoded path (what deidentify_folder runs) writes the same bytes
    assert deidentify_encoded(as_bytes(source), profile, KEY).data == out
    for what, canary in ALWAYS.items():
        assert canary.encode() not in out, f"{what} survived {options}"
    assert (INSTITUTION.encode() in out) == (Option.RETAIN_INSTITUTION_IDENTITY in options)
    assert (STATION.encode() in out) == (Option.RETAIN_DEVICE_IDENTITY in options)
    assert (STUDY_DATE.encode() in out) == (Option.RETAIN_LONGITUDINAL_FULL_DATES in options)
    # descriptors: gone without Clean Descriptors; with it kept, the identifiers inside scrubbed
    assert (b"liver" in out) == (Option.CLEAN_DESCRIPTORS in options)
    assert (FREE_TEXT.encode() in out) == (Option.CLEAN_DESCRIPTORS in options)
    assert (b"ZQXREQDESC" in out) == (Option.CLEAN_DESCRIPTORS in options)  # nested description
    for uid in original_uids:
        assert (uid.encode() in out) == (Option.RETAIN_UIDS in options)


def test_source_dataset_is_not_modified(tmp_path):
    source = canary_instance(tmp_path)
    before = as_bytes(source)
    deidentify(source, DeidentificationProfile(), KEY)
    assert as_bytes(source) == before


def test_safe_private_keeps_only_the_listed_attribute(tmp_path):
    source = canary_instance(tmp_path)
    block = source.private_block(0x0029, "ACME PRIVATE")
    block.add_new(0x11, "DS", "1.5")  # safe-listed below
    profile = DeidentificationProfile(
        frozenset({Option.RETAIN_SAFE_PRIVATE}), safe_private=frozenset({("ACME PRIVATE", 0x0029, 0x11)})
    )
    out = deidentify(source, profile, KEY)
    assert out[0x00291011].value == "1.5" and out[0x00290010].value == "ACME PRIVATE"
    assert 0x00291010 not in out


def test_stamps_and_method_codes(tmp_path):
    out = deidentify(
        canary_instance(tmp_path),
        DeidentificationProfile(
            frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS})
        ),
        KEY,
    )
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113105", "113107"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.DeidentificationMethod and len(out.DeidentificationMethod) <= 64
    assert DeidentificationProfile().version.endswith(f"({table.edition()})")


def test_uids_are_keyed_valid_and_deterministic(tmp_path):
    source = canary_instance(tmp_path)
    profile = DeidentificationProfile()
    one, again, other = (deidentify(source, profile, k) for k in (KEY, KEY, OTHER_KEY))
    assert as_bytes(one) == as_bytes(again)
    assert one.SOPInstanceUID == pseudonym_uid(KEY, source.SOPInstanceUID)
    assert one.file_meta.MediaStorageSOPInstanceUID == one.SOPInstanceUID
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        uid = str(one[keyword].value)
        assert re.fullmatch(r"2\.25\.[1-9]\d*", uid) and len(uid) <= 64
        assert uid != str(other[keyword].value)
    assert one.SOPClassUID == source.SOPClassUID  # not in the table: kept
    assert one.PatientID == one.PatientName and one.PatientID != other.PatientID


def test_modified_dates_keep_intervals_per_patient(tmp_path):
    profile = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
    first = generate_series(tmp_path / "a", slices=1, patient_id="PAT-A", study_date="20200110")
    second = generate_series(tmp_path / "b", slices=1, patient_id="PAT-A", study_date="20200131", seed=1)
    other = generate_series(tmp_path / "c", slices=1, patient_id="PAT-B", study_date="20200110", seed=2)
    a, b, c = (deidentify(pydicom.dcmread(s.files[0]), profile, KEY) for s in (first, second, other))
    from datetime import datetime

    def day(ds: Dataset) -> datetime:
        return datetime.strptime(ds.StudyDate, "%Y%m%d")

    assert (day(b) - day(a)).days == 21
    assert a.StudyDate != "20200110"
    assert a.StudyTime == "120000"
    assert not a.PatientBirthDate  # Table E.1-1: no date option keeps the birth date
    assert a.PatientID == b.PatientID != c.PatientID
    assert c.StudyDate != a.StudyDate  # another patient, another shift (with this key)


def reference_to(series_files: list[Path], tmp_path: Path) -> Path:
    """A SEG-like object pointing at a series: referenced series, instances, frame of reference."""
    first = pydicom.dcmread(series_files[0])
    ref = pydicom.dcmread(series_files[0])
    ref.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.99.1"
    ref.file_meta.MediaStorageSOPInstanceUID = ref.SOPInstanceUID
    ref.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1337.99.2"
    series_item = Dataset()
    series_item.SeriesInstanceUID = first.SeriesInstanceUID
    instances = []
    for path in series_files:
        item = Dataset()
        item.ReferencedSOPClassUID = first.SOPClassUID
        item.ReferencedSOPInstanceUID = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        instances.append(item)
    series_item.ReferencedInstanceSequence = instances
    ref.ReferencedSeriesSequence = [series_item]
    ref.SourceImageSequence = [instances[0]]
    path = tmp_path / "reference.dcm"
    ref.save_as(path, enforce_file_format=True)
    return path


def test_references_survive_separate_runs(tmp_path):
    series = generate_series(tmp_path / "ct", slices=3)
    ref_path = reference_to(series.files, tmp_path / "ct")
    profile = DeidentificationProfile()
    # the series and the reference go through different runs (and processes could be different)
    images = deidentify_folder(tmp_path / "ct", tmp_path / "out1", profile, KEY)
    refs = deidentify_folder(ref_path, tmp_path / "out2", profile, KEY)
    assert len(images.written) == 4 and len(refs.written) == 1
    ref = pydicom.dcmread(refs.written[0])
    written = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in images.written}
    item = ref.ReferencedSeriesSequence[0]
    image = written[item.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID]
    assert item.SeriesInstanceUID == image.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in item.ReferencedInstanceSequence} <= set(written)
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID in written
    assert ref.FrameOfReferenceUID == image.FrameOfReferenceUID
    assert ref.StudyInstanceUID == image.StudyInstanceUID
    assert series.series_instance_uid not in {str(ds.SeriesInstanceUID) for ds in written.values()}


def test_burned_in_annotation_is_refused_naming_the_attribute(tmp_path):
    source = canary_instance(tmp_path)
    source.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation") as err:
        deidentify(source, DeidentificationProfile(), KEY)
    assert "ZQX" not in str(err.value)
    ultrasound = canary_instance(tmp_path)
    ultrasound.SOPClassUID = pydicom.uid.UltrasoundImageStorage
    with pytest.raises(DeidentificationError, match="SOPClassUID"):
        deidentify(ultrasound, DeidentificationProfile(), KEY)
    allowed = deidentify(source, DeidentificationProfile(allow_burned_in_annotation=True), KEY)
    assert allowed.PixelData == source.PixelData


def test_folder_quarantines_and_names_bad_files(tmp_path):
    series = generate_series(tmp_path / "in" / "ZQXFAMILY", slices=2)
    burned = pydicom.dcmread(series.files[0])
    burned.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.98.1"
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "in" / "burned.dcm", enforce_file_format=True)
    (tmp_path / "in" / "notes.txt").write_text("not dicom")
    result = deidentify_folder(
        tmp_path / "in", tmp_path / "out", DeidentificationProfile(), KEY, quarantine_dir=tmp_path / "q"
    )
    assert len(result.written) == 2
    assert list(result.quarantined) == [str(tmp_path / "in" / "burned.dcm")]
    assert "BurnedInAnnotation" in result.quarantined[str(tmp_path / "in" / "burned.dcm")]
    assert list(result.failed) == [str(tmp_path / "in" / "notes.txt")]
    assert (tmp_path / "q" / "quarantine.json").is_file() and (tmp_path / "q" / "000000.dcm").is_file()
    assert all("ZQXFAMILY" not in str(p) for p in (tmp_path / "out").rglob("*"))
    assert pydicom.dcmread(result.written[0]).PixelData == pydicom.dcmread(series.files[0]).PixelData


def test_worker_processes_write_and_report_what_one_process_does(tmp_path, monkeypatch):
    """A folder large enough for worker processes: every outcome (written, quarantined, failed) in input
    order and byte-identical files, as with one process; the re-identification map records them all."""
    from airflow_provider_kaapana.core.deid import files as deid_files
    from airflow_provider_kaapana.core.deid.reidentify import read_maps
    from airflow_provider_kaapana.core.federation.crypto import generate_keypair

    monkeypatch.setattr(deid_files, "PROCESS_MIN_FILES", 8)  # worker processes for a small folder
    series = generate_series(tmp_path / "in" / "ct", rows=16, columns=16, slices=11)
    burned = pydicom.dcmread(series.files[5])
    burned.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.98.2"
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "in" / "ct" / "b-burned.dcm", enforce_file_format=True)
    (tmp_path / "in" / "ct" / "c-notes.txt").write_text("not dicom")
    private, public = generate_keypair()
    results = {}
    for workers in (1, 2):
        results[workers] = deidentify_folder(
            tmp_path / "in",
            tmp_path / f"out{workers}",
            DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})),
            KEY,
            reid_map_dir=tmp_path / f"map{workers}",
            reid_public_key=public,
            workers=workers,
        )
    one, two = results[1], results[2]
    assert len(two.written) == len(series.files)
    assert [p.relative_to(tmp_path / "out2") for p in two.written] == [
        p.relative_to(tmp_path / "out1") for p in one.written
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one.written, two.written))
    assert list(two.quarantined) == [str(tmp_path / "in" / "ct" / "b-burned.dcm")]
    assert list(two.failed) == [str(tmp_path / "in" / "ct" / "c-notes.txt")]
    # input order: the first written file is the first slice
    assert pydicom.dcmread(two.written[0]).InstanceNumber == pydicom.dcmread(series.files[0]).InstanceNumber
    mapped = read_maps(tmp_path / "map2", private)
    assert mapped.as_dict() == read_maps(tmp_path / "map1", private).as_dict()
    assert set(series.sop_instance_uids) <= set(mapped.uids.values())
    assert not list((tmp_path / "out2").rglob("*.part"))


def test_pydicom_test_files_lose_patient_identity(pydicom_test_files, tmp_path):
    profile = DeidentificationProfile()
    checked = 0
    for path in pydicom_test_files:
        try:
            source = pydicom.dcmread(path)
            values = [str(source.get(k, "") or "") for k in ("PatientName", "PatientID")]
        except Exception:
            continue  # deliberately broken test files
        try:
            out = as_bytes(deidentify(source, profile, KEY))
        except DeidentificationError:
            continue  # burned-in candidates: refused, nothing written
        except Exception:
            continue  # files pydicom cannot write back (deliberately odd encodings)
        for value in values:
            for word in re.split(r"[\^\s]+", value):
                if len(word) >= 5 and not word.isdigit():
                    assert word.encode() not in out, f"{path.name}: a patient name/ID word survived"
        checked += 1
    assert checked >= 50


def dciodvfy_errors(dciodvfy: str, path: Path) -> set[str]:
    """dciodvfy's error lines, UIDs quoted in them replaced by ``<UID>`` (de-identification maps them, so an
    error the original had would otherwise look new)."""
    proc = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {re.sub(r"<[0-9.]+>", "<UID>", line) for line in lines if line.startswith("Error")}


def test_dciodvfy_finds_no_new_error(tmp_path, tool):
    dciodvfy = tool("dciodvfy")
    series = generate_series(tmp_path / "ct", slices=1)
    for options in COMBINATIONS[:4]:
        result = deidentify_folder(
            series.files[0], tmp_path / "out", DeidentificationProfile(frozenset(options)), KEY
        )
        new = dciodvfy_errors(dciodvfy, result.written[0]) - dciodvfy_errors(dciodvfy, series.files[0])
        assert not new, f"{options}: {sorted(new)}"


def test_nested_patient_id_gets_its_own_pseudonym(tmp_path):
    source = canary_instance(tmp_path)
    source.AnatomicRegionSequence[0].PatientID = "ZQXNESTEDPID"
    out = deidentify(source, DeidentificationProfile(), KEY)
    nested = out.AnatomicRegionSequence[0].PatientID
    assert nested != out.PatientID and nested.startswith("P") and len(nested) == 16
    again = deidentify(source, DeidentificationProfile(), KEY)
    assert again.AnatomicRegionSequence[0].PatientID == nested


PROFILES = [
    DeidentificationProfile(frozenset()),
    DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})),
    DeidentificationProfile(
        frozenset(
            {Option.CLEAN_DESCRIPTORS, Option.RETAIN_PATIENT_CHARACTERISTICS, Option.RETAIN_DEVICE_IDENTITY}
        )
    ),
]


def test_encoded_path_writes_what_the_dataset_path_writes(pydicom_test_files):
    """deidentify_encoded copies kept elements as bytes and encodes the common actions itself: for
    every pydicom test file and profile its output equals deidentify + pydicom's writer, byte for byte."""
    compared = 0
    for path in pydicom_test_files:
        data = path.read_bytes()
        for profile in PROFILES:
            try:
                expected = as_bytes(deidentify(pydicom.dcmread(BytesIO(data)), profile, KEY))
            except Exception:  # noqa: BLE001 - refused or unwritable by the dataset path: compared below
                expected = None
            try:
                got = deidentify_encoded(data, profile, KEY)
            except NotEncodable:
                continue  # deflated, big endian, not Part 10: deidentify_folder uses the dataset path
            except (DeidentificationError, InvalidDicomError):
                continue  # refused (burned-in text, truncated): checked by their own tests
            if expected is not None:
                assert got.data == expected, f"{path.name}: the two paths differ"
                compared += 1
    assert compared > 150  # not vacuous: most of pydicom's files go through both paths


def test_encoded_path_refuses_truncated_files(pydicom_test_files):
    truncated = [p for p in pydicom_test_files if "truncated" in p.name]
    assert truncated
    for path in truncated:
        with pytest.raises(InvalidDicomError, match="truncated"):
            deidentify_encoded(path.read_bytes(), PROFILES[0], KEY)


def test_encoded_path_leaves_deflated_and_big_endian_to_pydicom(pydicom_test_files, tmp_path):
    by_name = {p.name: p for p in pydicom_test_files}
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm"):
        with pytest.raises(NotEncodable):
            deidentify_encoded(by_name[name].read_bytes(), PROFILES[0], KEY)
        profile = DeidentificationProfile(frozenset(), allow_burned_in_annotation=True)  # image_dfl is SC
        result = deidentify_folder(by_name[name], tmp_path / name, profile, KEY)
        assert len(result.written) == 1, result.failed  # the dataset path takes them
