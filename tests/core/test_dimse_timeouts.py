"""A PACS that accepts TCP and never answers: ``kaapana send`` gives up after its timeouts and says which.

Issue 19 item 7: such a peer kept ``kaapana send`` waiting 120 s per attempt, 8+ minutes in all, saying
only "no response".
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.exceptions import PacsError
from airflow_provider_kaapana.testing.local_services import free_port


@pytest.fixture
def silent_peer():
    """Accepts every connection, reads nothing, answers nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_send_to_a_silent_peer_names_host_port_and_the_acse_timeout(silent_peer, ct_series):
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_kaapana",
            "send",
            str(ct_series.series_dir),
            "--dimse",
            f"SILENT@127.0.0.1:{silent_peer}",
            "--acse-timeout",
            "1",
            "--retries",
            "1",
            "--backoff",
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    assert elapsed < 20, elapsed  # two attempts of about 1 s each, not minutes
    assert (
        f"no answer from 127.0.0.1:{silent_peer} to the association request within the ACSE timeout "
        "(1 s; set acse_timeout)" in proc.stderr
    ), proc.stderr


def test_defaults_are_thirty_seconds_and_bad_values_are_refused():
    peer = dimse.DimsePeer("h", 1)
    assert (peer.acse_timeout, peer.dimse_timeout, peer.network_timeout) == (30.0, 30.0, 30.0)
    with pytest.raises(ValueError, match="dimse_timeout must be a positive number"):
        dimse.DimsePeer("h", 1, dimse_timeout=0)


@pytest.fixture
def slow_store_scp():
    """A storage SCP that takes 3 s to answer each C-STORE."""

    def slow(event):
        time.sleep(3)
        return 0x0000

    ae = AE(ae_title="SLOW")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow)])
    yield port
    server.shutdown()


def test_store_names_the_dimse_timeout_when_a_c_store_is_not_answered(slow_store_scp, ct_series):
    peer = dimse.DimsePeer(
        "127.0.0.1", slow_store_scp, "SLOW", dimse_timeout=1, network_timeout=10, retries=0
    )
    started = time.monotonic()
    with pytest.raises(PacsError) as err:
        dimse.store(peer, ct_series.files[:1])
    assert time.monotonic() - started < 10
    assert (
        f"no answer from 127.0.0.1:{slow_store_scp} to C-STORE within the DIMSE timeout (1 s; set "
        "dimse_timeout)" in str(err.value)
    )
