"""The DICOM listener against real senders (dcmtk storescu, pynetdicom), and its Airflow trigger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from airflow_provider_kaapana.core.dicom.raw import scan_dataset
from airflow_provider_kaapana.core.listener.server import (
    AirflowTrigger,
    DicomListener,
    SeriesBatch,
    read_batch_files,
)
from airflow_provider_kaapana.exceptions import InvalidDicomError


def wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def storescu(tool, port, files, calling="MODALITY1", called="KAAPANA"):
    result = subprocess.run(
        [tool("storescu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result


def landed(landing: Path) -> list[Path]:
    return sorted(p for p in landing.rglob("*.dcm") if ".kaapana" not in p.parts)


def test_storescu_to_listener_stores_the_sent_datasets(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=6)
    batches: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=0.3, on_series_complete=batches.append
    ) as lst:
        result = storescu(tool, lst.port, series.files)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: batches, what="series completion")
    files = landed(tmp_path / "landing")
    assert len(files) == 6
    sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in series.files}
    for f in files:
        assert f.parent == tmp_path / "landing" / series.study_instance_uid / series.series_instance_uid
        stored = pydicom.dcmread(f)
        assert stored.file_meta.TransferSyntaxUID == sent[f.stem].file_meta.TransferSyntaxUID
        assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY1"
        assert stored == sent[f.stem]  # every element, pixel data included
    (batch,) = batches
    conf = batch.conf()
    assert conf["study_instance_uid"] == series.study_instance_uid
    assert conf["series_instance_uid"] == series.series_instance_uid
    assert conf["calling_ae"] == "MODALITY1" and conf["called_ae"] == "KAAPANA"
    assert conf["instance_count"] == 6
    assert sorted(read_batch_files(conf)) == files
    manifest = json.loads(Path(conf["batch_manifest"]).read_text())
    assert manifest["state"] == "triggered"


def _send_raw(port: int, paths: list[Path], calling="SENDER") -> list[int | None]:
    """Send files exactly as they are on disk (pynetdicom chunked send), one association."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="KAAPANA")
    assert assoc.is_established
    statuses = []
    for path in paths:
        status = assoc.send_c_store(path)
        statuses.append(getattr(status, "Status", None))
    assoc.release()
    return statuses


def _corrupt(
    src: Path, dst: Path, keep_dataset_bytes: int | None = None, garbage: bytes | None = None
) -> Path:
    data = src.read_bytes()
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    body = data[meta_end:]
    if keep_dataset_bytes is not None:
        body = body[:keep_dataset_bytes]
    if garbage is not None:
        body = garbage
    dst.write_bytes(data[:meta_end] + body)
    return dst


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_payloads_are_refused_and_the_association_goes_on(tmp_path, synthetic_series, caplog):
    series = synthetic_series(slices=3, rows=64, columns=64)
    truncated = _corrupt(series.files[1], tmp_path / "truncated.dcm", keep_dataset_bytes=5000)
    garbage = _corrupt(series.files[1], tmp_path / "garbage.dcm", garbage=os.urandom(3000))
    bad_uid = synthetic_series(
        "baduid",
        slices=1,
        series_instance_uid="1.2.3",
        per_instance=lambda k, ds: setattr(ds, "SeriesInstanceUID", "1.2.3/../.."),
    ).files[0]
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60) as lst:
        statuses = _send_raw(
            lst.port, [series.files[0], truncated, garbage, bad_uid, series.files[2]], calling="BADSENDER"
        )
    assert statuses[0] == 0 and statuses[4] == 0
    assert all(s is not None and s >= 0xA000 for s in statuses[1:4]), statuses
    assert [f.stem for f in landed(tmp_path / "landing")] == sorted(
        [series.sop_instance_uids[0], series.sop_instance_uids[2]]
    )
    assert not list((tmp_path / "landing").rglob("*.part"))
    assert "BADSENDER" in caplog.text and "truncated" in caplog.text
    assert lst.refused == 3 and lst.received == 2


