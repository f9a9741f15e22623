"""DICOMweb client (QIDO-RS, WADO-RS, STOW-RS) on a ``requests`` session.

WADO-RS responses are parsed as a stream of ``multipart/related`` parts and written straight to disk,
one part at a time, so a study never sits in memory. STOW-RS bodies are streamed from the files in
batches. Transient failures (connection errors, 408, 429, 5xx, a body stream breaking off) are retried
with the client's :class:`~airflow_provider_kaapana.core.net.retry.RetryPolicy`; then a
:class:`~airflow_provider_kaapana.exceptions.PacsError` names the server and the operation.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from pydicom.filereader import read_file_meta_info

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.files import fsync_dir
from airflow_provider_kaapana.core.net.dimse import RetrieveResult, StoreResult
from airflow_provider_kaapana.core.net.retry import (
    RetryPolicy,
    TransientError,
    is_transient,
    redact,
    split_url_credentials,
)
from airflow_provider_kaapana.exceptions import InvalidDicomError, PacsError

log = logging.getLogger(__name__)

_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
_CHUNK = 1 << 20
# Orthanc does not percent-decode query values (REFERENCE §5): keep DICOM's own characters literal.
_QUERY_SAFE = "^*?,-._~:=/@"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class DicomWebClient:
    """QIDO/WADO/STOW against ``base_url`` (Orthanc ``http://H:8042/dicom-web``; dcm4chee
    ``http://H:8080/dcm4chee-arc/aets/DCM4CHEE/rs``).

    ``auth``: ``(user, password)`` for basic auth or a string for a bearer token. ``verify`` and
    ``cert`` are passed to requests (CA bundle path or bool; client certificate). ``retries``,
    ``backoff`` and ``max_backoff`` make the :attr:`retry` policy of every request.
    """

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | str | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        session: requests.Session | None = None,
        max_backoff: float = 60.0,
    ) -> None:
        # credentials written into the URL become basic auth; the URL kept (and shown) has none
        base_url, url_auth = split_url_credentials(base_url)
        if auth is None and url_auth is not None:
            auth = url_auth
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()
        self.session.verify = verify
        if cert:
            self.session.cert = cert
        self._secrets: tuple[str, ...] = (url_auth[1],) if url_auth else ()
        if isinstance(auth, tuple):
            self.session.auth = auth
            # a careless server may echo the Authorization header: its base64 form is a secret too
            basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self._secrets = (*self._secrets, auth[1], basic)
        elif isinstance(auth, str) and auth:
            self.session.headers["Authorization"] = f"Bearer {auth}"
            self._secrets = (*self._secrets, auth)

    def __repr__(self) -> str:  # never shows credentials
        return f"DicomWebClient({self.base_url!r})"

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every request (from ``retries``, ``backoff``, ``max_backoff``)."""
        return RetryPolicy(retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)

    def _request(self, operation: str, method: str, url: str, ok: Sequence[int] = (200,), **kwargs: Any):
        where = redact(f"{operation} at DICOMweb {self.base_url}")  # no user:password@ of a URL
        body_factory = kwargs.pop("body_factory", None)

        def attempt() -> requests.Response:
            if body_factory is not None:
                kwargs["data"] = body_factory()
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code in ok:
                return response
            problem = f"HTTP {response.status_code}: {response.text[:300]!r}"
            response.close()
            if response.status_code not in _TRANSIENT_HTTP:
                raise PacsError(f"{where} failed: {redact(problem, self._secrets)}")
            raise TransientError(problem)

        policy = self.retry
        try:
            return policy.call(attempt, is_transient, operation=where, secrets=self._secrets, logger=log)
        except TransientError as exc:
            raise PacsError(
                f"{where} failed after {policy.attempts} attempts: {redact(str(exc), self._secrets)}"
            ) from None

    # --- QIDO-RS ---------------------------------------------------------------------------------

    def qido(
        self,
        level: str = "studies",
        query: Mapping[str, Any] | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        includefield: Iterable[str] = (),
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[dict[str, Any]]:
        """QIDO-RS search: ``level`` is ``studies``, ``series`` or ``instances``; returns DICOM JSON objects.

        ``query`` keys are keywords or tags (``{"PatientID": "P1", "StudyDate": "20260101-"}``).
        """
        level = {"study": "studies", "instance": "instances"}.get(level, level)
        if level not in ("studies", "series", "instances"):
            raise ValueError(f"QIDO level {level!r} is not studies, series or instances")
        path = ""
        if study_instance_uid:
            path += f"/studies/{validate_uid(study_instance_uid, 'StudyInstanceUID')}"
        if series_instance_uid:
            path += f"/series/{validate_uid(series_instance_uid, 'SeriesInstanceUID')}"
        params: list[tuple[str, str]] = [(k, str(v)) for k, v in (query or {}).items()]
        params += [("includefield", f) for f in includefield]
        if limit is not None:
            params.append(("limit", str(limit)))
        if offset is not None:
            params.append(("offset", str(offset)))
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe=_QUERY_SAFE)}" for k, v in params)
        url = f"{self.base_url}{path}/{level}" + (f"?{qs}" if qs else "")
        response = self._request(
            f"QIDO-RS {level}", "GET", url, ok=(200, 204), headers={"Accept": "application/dicom+json"}
        )
        if response.status_code == 204 or not response.content.strip():
            return []
        return list(response.json())

    # --- WADO-RS ---------------------------------------------------------------------------------

    def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, dest_dir: str | Path
    ) -> RetrieveResult:
        """WADO-RS a series into ``dest_dir/<SOPInstanceUID>.dcm``, streamed part by part."""
        study = validate_uid(study_instance_uid, "StudyInstanceUID")
        series = validate_uid(series_instance_uid, "SeriesInstanceUID")
        return self._retrieve(f"/studies/{study}/series/{series}", dest_dir, f"WADO-RS series {series}")

    def retrieve_study(self, study_instance_uid: str, dest_dir: str | Path) -> RetrieveResult:
        """WADO-RS a whole study into ``dest_dir/<SOPInstanceUID>.dcm``, streamed part by part."""
        study = validate_uid(study_instance_uid, "StudyInstanceUID")
        return self._retrieve(f"/studies/{study}", dest_dir, f"WADO-RS study {study}")

    def _retrieve(self, path: str, dest_dir: str | Path, operation: str) -> RetrieveResult:
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        where = redact(f"{operation} at DICOMweb {self.base_url}")  # no user:password@ of a URL

        def attempt() -> list[Path]:
            response = self._request(
                operation, "GET", self.base_url + path, headers={"Accept": ACCEPT_DICOM}, stream=True
            )
            try:
                return write_multipart(
                    response.headers.get("Content-Type", ""), response.iter_content(_CHUNK), dest
                )
            except InvalidDicomError as exc:
                raise PacsError(f"{where}: {exc}") from exc
            finally:
                response.close()

        try:  # a body stream that breaks off is started again
            files = self.retry.call(
                attempt,
                lambda exc: isinstance(exc, requests.RequestException),
                operation=where,
                describe=lambda exc: f"body broke off: {type(exc).__name__}: {exc}",
                secrets=self._secrets,
                logger=log,
            )
        except requests.RequestException as exc:
            raise PacsError(f"{where} failed: {redact(str(exc), self._secrets)}") from exc
        if not files:
            raise PacsError(f"{operation} at DICOMweb {self.base_url} returned no instances")
        return RetrieveResult(files=sorted(files), completed=len(files))

    # --- STOW-RS ---------------------------------------------------------------------------------

    def stow(
        self,
        paths: Iterable[str | Path],
        study_instance_uid: str | None = None,
        batch_size: int = 50,
        batch_bytes: int = 256 << 20,
        raise_on_failure: bool = True,
    ) -> list[StoreResult]:
        """STOW-RS ``paths`` in batches (at most ``batch_size`` files / ``batch_bytes`` each).

        Every instance is checked against the response's ReferencedSOPSequence / FailedSOPSequence.
        """
        files = [Path(p) for p in paths]
        sop_uids = {}
        for f in files:
            try:
                sop_uids[f] = str(read_file_meta_info(f).MediaStorageSOPInstanceUID)
            except Exception as exc:  # noqa: BLE001 - report the file by name
                raise InvalidDicomError(f"{f}: not a DICOM file with file meta information ({exc})") from exc
        url = self.base_url + "/studies"
        if study_instance_uid:
            url += f"/{validate_uid(study_instance_uid, 'StudyInstanceUID')}"
        results: list[StoreResult] = []
        for batch in _batches(files, batch_size, batch_bytes):
            boundary = f"kaapana-{uuid.uuid4().hex}"
            response = self._request(
                f"STOW-RS of {len(batch)} instances",
                "POST",
                url,
                ok=(200, 202, 409),
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
                body_factory=lambda batch=batch, boundary=boundary: _MultipartBody(batch, boundary),
            )
            stored, failed = _stow_outcome(response)
            for f in batch:
                uid = sop_uids[f]
                if uid in stored:
                    results.append(StoreResult(f, uid, 0, True))
                else:
                    reason = failed.get(uid)
                    error = (
                        f"failure reason {reason}" if reason is not None else "not in the STOW-RS response"
                    )
                    results.append(StoreResult(f, uid, reason, False, error))
        bad = [r for r in results if not r.ok]
        if bad and raise_on_failure:
            shown = "; ".join(f"{r.path.name}: {r.error}" for r in bad[:5])
            raise PacsError(
                f"STOW-RS to DICOMweb {self.base_url}: {len(bad)} of {len(results)} failed ({shown})"
            )
        return results

    def verify_stored(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uids: Iterable[str]
    ) -> set[str]:
        """The SOP Instance UIDs of ``sop_instance_uids`` that QIDO does NOT find (empty: all there)."""
        found = {
            _json_value(item, "00080018")
            for item in self.qido(
                "instances", study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid
            )
        }
        return set(sop_instance_uids) - found


