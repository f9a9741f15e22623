"""The site's egress audit log: one JSON line per payload that left, with the SHA-256 of its exact bytes
(and, for a record-level payload, the SHA-256 of every record in it)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from airflow_provider_kaapana.core.federation.guard import GuardResult
from airflow_provider_kaapana.core.federation.records import record_hashes
from airflow_provider_kaapana.exceptions import AuditLogError

try:  # POSIX: serialise concurrent writers (two egress tasks at once)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MAX_RECIPIENT_CHARS = 512


@dataclass(frozen=True)
class AuditRecord:
    """One egress: which job, when (UTC), to whom, the hash and size of the bytes, and the bytes.

    ``record_sha256``: for a record-level payload, the SHA-256 of each record's canonical JSON, in order.
    """

    job_id: str
    analysis: str
    analysis_version: str
    time: _dt.datetime
    recipient: str
    k: int
    sha256: str
    size: int
    payload: bytes
    record_sha256: tuple[str, ...] = ()


def _check_recipient(recipient: str) -> str:
    if not isinstance(recipient, str) or not recipient.strip() or len(recipient) > MAX_RECIPIENT_CHARS:
        raise ValueError(f"recipient must be a non-empty string of at most {MAX_RECIPIENT_CHARS} characters")
    if any(ch in recipient for ch in "\r\n\x00"):
        raise ValueError("recipient must be one line")
    if "://" in recipient and (urlsplit(recipient).username or urlsplit(recipient).password):
        # the log is kept for years and read by auditors: no credentials in it
        raise ValueError("recipient must not carry credentials (user:password@)")
    return recipient.strip()


@contextmanager
def _locked_append(path: Path) -> Iterator[int]:
    created = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
        os.fsync(fd)
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    if created:  # the new directory entry must survive a crash as well
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def record_egress(
    log_path: str | Path,
    result: GuardResult,
    *,
    recipient: str,
    now: _dt.datetime | None = None,
    sealed_sha256: str | None = None,
) -> bytes:
    """Append the guarded payload to the audit log and return the exact bytes to send.

    The line is written and fsync'ed before this returns, so nothing is sent that is not on record;
    what is hashed is what is returned. ``recipient`` names the coordinator (a URL without credentials).
    ``sealed_sha256``, when the payload is sent sealed, records the hash of the bytes that went out.
    """
    recipient = _check_recipient(recipient)
    payload = result.payload
    when = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    document = result.document
    line = {
        "job_id": document["job_id"],
        "analysis": document["analysis"],
        "analysis_version": document["analysis_version"],
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "recipient": recipient,
        "k": result.k,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "payload": payload.decode("ascii"),
    }
    records = result.record_sha256
    if records or "records" in document:
        line["record_sha256"] = records
    if sealed_sha256 is not None:
        line["sealed_sha256"] = str(sealed_sha256)
    data = (json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
    with _locked_append(Path(log_path)) as fd:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    return payload


def read_audit_log(log_path: str | Path) -> list[AuditRecord]:
    """Every record of the log, oldest first; :class:`AuditLogError` names a line that does not verify."""
    path = Path(log_path)
    if not path.exists():
        return []
    records: list[AuditRecord] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                payload = line["payload"].encode("ascii")
                record = AuditRecord(
                    job_id=line["job_id"],
                    analysis=line["analysis"],
                    analysis_version=line["analysis_version"],
                    time=_dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00")),
                    recipient=line["recipient"],
                    k=int(line["k"]),
                    sha256=line["sha256"],
                    size=int(line["bytes"]),
                    payload=payload,
                    record_sha256=tuple(str(h) for h in line.get("record_sha256") or ()),
                )
                try:
                    audited = json.loads(payload)
                except ValueError:  # not JSON: no records in it
                    audited = None
                holds_records = isinstance(audited, dict) and "records" in audited
                expected = record_hashes(audited) if holds_records else []
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError) as exc:
                raise AuditLogError(
                    f"{path}: line {number} is not an audit record ({type(exc).__name__})"
                ) from None
            if hashlib.sha256(payload).hexdigest() != record.sha256 or len(payload) != record.size:
                raise AuditLogError(f"{path}: line {number}: the payload does not match its recorded SHA-256")
            if holds_records and "record_sha256" not in line:
                raise AuditLogError(f"{path}: line {number}: the payload holds records but no record_sha256")
            if list(record.record_sha256) != expected:
                raise AuditLogError(
                    f"{path}: line {number}: the records do not match their recorded SHA-256s"
                )
            records.append(record)
    return records


__all__ = ["AuditRecord", "read_audit_log", "record_egress"]