def test_scan_dataset_checks_structure(synthetic_series):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    series = synthetic_series(slices=1, rows=16, columns=16)
    ds = pydicom.dcmread(series.files[0])
    ds.ReferencedImageSequence = [pydicom.Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    for implicit, syntax in ((False, "1.2.840.10008.1.2.1"), (True, "1.2.840.10008.1.2")):
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
        body = fp.getvalue()
        uids = scan_dataset(body, syntax)
        assert uids["series_instance_uid"] == series.series_instance_uid
        assert uids["sop_instance_uid"] == series.sop_instance_uids[0]
        with pytest.raises(InvalidDicomError, match="truncated"):
            scan_dataset(body[:-10], syntax)
        with pytest.raises(InvalidDicomError):
            scan_dataset(os.urandom(2000), syntax)


def test_allow_list_and_disk_threshold_refuse_associations(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, rows=16, columns=16)
    with DicomListener(tmp_path / "a", port=0, allow_calling=["TRUSTED"], quiet_seconds=60) as lst:
        assert storescu(tool, lst.port, series.files, calling="STRANGER").returncode != 0
        assert storescu(tool, lst.port, series.files, calling="TRUSTED").returncode == 0
    assert len(landed(tmp_path / "a")) == 2
    with DicomListener(tmp_path / "b", port=0, min_free_bytes=1 << 62, quiet_seconds=60) as lst:
        result = storescu(tool, lst.port, series.files)
        assert result.returncode != 0
        assert "Rejected" in result.stderr or "reject" in result.stderr.lower(), result.stderr
    assert landed(tmp_path / "b") == []


def test_late_instances_start_a_new_batch_with_only_them(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=5, rows=16, columns=16)
    batches: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=0.3, on_series_complete=batches.append
    ) as lst:
        assert storescu(tool, lst.port, series.files[:3]).returncode == 0
        wait_for(lambda: len(batches) == 1)
        assert storescu(tool, lst.port, series.files[3:]).returncode == 0
        wait_for(lambda: len(batches) == 2)
    first, second = batches
    assert (first.batch, second.batch) == (1, 2)
    assert sorted(first.files) == sorted(f"{u}.dcm" for u in series.sop_instance_uids[:3])
    assert sorted(second.files) == sorted(f"{u}.dcm" for u in series.sop_instance_uids[3:])
    assert first.run_id != second.run_id
    assert len(read_batch_files(second.conf())) == 2


def test_failed_announcements_are_retried_and_survive_a_restart(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=3, rows=16, columns=16)
    other = synthetic_series(slices=2, rows=16, columns=16, series_number=2)
    calls = []

    def broken(batch):
        calls.append(batch.batch)
        raise RuntimeError("airflow is down")

    landing = tmp_path / "landing"
    lst = DicomListener(
        landing, port=0, quiet_seconds=0.2, on_series_complete=broken, retry_seconds=0.1
    ).start()
    assert storescu(tool, lst.port, series.files).returncode == 0
    wait_for(lambda: len(calls) >= 2, what="a retried announcement")  # retried while running
    lst.quiet_seconds = 3600  # the second series arrives but is never quiet before the restart
    assert storescu(tool, lst.port, other.files).returncode == 0
    lst.stop()
    (manifest,) = list((landing / ".kaapana" / "batches").glob("*/*.json"))
    assert json.loads(manifest.read_text())["state"] == "pending"

    announced: list[SeriesBatch] = []
    with DicomListener(landing, port=0, quiet_seconds=0.2, on_series_complete=announced.append):
        wait_for(lambda: len(announced) == 2, what="re-announcement after restart")
    by_series = {b.series_instance_uid: b for b in announced}
    assert by_series[series.series_instance_uid].batch == 1  # the same batch, not a new one
    assert len(by_series[series.series_instance_uid].files) == 3
    assert len(by_series[other.series_instance_uid].files) == 2
    states = [json.loads(m.read_text())["state"] for m in (landing / ".kaapana").rglob("*.json")]
    assert states == ["triggered", "triggered"]


