"""The listener's fast paths give exactly what the plain paths give: the C-STORE response command set
and P-DATA as pynetdicom encodes them, the PDU reads as pynetdicom reads them, the files written into
spares as those written into new temporaries."""

from __future__ import annotations

import socket
import stat
import threading
import time
from io import BytesIO

import pydicom
import pytest
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.transport import AssociationSocket

from airflow_provider_kaapana.core import files
from airflow_provider_kaapana.core.dicom.elements import read_file_meta
from airflow_provider_kaapana.core.listener.server import DicomListener
from airflow_provider_kaapana.core.listener.transport import (
    StoreRequestReader,
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


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_instances_written_into_spares_are_the_same_files(tmp_path, synthetic_series, monkeypatch):
    """A started listener writes each instance of a series after the first into a spare file made
    ahead; the files are byte for byte those of the path without spares, and no spare is left."""
    opened = []
    original = files._open_spare

    def counting(spare, tmp):
        opened.append(spare)
        return original(spare, tmp)

    monkeypatch.setattr(files, "_open_spare", counting)
    series = synthetic_series(slices=6, rows=32, columns=32)
    datasets = []
    for path in series.files:
        raw = path.read_bytes()
        datasets.append(raw[read_file_meta(raw)[1] :])
    plain = DicomListener(tmp_path / "plain", port=0, quiet_seconds=60)  # never started: no spares
    plain.landing_dir.mkdir()
    with DicomListener(tmp_path / "spares", port=0, quiet_seconds=60) as lst:
        for data in datasets:
            outcome = lst.store_instance(data, "1.2.840.10008.1.2.1", "MOD", "KAAPANA")
            assert outcome.status == 0
            series_dir = outcome.path.parent
            _wait_for(lambda d=series_dir: any(p.name.startswith(".spare.") for p in d.iterdir()))
            reference = plain.store_instance(data, "1.2.840.10008.1.2.1", "MOD", "KAAPANA")
            assert outcome.path.read_bytes() == reference.path.read_bytes()
            assert stat.S_IMODE(outcome.path.stat().st_mode) == stat.S_IMODE(reference.path.stat().st_mode)
    assert len(opened) == len(datasets) - 1  # every instance after the first
    assert not list((tmp_path / "spares").rglob("*.part"))
    assert not list((tmp_path / "plain").rglob("*.part"))


# --- C-STORE requests: StoreRequestReader against pynetdicom's DIMSEMessage ------------------------


def _store_request(
    message_id=7, sop_class_uid=UIDS[0], sop_instance_uid=UIDS[1], priority=2, data=b"", **extra
):
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = priority
    for name, value in extra.items():
        setattr(request, name, value)
    request.DataSet = BytesIO(data)
    return request


def _encoded(primitive, context_id=1, max_pdu=16382):
    message = (C_STORE_RQ if isinstance(primitive, C_STORE) else C_ECHO_RQ)()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(context_id, max_pdu))


_FIELDS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
)


def _summary(context_id, primitive):
    data = getattr(primitive, "DataSet", None)
    fields = {f: (getattr(primitive, f, None), type(getattr(primitive, f, None))) for f in _FIELDS}
    return context_id, type(primitive).__name__, fields, data.getvalue() if data is not None else None


def _decoded(message):
    try:  # pynetdicom's DIMSE provider turns an error here into an abort (Evt19)
        return _summary(message.context_id, message.message_to_primitive())
    except Exception as exc:  # noqa: BLE001
        return "invalid message", type(exc).__name__


def _pynetdicom_messages(pdatas):
    """What pynetdicom's DIMSE provider queues for these P-DATA primitives."""
    out, message = [], None
    for pdata in pdatas:
        message = message or DIMSEMessage()
        if message.decode_msg(pdata):
            out.append(_decoded(message))
            message = None
    return out


def _reader_messages(pdatas):
    """The same through the listener's glue: the reader first, pynetdicom for what it hands over."""
    out, message = [], None

    def deliver(context_id, request):
        reader.delivered += 1
        out.append(_summary(context_id, request))

    reader = StoreRequestReader(deliver)
    reader.delivered = 0
    for pdata in pdatas:
        if reader.busy or message is None:
            pdata = reader.feed(pdata)
        if pdata is not None:
            message = message or DIMSEMessage()
            if message.decode_msg(pdata):
                out.append(_decoded(message))
                message = None
    return out, reader


