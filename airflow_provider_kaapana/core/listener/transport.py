"""The listener's TCP side: connection limits, TLS handshakes off the accept thread, and a log line for
every connection or association that is refused, fails or times out.

pynetdicom's :class:`~pynetdicom.transport.ThreadedAssociationServer` wraps each accepted socket for
TLS *in the accepting thread* and without a timeout, so one client that connects and sends nothing
blocks every later TLS association; and its association limit counts connections that have not yet
sent an A-ASSOCIATE-RQ, so a few idle connections lock out every sender until their ARTIM timer
expires. :class:`GuardedAssociationServer` accepts only: it checks the per-peer and total connection
limits, and hands the socket to a per-connection thread which does the TLS handshake under
``tls_handshake_timeout`` and then runs the association. The association limit proper (counting only
associations that asked to be established) is checked by the listener in ``EVT_REQUESTED``.

The receive path is pynetdicom's with four shortcuts, each measured (see the listener benchmark page)
and each falling back to pynetdicom's own code for anything but the plain case: PDUs are read into one
buffer (:func:`read_exactly`), C-STORE requests are reassembled by :class:`StoreRequestReader` and
served on the connection's network thread right after their last fragment, and plain C-STORE
responses are encoded directly (:func:`encode_store_response`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from airflow_provider_kaapana.core.net.tcp import no_delay

log = logging.getLogger(__name__)

REACTOR_WAIT_SECONDS = 0.002
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts (seconds) and limits of the listener's connections and associations.

    ``acse_timeout`` is the ARTIM timer: a connection that sends no A-ASSOCIATE-RQ within it is
    closed. ``network_timeout``: an established association idle that long is aborted.
    ``dimse_timeout``: a C-STORE whose command announced a data set of which no byte arrives within
    it is answered ``0xC000`` (an empty data set: no fragment will ever come).
    ``tls_handshake_timeout``: a TLS client must finish its handshake within it.
    ``max_connections`` / ``max_connections_per_peer``: open TCP connections in all / from one address
    (a connection over a limit is closed at once). ``max_associations``: associations being
    negotiated or established (a request over it is rejected, transient, *local limit exceeded*).
    """

    acse_timeout: float = 10.0
    network_timeout: float = 60.0
    dimse_timeout: float = 10.0
    tls_handshake_timeout: float = 10.0
    max_connections: int = 100
    max_connections_per_peer: int = 20
    max_associations: int = 10