@pytest.mark.slow
def test_killing_the_listener_leaves_no_partial_file(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=40, rows=512, columns=512)
    landing = tmp_path / "landing"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_kaapana",
            "listen",
            "--port",
            "0",
            "--landing",
            str(landing),
            "--no-trigger",
            "--quiet-seconds",
            "600",
            "--min-free-mb",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
        sender = subprocess.Popen(
            [tool("storescu"), "-aec", "KAAPANA", "127.0.0.1", str(port), *map(str, series.files)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: len(landed(landing)) >= 5, what="some instances")
        proc.send_signal(signal.SIGKILL)  # mid-association
        proc.wait(timeout=10)
        sender.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    files = landed(landing)
    assert 5 <= len(files) < 40
    sent = {p.stem: p for p in (Path(f) for f in series.files)}
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in sent.values()}
    for f in files:  # every visible file is complete and equal to what was sent
        assert pydicom.dcmread(f) == pydicom.dcmread(by_uid[f.stem])
    # a restart promotes complete hidden temporaries, removes partial ones, announces what arrived
    announced = []
    with DicomListener(landing, port=0, quiet_seconds=0.1, on_series_complete=announced.append):
        wait_for(lambda: announced)
    assert not list(landing.rglob("*.part"))
    after = landed(landing)
    assert len(files) <= len(after) <= len(files) + 1
    assert announced[0].instance_count == len(after)
    for f in after:
        assert pydicom.dcmread(f) == pydicom.dcmread(by_uid[f.stem])


def test_recover_partial_files_promotes_only_complete_temporaries(tmp_path, synthetic_series):
    from airflow_provider_kaapana.core.dicom.raw import recover_partial_files

    series = synthetic_series(slices=2, rows=16, columns=16)
    tmp_path = tmp_path / "landing"
    tmp_path.mkdir()
    complete = tmp_path / f".{series.sop_instance_uids[0]}.dcm.abc123.part"
    complete.write_bytes(series.files[0].read_bytes())
    partial = tmp_path / f".{series.sop_instance_uids[1]}.dcm.xyz789.part"
    partial.write_bytes(series.files[1].read_bytes()[:-100])
    assert recover_partial_files(tmp_path) == (1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{series.sop_instance_uids[0]}.dcm"]


def test_airflow_trigger_fetches_token_retries_and_sends_the_conf(
    tmp_path, synthetic_series, tool, fake_airflow
):
    handler, url = fake_airflow
    handler.fail_next = 1  # the first dagRuns POST fails with 503
    trigger = AirflowTrigger(url, "kaapana_ingest", username="admin", password="pw", backoff=0.01)
    series = synthetic_series(slices=3, rows=16, columns=16)
    batches = []

    def announce(batch):
        batches.append(batch)
        return trigger(batch)

    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=0.3, on_series_complete=announce) as lst:
        assert storescu(tool, lst.port, series.files[:2], calling="CT01").returncode == 0
        wait_for(lambda: len(handler.runs) == 1)
        assert storescu(tool, lst.port, series.files[2:], calling="CT01").returncode == 0
        wait_for(lambda: len(handler.runs) == 2)
    paths = [r[1] for r in handler.requests]
    assert paths[0] == "/auth/token"
    assert paths.count("/api/v2/dags/kaapana_ingest/dagRuns") == 3  # 503, success, late batch
    posts = [r for r in handler.requests if r[1].endswith("/dagRuns")]
    assert all(r[2]["Authorization"] == "Bearer tok-123" for r in posts)
    first_conf, late_conf = posts[1][3]["conf"], posts[2][3]["conf"]
    assert first_conf["instance_count"] == 2 and late_conf["instance_count"] == 1
    assert late_conf["files"] == [f"{series.sop_instance_uids[2]}.dcm"]
    assert first_conf["calling_ae"] == "CT01" and first_conf["called_ae"] == "KAAPANA"
    assert first_conf["series_dir"].endswith(series.series_instance_uid)
    assert posts[1][3]["dag_run_id"] != posts[2][3]["dag_run_id"]
    # re-announcing the same batch (e.g. after a crash) does not start a second run
    again = trigger(batches[0])
    assert again["already_triggered"] is True and len(handler.runs) == 2


def test_airflow_trigger_gives_up_with_a_clear_error(fake_airflow):
    from airflow_provider_kaapana.exceptions import KaapanaError

    handler, url = fake_airflow
    handler.fail_next = 10
    trigger = AirflowTrigger(url, "kaapana_ingest", token="tok-123", retries=2, backoff=0.01)
    with pytest.raises(KaapanaError, match="kaapana_ingest.*after 3 attempts.*503"):
        trigger.trigger({"series_instance_uid": "1.2.3"})
    assert len(handler.requests) == 3


