"""The listener under idle, slow and unwelcome connections: TLS handshakes off the accept thread, ARTIM
and connection limits, and a log line for every refused or timed-out connection or association."""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time

import pytest
from pynetdicom.sop_class import CTImageStorage

from airflow_provider_kaapana.core.listener.server import DicomListener
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.exceptions import KaapanaError
from tests.core.listener_senders import closed_by_peer, idle_sockets, make_certificate, sender
from tests.core.test_listener import landed, storescu, wait_for


@pytest.fixture
def listener_log(caplog):
    caplog.set_level(logging.INFO, logger="airflow_provider_kaapana.core.listener")
    return caplog


def test_an_idle_connection_does_not_stop_a_tls_listener(tmp_path, synthetic_series, listener_log):
    cert, key = make_certificate(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    series = synthetic_series(slices=2, rows=16, columns=16)
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=60, ssl_context=server, tls_handshake_timeout=1.0
    ) as lst:
        (idle,) = idle_sockets(lst.port, 1)  # like `nc host port`: connects, says nothing
        peer = dimse.DimsePeer("127.0.0.1", lst.port, "KAAPANA", tls=client, retries=0)
        results: list = []
        worker = threading.Thread(target=lambda: results.append(dimse.store(peer, series.files)), daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(timeout=15)
        assert not worker.is_alive(), "a TLS sender was blocked by one idle connection"
        assert time.monotonic() - started < 5
        assert all(r.ok for r in results[0])
        assert closed_by_peer(idle, timeout=5)  # the idle one is dropped after its handshake timeout
        wait_for(lambda: "timed out after 1 s" in listener_log.text, what="the handshake timeout log line")
        plain = dimse.DimsePeer("127.0.0.1", lst.port, "KAAPANA", retries=0, acse_timeout=5)
        with pytest.raises(KaapanaError, match="C-ECHO with PACS KAAPANA@127.0.0.1"):
            dimse.echo(plain)  # DIMSE without TLS on a TLS port
        failed = re.compile(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        wait_for(lambda: failed.search(listener_log.text), what="the handshake failure log line")
    assert len(landed(tmp_path / "landing")) == 2


def test_idle_plain_connections_do_not_lock_out_senders(tmp_path, synthetic_series, tool, listener_log):
    series = synthetic_series(slices=2, rows=16, columns=16)
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, acse_timeout=2.0) as lst:
        idle = idle_sockets(lst.port, 10)  # as many as max_associations
        time.sleep(0.3)
        started = time.monotonic()
        result = storescu(tool, lst.port, series.files)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 5
        # ARTIM: every idle connection is closed after acse_timeout, and each one is logged
        assert all(closed_by_peer(sock, timeout=6) for sock in idle)
        wait_for(lambda: listener_log.text.count("(ARTIM timeout)") == 10, what="ten ARTIM log lines")
    assert "no association request within 2 s (ARTIM timeout)" in listener_log.text
    assert len(landed(tmp_path / "landing")) == 2


def test_connection_and_association_limits_refuse_and_log(tmp_path, synthetic_series, tool, listener_log):
    series = synthetic_series(slices=1, rows=16, columns=16)
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=60, max_connections_per_peer=3, max_associations=1
    ) as lst:
        hog = idle_sockets(lst.port, 4, source="127.0.0.2")
        assert closed_by_peer(hog[3], timeout=3)  # the fourth from that address is closed at once
        assert not closed_by_peer(hog[0], timeout=0.2)
        assert "refused connection from 127.0.0.2:" in listener_log.text
        assert "3 connections open from 127.0.0.2 (limit 3)" in listener_log.text
        assert storescu(tool, lst.port, series.files).returncode == 0  # another address is served

        held = sender("HOLDER").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert held.is_established
        second = sender("LATECOMER").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert second.is_rejected
        held.release()
        assert "rejected association from LATECOMER (127.0.0.1:" in listener_log.text
        assert "1 associations active (limit 1)" in listener_log.text
        again = sender("LATECOMER").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert again.is_established  # the limit counts live associations only
        again.release()
        for sock in hog:
            sock.close()
    assert lst.refused >= 1


def test_allow_list_and_unsupported_sop_classes_are_logged(tmp_path, listener_log):
    private_sop_class = "1.2.826.0.1.3680043.10.1337.99.1"
    with DicomListener(tmp_path / "landing", port=0, allow_calling=["TRUSTED"], quiet_seconds=60) as lst:
        stranger = sender("STRANGER").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert stranger.is_rejected
        ae = sender("TRUSTED", abstract_syntaxes=(CTImageStorage, private_sop_class))
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert assoc.is_established
        assoc.release()
    assert "rejected association from STRANGER (127.0.0.1:" in listener_log.text
    assert "calling AE title not on the allow-list" in listener_log.text
    assert f"refused presentation contexts {private_sop_class} (SOP class not supported)" in listener_log.text


def test_an_idle_association_is_aborted_and_logged(tmp_path, listener_log):
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60, network_timeout=1.0) as lst:
        assoc = sender("SLEEPY").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert assoc.is_established
        wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), timeout=10, what="the abort")
        wait_for(lambda: "network timeout" in listener_log.text, what="the network timeout log line")
    assert "aborted association from SLEEPY (127.0.0.1:" in listener_log.text