def _element(element: int, value: bytes) -> bytes:
    """One group-0000 element, implicit VR little endian (as every DIMSE command set)."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_store_response(
    message_id: int, status: int, sop_class_uid: str | None, sop_instance_uid: str | None
) -> bytes:
    """The command set of a C-STORE-RSP without Offending Element or Error Comment, encoded (implicit
    VR little endian) as pynetdicom's ``C_STORE_RSP`` encodes it: the same bytes, without building and
    encoding a pydicom dataset twice (0.31 ms of CPU per response, measured; this takes ~5 us). The
    tests compare both encodings."""
    body = b"".join(
        [
            _element(0x0002, _uid_value(sop_class_uid)) if sop_class_uid is not None else b"",
            _element(0x0100, struct.pack("<H", 0x8001)),  # CommandField: C-STORE-RSP
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", 0x0101)),  # CommandDataSetType: no data set
            _element(0x0900, struct.pack("<H", status)),
            _element(0x1000, _uid_value(sop_instance_uid)) if sop_instance_uid is not None else b"",
        ]
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


def _plain_store_response(primitive: Any) -> bool:
    """A C-STORE response :func:`encode_store_response` encodes exactly (else pynetdicom does)."""
    return (
        type(primitive) is C_STORE
        and isinstance(primitive.MessageIDBeingRespondedTo, int)
        and isinstance(primitive.Status, int)
        and 0 <= primitive.MessageIDBeingRespondedTo <= 0xFFFF
        and 0 <= primitive.Status <= 0xFFFF
        and primitive.ErrorComment is None
        and primitive.OffendingElement is None
        and all(
            uid is None or (isinstance(uid, str) and uid.isascii())
            for uid in (primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID)
        )
    )


def fast_store_response_pdata(primitive: Any, context_id: int, max_pdu: int) -> P_DATA | None:
    """The one P-DATA primitive carrying a plain C-STORE response (see :func:`encode_store_response`),
    or ``None`` where pynetdicom must encode it (other fields, a command set over the peer's maximum
    PDU length)."""
    if not _plain_store_response(primitive):
        return None
    encoded = encode_store_response(
        primitive.MessageIDBeingRespondedTo,
        primitive.Status,
        primitive.AffectedSOPClassUID,
        primitive.AffectedSOPInstanceUID,
    )
    if max_pdu and len(encoded) > max_pdu - 6:  # pynetdicom would fragment it
        return None
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))  # last command fragment
    return pdata


def read_exactly(association_socket: AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` with the same result, read into one buffer with ``recv_into``
    instead of 4 KiB ``recv`` calls each appended to a bytearray: 20 instead of 60 us per 128 KiB
    (measured on a socket pair), ~130 fewer system calls per 0.5 MB instance. Fewer bytes than asked
    only when the peer closed the connection.

    After each read the socket is put back into quick-ACK mode (Linux ``TCP_QUICKACK``, which the
    kernel leaves again by itself): a sender with Nagle's algorithm on (``storescu`` here) holds the
    last small segment of a message until its data so far is acknowledged, and our delayed ACK made
    it wait ~40 ms. That happened on 10-20 % of the instances and took 56 % of the time of a
    300-instance run (cycle p99 52 ms, mean 4.9 ms, median 2.9 ms); with quick ACKs p99 8-9 ms, mean
    2.7-3.1 ms."""
    buffer = bytearray(nr_bytes)
    done = 0
    sock = association_socket.socket
    with memoryview(buffer) as view:
        while done < nr_bytes:
            count = sock.recv_into(view[done:])  # type: ignore[union-attr]
            if not count:
                break
            done += count
            if _QUICKACK is not None:
                with contextlib.suppress(OSError, AttributeError, ValueError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[union-attr]
    if done < nr_bytes:
        del buffer[done:]
    return buffer


# the elements of a C-STORE-RQ command set read by StoreRequestReader: anything else (Move
# Originator, unknown elements) is left to pynetdicom
_STORE_RQ_ELEMENTS = {0x0000: 4, 0x0002: 0, 0x0100: 2, 0x0110: 2, 0x0700: 2, 0x0800: 2, 0x1000: 0}


def decode_store_request(command: bytes | bytearray) -> C_STORE | None:
    """The C-STORE request primitive (without its data set) of an encoded command set (implicit VR
    little endian), with the values pynetdicom's ``DIMSEMessage.message_to_primitive`` gives it; ``None``
    for anything but a C-STORE request with a data set and exactly the usual elements (pynetdicom
    decodes those)."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        size = _STORE_RQ_ELEMENTS.get(element)
        if (
            group != 0
            or size is None
            or element in values
            or offset + length > end
            or (size and length != size)
        ):
            return None
        values[element] = bytes(command[offset : offset + length])
        offset += length
    if set(values) != set(_STORE_RQ_ELEMENTS):
        return None
    field, message_id, priority, data_set_type = (
        struct.unpack("<H", values[e])[0] for e in (0x0100, 0x0110, 0x0700, 0x0800)
    )
    if field != 0x0001 or data_set_type == 0x0101:
        return None
    uids = []
    for element in (0x0002, 0x1000):
        uid = values[element].decode("latin-1").rstrip(" \x00")  # as pydicom's convert_UI
        if not uid or "\\" in uid:
            return None
        uids.append(uid)
    request = C_STORE()
    try:
        request.MessageID = message_id
        request.AffectedSOPClassUID = uids[0]
        request.AffectedSOPInstanceUID = uids[1]
        request.Priority = priority
    except (TypeError, ValueError):
        return None
    return request


class StoreRequestReader:
    """Reassembles C-STORE requests from P-DATA primitives for one association, in place of
    pynetdicom's ``DIMSEMessage``, which decodes each command set into a pydicom dataset and builds
    the request from that (~0.3 ms of CPU per instance, measured) and copies every data fragment twice.

    Call :meth:`feed` only while pynetdicom is not in the middle of a message of its own. It returns
    ``None`` when it took the whole primitive, else a P-DATA primitive to give pynetdicom instead:
    a command set :func:`decode_store_request` does not read (as one fragment: pynetdicom joins the
    fragments anyway) with what follows it, or — a command fragment in the middle of a data set —
    the message so far replayed with the rest. A complete request goes to ``deliver(context_id,
    request)``, its data set in a ``BytesIO``; like pynetdicom, the rest of a primitive after the end
    of a message is ignored.
    """

    def __init__(self, deliver: Callable[[int, C_STORE], None]) -> None:
        self._deliver = deliver
        self._command = bytearray()  # the command set so far
        self.request: C_STORE | None = None  # command read, data set being received
        self._context_id = 0
        self._data = BytesIO()

    @property
    def busy(self) -> bool:
        """In the middle of a message (it must get the rest)."""
        return self.request is not None or bool(self._command)

    @property
    def has_data(self) -> bool:
        """Some of the current request's data set has come."""
        return self._data.tell() > 0

    @property
    def context_id(self) -> int:
        """The presentation context of the current message."""
        return self._context_id

    def feed(self, primitive: P_DATA) -> P_DATA | None:
        items = primitive.presentation_data_value_list
        for index, (context_id, fragment) in enumerate(items):
            control = fragment[0]
            if self.request is None:
                if not control & 1:  # a data set fragment with no command before it
                    return self._hand_over(items[index:])
                self._command += memoryview(fragment)[1:]
                self._context_id = context_id
                if not control & 2:
                    continue
                request = decode_store_request(self._command)
                if request is None:
                    return self._hand_over(items[index + 1 :])
                self.request = request
                continue
            if control & 1:  # a command fragment in the middle of a data set: pynetdicom's to handle
                return self._hand_over(items[index:])
            self._data.write(memoryview(fragment)[1:])
            if control & 2:
                request, self.request = self.request, None
                request.DataSet, self._data = self._data, BytesIO()
                self._command = bytearray()
                self._deliver(self._context_id, request)
                return None
        return None

    def _hand_over(self, rest: list[tuple[int, bytes]]) -> P_DATA:
        """The message so far as pynetdicom would have received it, then ``rest``; forget it."""
        replay: list[tuple[int, bytes]] = []
        if self._command:
            replay.append((self._context_id, b"\x03" + bytes(self._command)))
            if self.request is not None and self._data.tell():
                replay.append((self._context_id, b"\x00" + self._data.getvalue()))
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend(replay + list(rest))
        self._command, self.request, self._data = bytearray(), None, BytesIO()
        return pdata

    def empty(self) -> C_STORE | None:
        """The request whose command came but no byte of its data set yet, taken out (for the
        listener's empty-data-set answer), else ``None``."""
        if self.request is None or self._data.tell():
            return None
        request, self.request = self.request, None
        self._command = bytearray()
        return request


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


class GuardedRequestHandler(RequestHandler):
    """Runs one association in the connection's own thread and logs how it ended when it was not
    a normal release (no request within the ARTIM timeout, network timeout, abort)."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        no_delay(self.request)  # our responses go out at once, not after the sender's delayed ACK
        assoc = self._create_association()
        original_serve = assoc._serve_request
        on_empty = self.server.on_empty_store

        def serve(msg: Any, context_id: int) -> None:
            # pynetdicom silently drops a C-STORE-RQ without a data set (not a "valid request"):
            # the sender would wait for its DIMSE timeout; answer it with a failure at once instead
            if isinstance(msg, C_STORE) and msg.DataSet is None and on_empty is not None:
                on_empty(assoc, msg, context_id, "C-STORE without a data set")
                return
            original_serve(msg, context_id)

        assoc._serve_request = serve
        association_socket = assoc.dul.socket
        association_socket.recv = lambda nr_bytes: read_exactly(association_socket, nr_bytes)
        idle_check = assoc.dul.idle_timer_expired
        idle_expired: list[bool] = []

        def expired() -> bool:
            # the reactor asks this before aborting an idle association: remember a "yes"
            if idle_check():
                idle_expired.append(True)
                return True
            return False

        assoc.dul.idle_timer_expired = expired
        dimse = assoc.dimse
        original_receive = dimse.receive_primitive
        receive_lock = threading.Lock()
        last_pdata = [time.monotonic()]

        msg_queue = dimse.msg_queue
        inline: list[tuple[int, Any]] = []
        queue_put = msg_queue.put

        def put(item: tuple[int, Any], block: bool = True, timeout: float | None = None) -> None:
            # A complete C-STORE request is served on the network thread that decoded it, right
            # after the decoding, instead of being queued for the association's own thread: that
            # saves two thread hand-overs per instance (to the association thread, and of the
            # response back to the network thread, which picks it up in its next loop without a
            # nap). The sender waits for the response anyway, so the network thread has nothing
            # else to do meanwhile. Only requests pynetdicom would serve without aborting (an
            # accepted context, no release under way: an abort from this thread would wait for
            # itself); everything else goes the usual way.
            context_id, primitive = item
            if (
                type(primitive) is C_STORE
                and primitive.MessageIDBeingRespondedTo is None
                and threading.current_thread() is assoc.dul
                and context_id in assoc._accepted_cx
                and not assoc._sent_release
            ):
                inline.append(item)
                return
            queue_put(item, block, timeout)

        msg_queue.put = put  # type: ignore[method-assign]

        reader = StoreRequestReader(lambda context_id, request: msg_queue.put((context_id, request)))

        def receive(primitive: Any) -> None:
            with receive_lock:
                last_pdata[0] = time.monotonic()
                if reader.busy or (
                    dimse.message is None  # pynetdicom is not in the middle of a message
                    and not _config.STORE_RECV_CHUNKED_DATASET
                    and not assoc.get_handlers(evt.EVT_DIMSE_RECV)
                ):
                    primitive = reader.feed(primitive)
                if primitive is not None:
                    original_receive(primitive)
            while inline:
                context_id, request = inline.pop(0)
                try:
                    serve(request, context_id)
                except Exception:  # noqa: BLE001 - as the association thread would: keep the network thread
                    log.exception("serving a C-STORE request from %s failed", _peer(self.client_address))

        dimse.receive_primitive = receive
        original_get_msg = dimse.get_msg

        def get_msg(block: bool = False) -> Any:
            # pynetdicom's acceptor reactor sleeps 1 ms and then looks at the DIMSE queue without
            # waiting (Association._run_reactor): a completely received instance waited up to 1 ms
            # (more on a busy CPU) before its handler ran, on every instance. Its look now waits up to
            # REACTOR_WAIT_SECONDS on the queue, which returns the moment the message is complete; the
            # reactor's 1 ms sleep then falls while the sender is sending the next instance. (C-STORE
            # requests no longer come this way: see put above)
            if block:
                return original_get_msg(block)
            try:
                return msg_queue.get(timeout=REACTOR_WAIT_SECONDS)
            except queue.Empty:
                return None, None

        dimse.get_msg = get_msg
        original_send_msg = dimse.send_msg

        def send_msg(primitive: Any, context_id: int) -> None:
            # a plain C-STORE response (every success) encoded directly, see encode_store_response
            if not assoc.get_handlers(evt.EVT_DIMSE_SENT):
                pdata = fast_store_response_pdata(primitive, context_id, dimse.maximum_pdu_size)
                if pdata is not None:
                    assoc.dul.send_pdu(pdata)
                    return
            original_send_msg(primitive, context_id)

        dimse.send_msg = send_msg
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        stall = self.server.limits.dimse_timeout
        suspect = 0
        while assoc.is_alive():
            assoc.join(timeout=min(0.5, stall / 2))
            if on_empty is None or not assoc.is_alive():
                continue
            with receive_lock:
                message = dimse.message
                ours = reader.request is not None and not reader.has_data
                waiting = (
                    ours
                    or (
                        isinstance(message, C_STORE_RQ)
                        and getattr(message, "command_set", None) is not None
                        and message.data_set.tell() == 0
                    )
                ) and time.monotonic() - last_pdata[0] > stall
                if waiting and (assoc.dul.socket.ready or not assoc.dul.event_queue.empty()):
                    waiting = False  # bytes have arrived, a busy listener just has not read them yet
                suspect = suspect + 1 if waiting else 0
                if suspect >= 2:  # seen twice, half a second apart: nothing is on its way
                    # a C-STORE command announcing a data set, and no byte of it for dimse_timeout:
                    # the sender sent an empty data set; answer instead of waiting for its timeout
                    suspect = 0
                    if ours:
                        context_id = reader.context_id
                        request = reader.empty()
                    else:
                        context_id = message.context_id
                        request = message.message_to_primitive()
                        dimse.message = None
                    request.DataSet = None
                    on_empty(assoc, request, context_id, f"no data set within {stall:.0f} s")
        peer = _peer(self.client_address)
        limits = self.server.limits
        if assoc.requestor.primitive is None and not assoc.is_aborted:
            log.warning(
                "closed connection from %s: no association request within %.0f s (ARTIM timeout)",
                peer,
                limits.acse_timeout,
            )
        elif idle_expired:
            log.warning(
                "aborted association from %s (%s): idle for %.0f s (network timeout)",
                assoc.requestor.ae_title,
                peer,
                limits.network_timeout,
            )
        elif assoc.is_aborted and not assoc.is_rejected:
            who = assoc.requestor.ae_title if assoc.requestor.primitive is not None else "(no AE title yet)"
            log.warning("association from %s (%s) aborted", who, peer)


class GuardedAssociationServer(ThreadedAssociationServer):
    """A threaded association server that accepts only in its accepting thread (see module doc)."""

    daemon_threads = True

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        limits: ConnectionLimits | None = None,
        on_empty_store: Callable[[Any, C_STORE, int, str], None] | None = None,
    ) -> None:
        self.limits = limits or ConnectionLimits()
        self.on_empty_store = on_empty_store
        self._tls = ssl_context
        self._open: Counter[str] = Counter()
        self._open_lock = threading.Lock()
        self.refused_connections = 0
        # pynetdicom would wrap in the accepting thread: keep its TLS off, ours is in the thread
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            None,
            evt_handlers=evt_handlers,
            request_handler=GuardedRequestHandler,
        )
        self.request_queue_size = max(self.request_queue_size, 64)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        with self._open_lock:
            total = sum(self._open.values())
            if total >= self.limits.max_connections:
                reason = f"{total} connections open (limit {self.limits.max_connections})"
            elif self._open[host] >= self.limits.max_connections_per_peer:
                reason = f"{self._open[host]} connections open from {host} (limit {self.limits.max_connections_per_peer})"
            else:
                self._open[host] += 1
                return True
            self.refused_connections += 1
        log.warning("refused connection from %s: %s", _peer(client_address), reason)
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        try:
            if self._tls is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open[host] -= 1
                if self._open[host] <= 0:
                    del self._open[host]

    def _handshake(self, request: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        assert self._tls is not None
        timeout = self.limits.tls_handshake_timeout
        try:
            request.settimeout(timeout)
            wrapped = self._tls.wrap_socket(request, server_side=True)
            wrapped.settimeout(None)  # pynetdicom polls the socket itself
            return wrapped
        except TimeoutError:
            log.warning("TLS handshake with %s timed out after %.0f s", _peer(client_address), timeout)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s failed: %s", _peer(client_address), exc)
        self.shutdown_request(request)
        return None

    def open_connections(self) -> int:
        """Open TCP connections right now."""
        with self._open_lock:
            return sum(self._open.values())
