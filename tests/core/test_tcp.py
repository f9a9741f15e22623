"""Nagle's algorithm is off on every DIMSE connection we hold: our associations with a PACS (send, query,
retrieve) and the listener's accepted connections (core/net/tcp.py says what it cost: 90 ms per small
C-STORE to Orthanc). The C-MOVE destination of ``dimse.move`` uses the same helper on EVT_CONN_OPEN."""

from __future__ import annotations

import socket

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from airflow_provider_kaapana.core.listener import transport
from airflow_provider_kaapana.core.listener.server import DicomListener
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.tcp import no_delay


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_no_delay_sets_the_option_and_leaves_anything_else_alone():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        assert nodelay(client) == 0  # the kernel's default, which the fix is about
        no_delay(client)
        assert nodelay(client) != 0
    finally:
        client.close()
        server.close()
    no_delay(client)  # closed: no error
    no_delay(None)


def test_our_association_with_a_peer_has_nagle_off():
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        peer = dimse.DimsePeer(host="127.0.0.1", port=server.server_address[1], called_ae="PEER")
        ae = dimse._ae(peer)
        ae.add_requested_context(Verification)
        assoc = dimse._associate(ae, peer, "C-ECHO")
        try:
            assert nodelay(assoc.dul.socket.socket) != 0
        finally:
            assoc.release()
    finally:
        server.shutdown()


def test_the_listener_turns_nagle_off_on_each_accepted_connection(tmp_path, monkeypatch):
    seen: list[int] = []

    def recording(sock):
        no_delay(sock)
        seen.append(nodelay(sock))

    monkeypatch.setattr(transport, "no_delay", recording)
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60) as listener:
        ae = AE(ae_title="ECHOER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="KAAPANA")
        assert assoc.is_established
        assoc.send_c_echo()
        assoc.release()
    assert seen and all(v != 0 for v in seen)
