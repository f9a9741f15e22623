"""What the listener's store path does with hostile or odd instances: deflate bombs, C-STOREs without
a data set, a SOP Instance UID sent again, a series UID under two studies."""

from __future__ import annotations

import json
import logging

import pydicom

from airflow_provider_kaapana.core.ingest import receive_from_landing, validate_batch
from airflow_provider_kaapana.core.listener.server import DicomListener, SeriesBatch, read_batch_files
from tests.core.listener_senders import (
    DEFLATED,
    ListenerProcess,
    dataset_bytes,
    deflate_bomb,
    deflated_file,
    sender,
    store_without_dataset,
)
from tests.core.test_listener import landed, storescu, wait_for

# peak resident memory a listener may gain while refusing a 300 MB deflate bomb: measured ~10 MB;
# before the inflate cap it was accepted and the peak grew by ~600 MB
BOMB_MEMORY_BOUND_MB = 40


def test_a_deflate_bomb_is_refused_without_inflating_it(tmp_path, synthetic_series):
    series = synthetic_series(slices=2, rows=32, columns=32)
    bomb = deflate_bomb(series.files[0], tmp_path / "bomb.dcm", inflated_mb=300)
    assert bomb.stat().st_size < 400_000
    honest = deflated_file(series.files[1], tmp_path / "honest.dcm")
    listener = ListenerProcess(tmp_path / "landing")
    try:
        assoc = sender("BOMBER", DEFLATED).associate("127.0.0.1", listener.port, ae_title="KAAPANA")
        assert assoc.is_established
        assert assoc.send_c_store(honest).Status == 0x0000  # deflated data as such is welcome
        before = listener.peak_rss_mb()
        status = assoc.send_c_store(bomb)
        assoc.release()
        gained = listener.peak_rss_mb() - before
    finally:
        listener.stop()
    assert status.Status == 0xA700
    assert "inflated dataset exceeds 268435456 bytes" in status.ErrorComment
    assert gained < BOMB_MEMORY_BOUND_MB, f"peak RSS grew by {gained:.0f} MB"
    log = listener.log()
    assert f"refused instance {series.sop_instance_uids[0]} from BOMBER: deflated dataset of" in log
    assert "inflates past the limit of 268435456 bytes" in log
    (stored,) = landed(tmp_path / "landing")
    assert stored.stem == series.sop_instance_uids[1]
    assert dataset_bytes(stored) == dataset_bytes(honest)


def test_the_inflate_cap_is_configurable(tmp_path, synthetic_series):
    series = synthetic_series(slices=1, rows=64, columns=64)
    honest = deflated_file(series.files[0], tmp_path / "honest.dcm")
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, max_inflated_bytes=4096) as lst:
        assoc = sender("S", DEFLATED).associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert assoc.send_c_store(honest).Status == 0xA700  # 8 KB of pixels inflate past 4 KB
        assoc.release()
    assert landed(tmp_path / "landing") == []


def test_a_c_store_with_an_empty_data_set_gets_a_failure_not_a_timeout(tmp_path, synthetic_series, caplog):
    # the sender's command announces a data set, then not one byte of it comes (pynetdicom sends an
    # empty data set so): answered within dimse_timeout, the association goes on
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, dimse_timeout=1.0) as lst:
        good = synthetic_series(slices=1, rows=16, columns=16).files[0]
        status, waited, after = store_without_dataset(lst.port, "1.2.3.4", then=good)
    assert status == 0xC000 and waited < 3.0
    assert after == 0x0000
    assert "refused instance 1.2.3.4 from EMPTY: no data set within 1 s" in caplog.text
    assert lst.refused == 1 and len(landed(tmp_path / "landing")) == 1