def _json_value(item: Mapping[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _stow_outcome(response: requests.Response) -> tuple[set[str], dict[str, int | None]]:
    if not response.content.strip():
        return set(), {}
    body = response.json()
    stored = {_json_value(i, "00081155") for i in body.get("00081199", {}).get("Value", []) or []}
    failed = {
        _json_value(i, "00081155"): _json_value(i, "00081197")
        for i in body.get("00081198", {}).get("Value", []) or []  # Orthanc sends the key empty
    }
    return stored, failed


def _batches(files: list[Path], batch_size: int, batch_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for f in files:
        fsize = f.stat().st_size
        if batch and (len(batch) >= batch_size or size + fsize > batch_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += fsize
    if batch:
        yield batch


class _MultipartBody:
    """A multipart/related body streamed from files, with a known length (so no chunked encoding)."""

    def __init__(self, files: Sequence[Path], boundary: str) -> None:
        self.files = files
        self.part_head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.sep = b"\r\n"
        self.length = sum(f.stat().st_size for f in files) + len(files) * len(self.part_head)
        self.length += (len(files) - 1) * len(self.sep) + len(self.tail)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        for i, f in enumerate(self.files):
            if i:
                yield self.sep
            yield self.part_head
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        yield self.tail


def _boundary(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not content_type.lower().startswith("multipart/related") or not match:
        raise InvalidDicomError(f"WADO-RS answer is not multipart/related with a boundary: {content_type!r}")
    return match.group(1).strip().encode()


def write_multipart(
    content_type: str,
    chunks: Iterable[bytes],
    dest_dir: Path,
    name_for: Callable[[Path], str] | None = None,
) -> list[Path]:
    """Split a ``multipart/related`` stream into files in ``dest_dir`` while it arrives.

    Each part is written to a hidden temporary file and renamed to ``<SOPInstanceUID>.dcm`` (read from
    its file meta) once complete. Memory stays at about one chunk plus the boundary, whatever the body.
    """
    delimiter = b"\r\n--" + _boundary(content_type)
    keep = len(delimiter) + 4
    buf = b"\r\n"  # the first delimiter has no leading CRLF: provide it
    files: list[Path] = []
    state = "preamble"  # -> headers -> body -> (headers | done)
    out = None
    tmp_path: Path | None = None

    def finish_part() -> None:
        nonlocal out, tmp_path
        assert out is not None and tmp_path is not None
        out.close()
        try:
            meta = read_file_meta_info(tmp_path)
            sop = validate_uid(str(meta.MediaStorageSOPInstanceUID), "SOPInstanceUID")
        except Exception as exc:
            tmp_path.unlink(missing_ok=True)
            raise InvalidDicomError(f"a WADO-RS part is not a DICOM file: {exc}") from exc
        target = dest_dir / (name_for(tmp_path) if name_for else f"{sop}.dcm")
        os.replace(tmp_path, target)
        files.append(target)
        out, tmp_path = None, None

    try:
        for chunk in chunks:
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(delimiter)
                    if i < 0:
                        buf = buf[-keep:]
                        break
                    buf = buf[i + len(delimiter) :]
                    state = "after_delim"
                if state == "after_delim":
                    if len(buf) < 2:
                        break
                    if buf.startswith(b"--"):
                        state = "done"
                        break
                    state = "headers"
                if state == "headers":
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(buf) > 65536:
                            raise InvalidDicomError("WADO-RS part headers larger than 64 KiB")
                        break
                    buf = buf[i + 4 :]
                    fd, name = tempfile.mkstemp(prefix=".wado.", suffix=".part", dir=dest_dir)
                    os.fchmod(fd, 0o644)
                    out = os.fdopen(fd, "wb")
                    tmp_path = Path(name)
                    state = "body"
                if state == "body":
                    assert out is not None
                    i = buf.find(delimiter)
                    if i < 0:
                        if len(buf) > keep:
                            out.write(buf[:-keep])
                            buf = buf[-keep:]
                        break
                    out.write(buf[:i])
                    buf = buf[i + len(delimiter) :]
                    finish_part()
                    state = "after_delim"
                    continue
                if state == "done":
                    break
            if state == "done":
                break
        if state != "done":
            raise InvalidDicomError("WADO-RS body ended before its closing boundary")
    finally:
        if out is not None:
            out.close()
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
    if files:
        fsync_dir(dest_dir)
    return files
