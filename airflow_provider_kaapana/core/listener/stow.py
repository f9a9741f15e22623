"""STOW-RS intake (DICOMweb, PS3.18 10.5): ``POST /studies`` and ``POST /studies/{StudyInstanceUID}``
with ``multipart/related; type="application/dicom"`` bodies, beside or instead of the DIMSE port.

Every instance goes through the listener's one store path
(:meth:`~airflow_provider_kaapana.core.listener.server.DicomListener.store_instance`): the same checks,
the same fsync before the response, the same series batches and trigger as C-STORE. The response is
the PS3.18 Store Instances Response (``application/dicom+json``): 200 when every instance was stored,
202 when some failed or were stored with a warning, 409 when none was stored; failed instances are
listed with their reason (Failed SOP Sequence), stored ones in the Referenced SOP Sequence.

Clients authenticate with a bearer token from an allow-list (``Authorization: Bearer <token>``) when
one is configured; TLS with the listener's certificate. The TLS handshake runs in the request's own
thread with a timeout, so an idle connection cannot block the others.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import ssl
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from airflow_provider_kaapana.core.dicom.elements import TAG_TRANSFER_SYNTAX_UID, read_file_meta
from airflow_provider_kaapana.exceptions import InvalidDicomError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.listener.server import DicomListener

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1 << 30
# PS3.18 Table 10.5.3-1 failure reasons (and PS3.4 C-STORE statuses, which they reuse)
FAILURE_PROCESSING = 0x0110
FAILURE_UID_MISMATCH = 0xA900  # the instance's study is not the one in the URL
_PATH = re.compile(r"^(?:/[^?]*)?/studies(?:/(?P<study>[0-9.]{1,64}))?/?(?:\?.*)?$")
_SOP_CLASS, _SOP_INSTANCE, _STUDY = 0x00020002, 0x00020003, 0x0020000D
_STATUS_SUCCESS, _WARNINGS = 0x0000, range(0xB000, 0xC000)


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], memoryview]]:
    """The parts of a ``multipart/related`` body as ``(headers, content)``; ValueError if malformed.

    Written here (RFC 2046 framing: ``--boundary`` lines, headers, blank line, content) because the
    standard library's ``email`` parser works on text and copies every part; contents stay views into
    ``body``.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise ValueError("multipart/related without a boundary")
    delimiter = b"--" + match.group(1).strip().encode("latin-1")
    view = memoryview(body)
    parts: list[tuple[dict[str, str], memoryview]] = []
    start = body.find(delimiter)
    if start < 0:
        raise ValueError("the body holds no multipart delimiter")
    while True:
        line_end = body.find(b"\r\n", start)
        if line_end < 0 or body[start + len(delimiter) : start + len(delimiter) + 2] == b"--":
            return parts  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0:
            raise ValueError("a part without a blank line after its headers")
        headers = {}
        for raw in body[line_end + 2 : head_end].split(b"\r\n"):
            if b":" in raw:
                name, value = raw.split(b":", 1)
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        next_delimiter = body.find(b"\r\n" + delimiter, head_end + 4)
        if next_delimiter < 0:
            raise ValueError("a part without a closing delimiter")
        parts.append((headers, view[head_end + 4 : next_delimiter]))
        start = next_delimiter + 2


def _sop_item(sop_class: str, sop_instance: str, **extra: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"},
    }
    for tag, value in extra.items():
        item[tag] = {"vr": "US", "Value": [value]}
    return item


