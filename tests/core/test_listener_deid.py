"""De-identification on intake: a research AE title receives only de-identified data, originals never
written to the landing zone; the clinical AE title of the same listener keeps the originals."""

from __future__ import annotations

import logging

import pydicom

from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.listener.server import DicomListener, IntakeDeidentification, SeriesBatch
from tests.core.test_listener import landed, storescu, wait_for

KEY = b"intake-site-key-0123456789abcdefghij"
PROFILE = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))


def test_research_ae_gets_only_deidentified_instances(tmp_path, synthetic_series, tool, caplog):
    series = synthetic_series(slices=4, patient_name="ZQXINTAKE^Pat", patient_id="ZQXPID31")
    burned = pydicom.dcmread(series.files[0])
    burned.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.98.1"
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm", enforce_file_format=True)
    batches: list[SeriesBatch] = []
    deid = IntakeDeidentification(PROFILE, KEY, frozenset({"RESEARCH"}))
    landing = tmp_path / "landing"
    with caplog.at_level(logging.WARNING, logger="airflow_provider_kaapana.core.listener.server"):
        with DicomListener(
            landing, port=0, quiet_seconds=0.3, on_series_complete=batches.append, deidentification=deid
        ) as lst:
            result = storescu(tool, lst.port, series.files, called="RESEARCH")
            assert result.returncode == 0, result.stderr
            refused = storescu(tool, lst.port, [tmp_path / "burned.dcm"], called="RESEARCH")
            wait_for(lambda: batches, what="series completion")
    files = landed(landing)
    assert len(files) == 4  # the burned-in instance was refused, nothing of it written
    assert "refuses it" in caplog.text and "BurnedInAnnotation" in caplog.text
    assert refused.returncode != 0  # storescu saw the failure status
    for path in landing.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for original in (b"ZQXINTAKE", b"ZQXPID31", series.series_instance_uid.encode()):
                assert original not in data, f"{path} holds an original identifier"
    # what landed is exactly what the folder step writes from the same originals with the same key
    expected = deidentify_folder(series.series_dir, tmp_path / "expected", PROFILE, KEY)
    by_name = {p.name: p for p in expected.written}
    for path in files:
        assert path.read_bytes()[132:] != b""  # a Part 10 file
        same = by_name[path.name]
        assert pydicom.dcmread(path) == pydicom.dcmread(same)
        assert path.parent.name == same.parent.name  # the pseudonymous series UID
    (batch,) = batches
    assert batch.conf()["called_ae"] == "RESEARCH"
    assert batch.conf()["series_instance_uid"] == files[0].parent.name != series.series_instance_uid


def test_other_called_ae_titles_keep_the_originals(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, patient_name="ZQXCLINIC^Pat")
    deid = IntakeDeidentification(PROFILE, KEY, frozenset({"RESEARCH"}))
    batches: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=0.3,
        on_series_complete=batches.append,
        deidentification=deid,
    ) as lst:
        assert storescu(tool, lst.port, series.files, called="KAAPANA").returncode == 0
        wait_for(lambda: batches, what="series completion")
    files = landed(tmp_path / "landing")
    assert [f.parent.name for f in files] == [series.series_instance_uid] * 2
    assert str(pydicom.dcmread(files[0]).PatientName) == "ZQXCLINIC^Pat"
