"""STOW-RS intake on the listener, against an independent client (dicomweb-client from PyPI)."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
from io import BytesIO

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from airflow_provider_kaapana.core.listener.server import DicomListener, SeriesBatch, read_batch_files
from airflow_provider_kaapana.core.listener.stow import split_multipart
from tests.core.test_listener import landed, wait_for

TOKEN = "stow-test-token-0123456789"


def test_dicomweb_client_stores_a_series_that_is_batched_like_c_store(tmp_path, synthetic_series, caplog):
    series = synthetic_series(slices=5)
    batches: list[SeriesBatch] = []
    with caplog.at_level(logging.WARNING, logger="airflow_provider_kaapana.core.listener"):
        with DicomListener(
            tmp_path / "landing",
            port=0,
            quiet_seconds=0.3,
            on_series_complete=batches.append,
            stow_port=0,
            stow_tokens=[TOKEN],
        ) as lst:
            url = f"http://127.0.0.1:{lst.stow_port}"
            client = DICOMwebClient(url=url, headers={"Authorization": f"Bearer {TOKEN}"})
            datasets = [pydicom.dcmread(f) for f in series.files]
            response = client.store_instances(datasets=datasets)
            assert len(response.ReferencedSOPSequence) == 5 and "FailedSOPSequence" not in response
            # the same instances to the study's own URL again: idempotent
            client.store_instances(datasets=datasets[:2], study_instance_uid=series.study_instance_uid)
            with pytest.raises(requests.HTTPError) as denied:
                DICOMwebClient(url=url, headers={"Authorization": "Bearer wrong"}).store_instances(
                    datasets[:1]
                )
            assert denied.value.response.status_code == 401
            wait_for(lambda: batches, what="series completion")
    assert "refused STOW-RS request" in caplog.text and "no valid bearer token" in caplog.text
    files = landed(tmp_path / "landing")
    assert len(files) == 5
    sent = {ds.SOPInstanceUID: ds for ds in datasets}
    for f in files:
        assert pydicom.dcmread(f) == sent[f.stem]  # every element, pixel data included
    (batch,) = batches
    assert batch.conf()["series_instance_uid"] == series.series_instance_uid
    assert sorted(read_batch_files(batch.conf())) == files


BOUNDARY = "kaapana-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes]) -> bytes:
    """A STOW-RS body by hand (to send what dicomweb-client would not: foreign and broken instances)."""
    head = b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % BOUNDARY.encode()
    return b"".join(head + part + b"\r\n" for part in parts) + b"--%s--\r\n" % BOUNDARY.encode()


def part10(ds: pydicom.Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_failures_are_listed_per_instance(tmp_path, synthetic_series):
    series = synthetic_series(slices=3)
    good = [pydicom.dcmread(f) for f in series.files]
    stray = pydicom.dcmread(series.files[0])
    stray.StudyInstanceUID, stray.SOPInstanceUID = (
        "1.2.826.0.1.3680043.10.1337.77.1",
        "1.2.826.0.1.3680043.10.1337.77.2",
    )
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, stow_port=0) as lst:
        url = f"http://127.0.0.1:{lst.stow_port}/dicomweb"
        # one instance of another study posted to this study's URL: refused, the others stored
        truncated = series.files[0].read_bytes()[:-100]
        body = multipart([*(part10(ds) for ds in [*good, stray]), truncated])
        answer = requests.post(
            f"{url}/studies/{series.study_instance_uid}",
            data=body,
            headers={"Content-Type": MULTIPART},
            timeout=30,
        )
        assert answer.status_code == 202  # some stored, some failed
        document = answer.json()
        assert len(document["00081199"]["Value"]) == 3
        failed = document["00081198"]["Value"]
        reasons = sorted(item["00081197"]["Value"][0] for item in failed)
        assert reasons == [0xA900, 0xC000]  # study mismatch; cannot understand (truncated)
        assert (
            requests.post(
                f"{url}/studies", data=b"x", headers={"Content-Type": "application/json"}, timeout=10
            ).status_code
            == 415
        )
    assert len(landed(tmp_path / "landing")) == 3


def test_split_multipart_keeps_binary_content_exact():
    payload = b"\r\n--not-the-boundary\r\n\x00\xff" * 3
    body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\n" + payload + b"\r\n--b1--\r\n"
    ((headers, content),) = split_multipart(body, "multipart/related; boundary=b1")
    assert headers == {"content-type": "application/dicom"} and bytes(content) == payload
    with pytest.raises(ValueError, match="boundary"):
        split_multipart(body, "multipart/related")


def test_stow_over_tls_is_not_blocked_by_an_idle_connection(tmp_path, synthetic_series):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    series = synthetic_series(slices=2)
    with DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=60,
        stow_port=0,
        ssl_context=context,
        tls_handshake_timeout=5,
    ) as lst:
        idle = socket.create_connection(("127.0.0.1", lst.stow_port))  # never says a word
        try:
            answer = requests.post(
                f"https://127.0.0.1:{lst.stow_port}/studies",
                data=multipart([f.read_bytes() for f in series.files]),
                headers={"Content-Type": MULTIPART},
                verify=str(cert),  # the listener's self-signed certificate
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["00081199"]["Value"]) == 2
        finally:
            idle.close()
    assert len(landed(tmp_path / "landing")) == 2