def test_an_instance_sent_again_never_overwrites_the_first(tmp_path, synthetic_series, caplog):
    series = synthetic_series(slices=2, rows=16, columns=16)
    original = series.files[0]
    changed = tmp_path / "changed.dcm"
    ds = pydicom.dcmread(original)
    ds.PatientName = "Corrected^Name"  # same SOP Instance UID, other content
    ds.save_as(changed, enforce_file_format=True)
    batches: list[SeriesBatch] = []
    landing = tmp_path / "landing"
    with DicomListener(landing, port=0, quiet_seconds=0.5, on_series_complete=batches.append) as lst:
        assoc = sender("CT01").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        statuses = [assoc.send_c_store(p).Status for p in (original, series.files[1], original, changed)]
        again = [assoc.send_c_store(changed).Status]  # the changed copy once more: kept once
        assoc.release()
        wait_for(lambda: batches, what="the batch")
    assert statuses == [0x0000, 0x0000, 0x0000, 0xB000] and again == [0xB000]
    sop_uid = series.sop_instance_uids[0]
    stored = landing / series.study_instance_uid / series.series_instance_uid / f"{sop_uid}.dcm"
    assert dataset_bytes(stored) == dataset_bytes(original)  # the first copy, untouched
    (kept,) = (landing / ".kaapana" / "conflicts" / series.series_instance_uid).glob("*.dcm")
    assert kept.name.startswith(sop_uid + ".")
    assert dataset_bytes(kept) == dataset_bytes(changed)
    (batch,) = batches  # the resent identical instance was not counted twice
    assert sorted(batch.files) == sorted(f"{uid}.dcm" for uid in series.sop_instance_uids)
    assert "differs from the copy already stored" in caplog.text and str(kept) in caplog.text
    assert lst.received == 2


def test_one_series_uid_under_two_studies_gives_one_batch_per_study(tmp_path, synthetic_series, tool):
    study_b = "1.2.826.0.1.3680043.10.1337.777.2"
    series = synthetic_series(
        slices=6,
        rows=16,
        columns=16,
        per_instance=lambda k, ds: setattr(ds, "StudyInstanceUID", study_b) if k >= 3 else None,
    )
    study_a = series.study_instance_uid
    landing = tmp_path / "landing"
    # received, then the listener stops before the series was quiet: a restart must announce both parts
    lst = DicomListener(landing, port=0, quiet_seconds=3600).start()
    assert storescu(tool, lst.port, series.files).returncode == 0
    assert lst.pending_series() == {series.series_instance_uid: 6}
    lst.stop()

    announced: list[SeriesBatch] = []
    with DicomListener(landing, port=0, quiet_seconds=0.2, on_series_complete=announced.append):
        wait_for(lambda: len(announced) == 2, what="both parts announced")
    by_study = {b.study_instance_uid: b for b in announced}
    assert set(by_study) == {study_a, study_b}
    assert sorted(b.batch for b in announced) == [1, 2]  # one numbering per series UID
    for study, batch in by_study.items():
        assert batch.series_dir == str(landing / study / series.series_instance_uid)
        assert batch.instance_count == 3
        files = read_batch_files(batch.conf())
        assert all(f.exists() for f in files)
        received = receive_from_landing(batch.conf(), tmp_path / "ws" / study / "dicom")
        item = {"series_dir": str(received[0].parent), "series_instance_uid": series.series_instance_uid}
        (validated,) = validate_batch(item, batch.conf())
        assert validated["instances"] == 3 and not validated["quarantined"]

    again: list[SeriesBatch] = []
    with DicomListener(landing, port=0, quiet_seconds=0.2, on_series_complete=again.append) as lst:
        lst.check(force=True)
    assert again == []  # exactly once: nothing is announced a second time
    states = [json.loads(m.read_text())["state"] for m in (landing / ".kaapana").rglob("*.json")]
    assert states == ["triggered", "triggered"]


def test_the_store_path_is_callable_without_dimse(tmp_path, synthetic_series, caplog):
    """The function a second intake protocol (e.g. STOW-RS) calls: same checks, same bookkeeping."""
    caplog.set_level(logging.INFO)
    series = synthetic_series(slices=1, rows=16, columns=16)
    data = dataset_bytes(series.files[0])
    lst = DicomListener(tmp_path / "landing", port=0, quiet_seconds=60)
    lst.landing_dir.mkdir(parents=True)
    outcome = lst.store_instance(data, "1.2.840.10008.1.2.1", calling_ae="STOW", called_ae="KAAPANA")
    assert outcome.status == 0 and outcome.stored
    assert dataset_bytes(outcome.path) == data
    assert pydicom.dcmread(outcome.path).file_meta.SourceApplicationEntityTitle == "STOW"
    assert lst.pending_series() == {series.series_instance_uid: 1}
    refused = lst.store_instance(data[:100], "1.2.840.10008.1.2.1", calling_ae="STOW", called_ae="KAAPANA")
    assert refused.status == 0xC000 and not refused.stored and "truncated" in refused.comment
