"""The listener transport's fast paths give exactly what pynetdicom's own code gives: the C-STORE
response command set and P-DATA, and the PDU reads."""

from __future__ import annotations

import socket
import threading

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationSocket

from airflow_provider_kaapana.core.listener.transport import (
    encode_store_response,
    fast_store_response_pdata,
    read_exactly,
)

UIDS = [
    "1.2.840.10008.5.1.4.1.1.2",  # even length
    "1.2.840.10008.5.1.4.1.1.20",  # odd length: padded with a NUL
    "1.2.826.0.1.3680043.8.498.10538131496617553734106394632133513421",  # 64 characters
    "1.2",
]


def _response(message_id, status, sop_class_uid, sop_instance_uid, **extra):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    if sop_class_uid is not None:
        rsp.AffectedSOPClassUID = sop_class_uid
    if sop_instance_uid is not None:
        rsp.AffectedSOPInstanceUID = sop_instance_uid
    rsp.Status = status
    for name, value in extra.items():
        setattr(rsp, name, value)
    return rsp


def _pynetdicom_pdata(primitive, context_id, max_pdu):
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return [p.presentation_data_value_list for p in message.encode_msg(context_id, max_pdu)]


@pytest.mark.parametrize("sop_class_uid", [*UIDS, None])
@pytest.mark.parametrize("sop_instance_uid", [*UIDS, None])
@pytest.mark.parametrize("message_id", [0, 1, 255, 256, 0xFFFF])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000, 0x0110, 0xFFFF])
def test_store_response_bytes_as_pynetdicom(sop_class_uid, sop_instance_uid, message_id, status):
    primitive = _response(message_id, status, sop_class_uid, sop_instance_uid)
    for max_pdu in (0, 16382, 4096):
        fast = fast_store_response_pdata(primitive, 3, max_pdu)
        assert fast is not None
        assert [fast.presentation_data_value_list] == _pynetdicom_pdata(primitive, 3, max_pdu)


def test_store_response_encoding_is_the_command_set():
    encoded = encode_store_response(7, 0, UIDS[1], UIDS[0])
    [pdvs] = _pynetdicom_pdata(_response(7, 0, UIDS[1], UIDS[0]), 1, 0)
    assert pdvs == [(1, b"\x03" + encoded)]


@pytest.mark.parametrize("extra", [{"ErrorComment": "landing zone full"}, {"OffendingElement": [0x00100010]}])
def test_store_response_with_more_fields_is_left_to_pynetdicom(extra):
    assert fast_store_response_pdata(_response(1, 0xC000, UIDS[0], UIDS[1], **extra), 1, 0) is None


def test_store_response_over_the_peer_pdu_limit_is_left_to_pynetdicom():
    primitive = _response(1, 0, UIDS[2], UIDS[2])
    length = len(encode_store_response(1, 0, UIDS[2], UIDS[2]))
    assert fast_store_response_pdata(primitive, 1, length + 6) is not None
    assert fast_store_response_pdata(primitive, 1, length + 5) is None  # pynetdicom fragments it


def test_other_messages_are_left_to_pynetdicom():
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = UIDS[0]
    request.AffectedSOPInstanceUID = UIDS[1]
    request.Priority = 2
    assert fast_store_response_pdata(request, 1, 0) is None  # a request, not a response


class _FakeAssociationSocket:
    def __init__(self, sock):
        self.socket = sock


@pytest.mark.parametrize("size", [0, 1, 6, 4095, 4096, 4097, 131072, 600_000])
def test_read_exactly_reads_what_pynetdicom_reads(size):
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    for reader in ("pynetdicom", "fast"):
        a, b = socket.socketpair()
        try:
            sender = threading.Thread(target=a.sendall, args=(payload + b"next",))
            sender.start()
            if reader == "fast":
                got = read_exactly(_FakeAssociationSocket(b), size)
            else:
                got = AssociationSocket.recv(_FakeAssociationSocket(b), size)
            sender.join()
            assert isinstance(got, bytearray)
            assert got == payload
            assert b.recv(4) == b"next"  # nothing read past the asked length
        finally:
            a.close()
            b.close()


def test_read_exactly_returns_what_came_before_the_peer_closed():
    for reader in (read_exactly, AssociationSocket.recv):
        a, b = socket.socketpair()
        a.sendall(b"x" * 5000)
        a.close()
        try:
            assert reader(_FakeAssociationSocket(b), 10_000) == bytearray(b"x" * 5000)
        finally:
            b.close()