@pytest.mark.parametrize("max_pdu", [0, 16382, 64, 20])  # 64 and 20: the command set in fragments
@pytest.mark.parametrize("priority", [0, 1, 2])
@pytest.mark.parametrize("uids", [(UIDS[0], UIDS[1]), (UIDS[1], UIDS[2]), (UIDS[3], UIDS[3])])
def test_store_requests_read_as_pynetdicom_reads_them(max_pdu, priority, uids):
    data = bytes(range(256)) * 300 + b"odd"
    pdatas = []
    for message_id in (0, 1, 0xFFFF):
        request = _store_request(message_id, *uids, priority=priority, data=data)
        pdatas += _encoded(request, context_id=3, max_pdu=max_pdu)
    expected = _pynetdicom_messages(pdatas)
    got, reader = _reader_messages(pdatas)
    assert len(expected) == 3 and got == expected
    assert reader.delivered == 3 and not reader.busy  # all three read by the reader


@pytest.mark.parametrize(
    "other",
    [
        _store_request(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=5, data=b"ab"),
        C_ECHO(),
    ],
    ids=["move-originator", "echo"],
)
@pytest.mark.parametrize("max_pdu", [0, 20])
def test_other_messages_are_handed_to_pynetdicom_unchanged(other, max_pdu):
    if isinstance(other, C_ECHO):
        other.MessageID = 3
    plain = _store_request(data=b"xy" * 1000)
    pdatas = (
        _encoded(plain, max_pdu=max_pdu) + _encoded(other, max_pdu=max_pdu) + _encoded(plain, max_pdu=max_pdu)
    )
    expected = _pynetdicom_messages(pdatas)
    got, reader = _reader_messages(pdatas)
    assert len(expected) == 3 and got == expected
    assert reader.delivered == 2 and not reader.busy  # the other one by pynetdicom


def test_a_command_fragment_inside_a_data_set_is_replayed_to_pynetdicom():
    first = _encoded(_store_request(data=b"d" * 300), max_pdu=100)  # command, then data fragments
    second = _encoded(_store_request(message_id=8, data=b"e" * 50))
    # the sender breaks off the first data set and starts another message
    pdatas = first[:-1] + second
    expected = _pynetdicom_messages(pdatas)
    got, reader = _reader_messages(pdatas)
    assert got == expected
    # and a data fragment with no command before it
    stray = _encoded(_store_request(data=b"z" * 10))[1:]
    assert _reader_messages(stray + second)[0] == _pynetdicom_messages(stray + second)


def test_the_reader_hands_out_a_request_still_waiting_for_its_data_set():
    delivered = []
    reader = StoreRequestReader(lambda c, r: delivered.append(r))
    command, *data = _encoded(_store_request(data=b"q" * 100), context_id=5)
    assert reader.feed(command) is None and reader.busy and not reader.has_data
    request = reader.empty()
    assert reader.context_id == 5 and request.MessageID == 7 and not reader.busy
    assert reader.empty() is None and not delivered


def test_stores_echoes_and_a_move_originator_store_on_one_association(tmp_path, synthetic_series):
    """Over one real association: C-STOREs served on the network thread, a C-ECHO and a C-STORE with
    a Move Originator (pynetdicom's way) in between, all answered; the stored files are the sent ones."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    series = synthetic_series(slices=3, rows=16, columns=16)
    threads = []
    with DicomListener(tmp_path / "landing", port=0, quiet_seconds=60) as lst:
        original = lst.store_instance

        def recording(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return original(*args, **kwargs)

        lst.store_instance = recording
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(series.files[0]).Status, assoc.send_c_echo().Status]
            statuses.append(
                assoc.send_c_store(series.files[1], originator_aet="MOVER", originator_id=9).Status
            )
            statuses += [assoc.send_c_echo().Status, assoc.send_c_store(series.files[2]).Status]
        finally:
            assoc.release()
    assert statuses == [0, 0, 0, 0, 0]
    assert len(threads) == 3 and all(name == threads[0] for name in threads)
    assert not threads[0].startswith("AcceptorThread")  # the network thread, not the association's
    for path in series.files:
        raw = path.read_bytes()
        [stored] = (tmp_path / "landing").rglob(f"{pydicom.dcmread(path).SOPInstanceUID}.dcm")
        written = stored.read_bytes()
        assert written[read_file_meta(written)[1] :] == raw[read_file_meta(raw)[1] :]
