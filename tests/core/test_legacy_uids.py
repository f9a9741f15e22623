"""Legacy UIDs with a leading-zero component are stored and sent like any other (issue 19 item 7).

They used to be refused outright. The lenient rule (digits and dots, at most 64 characters) is what
intake accepts; the strict PS3.5 rule is for UIDs we make. Indexing them: tests/core/test_index_invalid.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from airflow_provider_kaapana.core.listener.server import DicomListener, SeriesBatch
from airflow_provider_kaapana.core.net import dimse

LEGACY_STUDY = "1.2.840.0113654.2.70.1"
LEGACY_SERIES = "1.2.840.0113654.2.70.1.01"


def test_listener_stores_and_announces_a_series_with_leading_zero_uids(tmp_path: Path, synthetic_series):
    series = synthetic_series(
        slices=3, rows=8, columns=8, study_instance_uid=LEGACY_STUDY, series_instance_uid=LEGACY_SERIES
    )
    batches: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=0.3, on_series_complete=batches.append
    ) as listener:
        peer = dimse.DimsePeer("127.0.0.1", listener.port, "KAAPANA", retries=0)
        results = dimse.store(peer, series.files)
        assert all(r.ok for r in results)
        deadline = time.monotonic() + 15
        while not batches and time.monotonic() < deadline:
            time.sleep(0.05)
    assert [b.series_instance_uid for b in batches] == [LEGACY_SERIES]
    landed = sorted((tmp_path / "landing" / LEGACY_STUDY / LEGACY_SERIES).glob("*.dcm"))
    assert len(landed) == 3
    assert {pydicom.dcmread(p).SOPInstanceUID for p in landed} == set(series.sop_instance_uids)


def test_a_legacy_series_is_stored_in_the_pacs(orthanc, synthetic_series):
    series = synthetic_series(
        slices=2,
        rows=8,
        columns=8,
        study_instance_uid=LEGACY_STUDY + ".7",
        series_instance_uid=LEGACY_SERIES + "7",
    )
    peer = dimse.DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet, retries=0)
    assert all(r.ok for r in dimse.store(peer, series.files))
    found = dimse.find(
        peer,
        "instance",
        {"StudyInstanceUID": LEGACY_STUDY + ".7", "SeriesInstanceUID": LEGACY_SERIES + "7"},
        ["SOPInstanceUID"],
    )
    assert {str(ds.SOPInstanceUID) for ds in found} == set(series.sop_instance_uids)