class _StowHandler(BaseHTTPRequestHandler):
    server: StowServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("STOW-RS %s: " + format, self.client_address[0], *args)

    def _answer(self, status: int, body: dict[str, Any] | None = None, message: str = "") -> None:
        payload = json.dumps(body).encode() if body is not None else message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json" if body is not None else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _refuse(self, status: int, why: str) -> None:
        log.warning("refused STOW-RS request from %s: %s", self.client_address[0], why)
        self._answer(status, message=why)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        stow = self.server
        match = _PATH.match(self.path)
        if not match:
            return self._refuse(404, f"no such resource {self.path[:80]!r} (POST /studies[/{{uid}}])")
        if stow.tokens and not stow.authorised(self.headers.get("Authorization", "")):
            return self._refuse(401, "no valid bearer token")
        content_type = self.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/related"):
            return self._refuse(415, 'Content-Type must be multipart/related; type="application/dicom"')
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._refuse(411, "Content-Length required")
        if length > stow.max_request_bytes:
            return self._refuse(413, f"request of {length} bytes exceeds {stow.max_request_bytes}")
        body = self.rfile.read(length)
        if len(body) != length:
            return self._refuse(400, f"request body ended after {len(body)} of {length} bytes")
        try:
            parts = split_multipart(body, content_type)
        except ValueError as exc:
            return self._refuse(400, f"malformed multipart body: {exc}")
        if not parts:
            return self._refuse(400, "no instance in the request")
        stored, failed, warned = [], [], False
        for headers, content in parts:
            item, ok, warning = self._store_part(headers, content, match.group("study"))
            (stored if ok else failed).append(item)
            warned = warned or warning
        answer: dict[str, Any] = {}
        if stored:
            answer["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        status = 409 if not stored else 202 if failed or warned else 200
        log.info("STOW-RS from %s: %d stored, %d failed", self.client_address[0], len(stored), len(failed))
        self._answer(status, answer)

    def _store_part(
        self, headers: dict[str, str], content: memoryview, study: str | None
    ) -> tuple[dict[str, Any], bool, bool]:
        listener, sender = self.server.listener, f"STOW-RS {self.client_address[0]}"
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            log.error("refused a %s part from %s: only application/dicom is accepted", part_type, sender)
            return _sop_item("", "", **{"00081197": FAILURE_PROCESSING}), False, False
        data = bytes(content)
        try:
            if data[128:132] != b"DICM":
                raise InvalidDicomError("not a DICOM Part 10 file (no DICM prefix)")
            meta, offset = read_file_meta(data)
        except InvalidDicomError as exc:
            log.error("refused an instance from %s: %s", sender, exc)
            return _sop_item("", "", **{"00081197": FAILURE_PROCESSING}), False, False

        def text(tag: int) -> str:
            return meta.get(tag, b"").rstrip(b"\0 ").decode("ascii", "replace")

        sop_class, sop_instance = text(_SOP_CLASS), text(_SOP_INSTANCE)
        if study is not None:
            from airflow_provider_kaapana.core.dicom.raw import scan_dataset

            try:
                own = scan_dataset(memoryview(data)[offset:], text(TAG_TRANSFER_SYNTAX_UID))[
                    "study_instance_uid"
                ]
            except InvalidDicomError:
                own = None  # store_instance refuses it below, naming why
            if own is not None and own != study:
                log.error(
                    "refused instance %s from %s: its study %s is not %s of the URL",
                    sop_instance,
                    sender,
                    own,
                    study,
                )
                return _sop_item(sop_class, sop_instance, **{"00081197": FAILURE_UID_MISMATCH}), False, False
        outcome = listener.store_instance(
            memoryview(data)[offset:],
            text(TAG_TRANSFER_SYNTAX_UID),
            calling_ae=sender,
            called_ae=listener.ae_title,
            affected_sop_instance_uid=sop_instance,
            affected_sop_class_uid=sop_class,
        )
        if outcome.status == _STATUS_SUCCESS:
            return _sop_item(sop_class, sop_instance), True, False
        if outcome.status in _WARNINGS:
            return _sop_item(sop_class, sop_instance, **{"00081196": outcome.status}), True, True
        return _sop_item(sop_class, sop_instance, **{"00081197": outcome.status}), False, False


class StowServer(ThreadingHTTPServer):
    """The STOW-RS endpoint of one :class:`~.server.DicomListener` (started and stopped by it)."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        listener: DicomListener,
        host: str,
        port: int,
        *,
        tokens: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        request_timeout: float = 60.0,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.listener = listener
        self.tokens = [t.encode() for t in tokens if t]
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self.max_request_bytes = max_request_bytes
        super().__init__((host, port), _StowHandler)

    def authorised(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, allowed) for allowed in self.tokens)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the request's own thread: the TLS handshake (with a timeout), then the HTTP exchange."""
        request.settimeout(self.handshake_timeout if self.ssl_context else self.request_timeout)
        if self.ssl_context is not None:
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS handshake with %s:%s failed: %s", *client_address[:2], exc)
                return
            request.settimeout(self.request_timeout)
        try:
            super().finish_request(request, client_address)
        except TimeoutError:
            log.warning("STOW-RS connection from %s:%s timed out", *client_address[:2])

    def start(self) -> StowServer:
        threading.Thread(target=self.serve_forever, name="kaapana-stow", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return int(self.server_address[1])
