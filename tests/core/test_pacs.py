"""core.dimse and core.dicomweb against a real Orthanc (DIMSE and DICOMweb, with and without auth)."""

from __future__ import annotations

import time

import pydicom
import pytest

from airflow_provider_kaapana.core.listener.server import DicomListener
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient, write_multipart
from airflow_provider_kaapana.exceptions import InvalidUIDError, PacsError
from airflow_provider_kaapana.testing.local_services import free_port


def peer_of(orthanc, **kwargs) -> dimse.DimsePeer:
    return dimse.DimsePeer(
        "127.0.0.1", orthanc.dicom_port, orthanc.aet, "KAAPANA", retries=1, backoff=0.01, **kwargs
    )


def same_datasets(sent_files, received_files) -> bool:
    sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in sent_files}
    received = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in received_files}
    return sent.keys() == received.keys() and all(sent[k] == received[k] for k in sent)


def test_dimse_store_find_get_move(orthanc_factory, synthetic_series, tmp_path):
    move_port = free_port()
    listener_port = free_port()
    pacs = orthanc_factory(
        modalities={
            "TMP": ("KAAPANA_MV", "127.0.0.1", move_port),
            "LST": ("KLISTEN", "127.0.0.1", listener_port),
        }
    )
    peer = peer_of(pacs)
    series = synthetic_series(slices=4, rows=32, columns=32, patient_id="PDIMSE")
    dimse.echo(peer)
    results = dimse.store(peer, series.files)
    assert [r.ok for r in results] == [True] * 4 and all(r.status == 0 for r in results)
    assert {r.sop_instance_uid for r in results} == set(series.sop_instance_uids)

    studies = dimse.find(peer, "study", {"PatientID": "PDIMSE"})
    assert [s.StudyInstanceUID for s in studies] == [series.study_instance_uid]
    (found_series,) = dimse.find(peer, "series", {"StudyInstanceUID": series.study_instance_uid})
    assert found_series.SeriesInstanceUID == series.series_instance_uid
    assert int(found_series.NumberOfSeriesRelatedInstances) == 4
    instances = dimse.find(
        peer,
        "instance",
        {"StudyInstanceUID": series.study_instance_uid, "SeriesInstanceUID": series.series_instance_uid},
    )
    assert {i.SOPInstanceUID for i in instances} == set(series.sop_instance_uids)

    got = dimse.get(peer, tmp_path / "get", series.study_instance_uid, series.series_instance_uid)
    assert got.completed == 4 and same_datasets(series.files, got.files)
    one = dimse.get(
        peer,
        tmp_path / "one",
        series.study_instance_uid,
        series.series_instance_uid,
        series.sop_instance_uids[:1],
    )
    assert [f.stem for f in one.files] == series.sop_instance_uids[:1]

    moved = dimse.move(
        peer,
        "KAAPANA_MV",
        series.study_instance_uid,
        series.series_instance_uid,
        dest_dir=tmp_path / "move",
        listen_port=move_port,
    )
    assert moved.completed == 4 and same_datasets(series.files, moved.files)

    # C-MOVE to a running listener: Orthanc pushes the series into the landing zone
    batches = []
    with DicomListener(
        tmp_path / "landing",
        port=listener_port,
        ae_title="KLISTEN",
        quiet_seconds=0.2,
        on_series_complete=batches.append,
    ):
        counts = dimse.move(peer, "KLISTEN", series.study_instance_uid, series.series_instance_uid)
        assert counts.completed == 4
        deadline = time.monotonic() + 10
        while not batches and time.monotonic() < deadline:
            time.sleep(0.05)
    assert batches and batches[0].instance_count == 4 and batches[0].calling_ae == pacs.aet

    with pytest.raises(PacsError, match=r"C-GET series 1\.2\.3\.4\.5 with PACS ORTHANC@"):
        dimse.get(peer, tmp_path / "none", series.study_instance_uid, "1.2.3.4.5")