def test_dimse_over_tls_between_hook_core_and_listener(tmp_path, synthetic_series):
    import shutil
    import ssl

    from airflow_provider_kaapana.core.net import dimse

    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    series = synthetic_series(slices=2, rows=16, columns=16)
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, ssl_context=server) as lst:
        peer = dimse.DimsePeer("127.0.0.1", lst.port, "KAAPANA", tls=client, retries=0)
        dimse.echo(peer)
        assert all(r.ok for r in dimse.store(peer, series.files))
        plain = dimse.DimsePeer("127.0.0.1", lst.port, "KAAPANA", retries=0)
        with pytest.raises(Exception, match="C-ECHO with PACS KAAPANA@127.0.0.1"):
            dimse.echo(plain)  # no TLS: refused
    assert len(landed(tmp_path / "landing")) == 2


def test_listen_cli_triggers_airflow_with_a_token_from_the_environment(
    tmp_path, synthetic_series, tool, fake_airflow
):
    handler, url = fake_airflow
    series = synthetic_series(slices=2, rows=16, columns=16)
    landing = tmp_path / "landing"
    cmd = [sys.executable, "-m", "airflow_provider_kaapana", "listen", "--port", "0", "--ae-title", "KLISTEN"]
    cmd += [
        "--landing",
        str(landing),
        "--quiet-seconds",
        "0.3",
        "--min-free-mb",
        "1",
        "--allow-calling",
        "CT01",
    ]
    cmd += ["--airflow-url", url, "--dag-id", "kaapana_ingest"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "KAAPANA_AIRFLOW_TOKEN": "tok-123"}
    )
    try:
        line = proc.stdout.readline()
        assert "kaapana listen: KLISTEN on" in line, line
        port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
        assert storescu(tool, port, series.files, calling="CT01", called="KLISTEN").returncode == 0
        wait_for(lambda: handler.runs, what="a DAG run")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    (post,) = [r for r in handler.requests if r[1] == "/api/v2/dags/kaapana_ingest/dagRuns"]
    assert post[3]["conf"]["instance_count"] == 2 and post[3]["conf"]["called_ae"] == "KLISTEN"
    assert "tok-123" not in line


def test_a_failed_manifest_write_keeps_the_instances_pending(tmp_path, synthetic_series, tool, monkeypatch):
    series = synthetic_series(slices=3, rows=16, columns=16)
    real_save = SeriesBatch.save
    failures = []

    def flaky_save(self):
        if not failures:
            failures.append(self.batch)
            raise OSError(28, "No space left on device")
        real_save(self)

    monkeypatch.setattr(SeriesBatch, "save", flaky_save)
    announced: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=0.2, on_series_complete=announced.append
    ) as lst:
        assert storescu(tool, lst.port, series.files).returncode == 0
        wait_for(lambda: announced, what="announcement after the failed manifest write")
    assert failures == [1]
    (batch,) = announced
    assert batch.instance_count == 3


def test_airflow_credentials_never_reach_logs_or_errors(fake_airflow, caplog):
    """Wrong password, retried 503s and the final error: neither password nor token is ever shown."""
    import logging

    from airflow_provider_kaapana.exceptions import KaapanaError

    handler, url = fake_airflow
    caplog.set_level(logging.DEBUG)
    wrong = AirflowTrigger(url, "kaapana_ingest", username="admin", password="s3cret-wrong", backoff=0.01)
    with pytest.raises(KaapanaError) as refused:
        wrong.trigger({"series_instance_uid": "1.2.3"})
    handler.fail_next = 10
    right = AirflowTrigger(url, "kaapana_ingest", username="admin", password="pw", retries=2, backoff=0.01)
    with pytest.raises(KaapanaError) as gave_up:
        right.trigger({"series_instance_uid": "1.2.3"})
    shown = " ".join([caplog.text, str(refused.value), str(gave_up.value), repr(wrong), repr(right)])
    assert "503" in shown  # the retries were logged ...
    for secret in ("s3cret-wrong", "tok-123", "Bearer"):
        assert secret not in shown  # ... without the credentials