def test_dimse_rejects_invalid_uids_before_any_network(tmp_path):
    peer = dimse.DimsePeer("127.0.0.1", 1, "NOWHERE", retries=0)
    with pytest.raises(InvalidUIDError):
        dimse.get(peer, tmp_path, "1.2.3", "../../etc")


def test_pacs_down_fails_after_retries_naming_pacs_and_operation(tmp_path, ct_series):
    port = free_port()
    peer = dimse.DimsePeer("127.0.0.1", port, "DCM4CHEE", retries=2, backoff=0.01)
    with pytest.raises(
        PacsError, match=rf"C-ECHO with PACS DCM4CHEE@127\.0\.0\.1:{port} failed after 3 attempts"
    ):
        dimse.echo(peer)
    with pytest.raises(PacsError, match=rf"C-FIND STUDY with PACS DCM4CHEE@127\.0\.0\.1:{port}"):
        dimse.find(peer, "study", {"PatientID": "X"})
    with pytest.raises(
        PacsError, match=rf"C-STORE to PACS DCM4CHEE@127\.0\.0\.1:{port}: 16 of 16 files failed"
    ):
        dimse.store(peer, ct_series.files)
    web = DicomWebClient(f"http://127.0.0.1:{port}/dicom-web", retries=1, backoff=0.01)
    with pytest.raises(
        PacsError, match=rf"QIDO-RS studies at DICOMweb http://127\.0\.0\.1:{port}/dicom-web failed after 2"
    ):
        web.qido("studies")


@pytest.mark.parametrize("with_auth", [False, True])
def test_dicomweb_stow_qido_wado(request, synthetic_series, tmp_path, with_auth):
    pacs = request.getfixturevalue("orthanc_auth" if with_auth else "orthanc")
    series = synthetic_series(slices=5, rows=32, columns=32, patient_id=f"PWEB{int(with_auth)}")
    client = DicomWebClient(pacs.dicomweb_url, auth=pacs.auth, retries=1, backoff=0.01)
    results = client.stow(series.files, batch_size=2)  # three requests
    assert [r.ok for r in results] == [True] * 5
    studies = client.qido("studies", {"PatientID": f"PWEB{int(with_auth)}"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [series.study_instance_uid]
    assert (
        client.verify_stored(series.study_instance_uid, series.series_instance_uid, series.sop_instance_uids)
        == set()
    )
    assert client.verify_stored(series.study_instance_uid, series.series_instance_uid, ["1.2.3.4"]) == {
        "1.2.3.4"
    }
    got = client.retrieve_series(series.study_instance_uid, series.series_instance_uid, tmp_path / "wado")
    assert len(got.files) == 5 and same_datasets(series.files, got.files)
    assert not list((tmp_path / "wado").glob(".*"))
    study = client.retrieve_study(series.study_instance_uid, tmp_path / "study")
    assert len(study.files) == 5
    if with_auth:
        anonymous = DicomWebClient(pacs.dicomweb_url, retries=0)
        with pytest.raises(PacsError, match="HTTP 401"):
            anonymous.qido("studies")
        wrong = DicomWebClient(pacs.dicomweb_url, auth=("kaapana", "wrong"), retries=0)
        with pytest.raises(PacsError, match="HTTP 401") as err:
            wrong.stow(series.files[:1])
        assert "wrong" not in str(err.value)


def test_multipart_parser_handles_any_chunking(synthetic_series, tmp_path):
    series = synthetic_series(slices=3, rows=16, columns=16)
    boundary = "b0undary-xyz"
    body = b"preamble\r\n"
    for f in series.files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    for size in (1, 7, 4096, len(body)):
        out = tmp_path / f"chunks{size}"
        out.mkdir()
        chunks = (body[i : i + size] for i in range(0, len(body), size))
        files = write_multipart(content_type, chunks, out)
        assert sorted(f.read_bytes() for f in files) == sorted(f.read_bytes() for f in series.files)
    out = tmp_path / "cut"
    out.mkdir()
    with pytest.raises(Exception, match="closing boundary"):
        write_multipart(content_type, [body[: len(body) // 2]], out)
    assert list(out.iterdir()) == [] or all(not p.name.startswith(".") for p in out.iterdir())
