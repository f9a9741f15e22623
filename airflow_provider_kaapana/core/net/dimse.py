"""DIMSE client operations against a PACS (pynetdicom): C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE.

Every operation opens its own association, retries transient failures (association refused or aborted,
network errors, out-of-resources statuses) with the peer's
:class:`~airflow_provider_kaapana.core.net.retry.RetryPolicy`, and finally raises
:class:`~airflow_provider_kaapana.exceptions.PacsError` naming the PACS (``AET@host:port``) and the
operation. Received instances are written exactly as they arrived, atomically.

pynetdicom's process-wide settings are applied by :func:`configure_pynetdicom` when an association or
a server is about to start, never on import (importing this module from a DAG file changes nothing).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from airflow_provider_kaapana.core.dicom.raw import file_header, scan_dataset
from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.files import write_atomic
from airflow_provider_kaapana.core.net.retry import RetryPolicy, TransientError, is_transient
from airflow_provider_kaapana.core.net.tcp import association_no_delay
from airflow_provider_kaapana.exceptions import InvalidDicomError, InvalidUIDError, PacsError

log = logging.getLogger(__name__)

_configure_lock = threading.Lock()
_configured = False


def configure_pynetdicom(log_events: bool | None = None) -> None:
    """Apply this package's pynetdicom settings; called wherever an AE, association or server starts.

    Idempotent: the first call sends files as they are on disk (``STORE_SEND_CHUNKED_DATASET``: no
    decode/re-encode; only affects ``send_c_store()`` given a path) and quiets the ``pynetdicom``
    logger to WARNING (it logs every PDU at INFO/DEBUG) unless a level was already set for it.
    ``log_events=False`` also turns off pynetdicom's per-message event logging
    (``LOG_HANDLER_LEVEL = "none"``), ``True`` turns it back on; ``None`` leaves it.
    """
    global _configured
    with _configure_lock:
        if not _configured:
            _config.STORE_SEND_CHUNKED_DATASET = True
            logger = logging.getLogger("pynetdicom")
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
            _configured = True
        if log_events is not None:
            _config.LOG_HANDLER_LEVEL = "standard" if log_events else "none"


STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
_PENDING = {0xFF00, 0xFF01}
_WARNINGS = {0xB000, 0xB006, 0xB007}

LEVELS = {"STUDY": "STUDY", "SERIES": "SERIES", "INSTANCE": "IMAGE", "IMAGE": "IMAGE"}
DEFAULT_RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "STUDY": (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}
# Storage classes a retrieve must be able to receive first; the rest of pynetdicom's list fills up to
# the 128 presentation contexts an association may carry.
_PREFERRED_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
)


#: The default of each DIMSE timeout (ACSE, DIMSE, network), in seconds.
DEFAULT_TIMEOUT = 30.0
#: The connection extras (and ``kaapana send`` options) that set them.
TIMEOUT_EXTRAS = ("acse_timeout", "dimse_timeout", "network_timeout")


@dataclass(frozen=True)
class DimsePeer:
    """A DICOM node to talk to: ``called_ae@host:port`` and how we present ourselves."""

    host: str
    port: int
    called_ae: str = "ANY-SCP"
    calling_ae: str = "KAAPANA"
    tls: ssl.SSLContext | None = None
    # seconds: ACSE (association request/release answered), DIMSE (a request answered), network (no
    # byte at all); a peer that accepts TCP and never answers is given up after one of them
    acse_timeout: float = DEFAULT_TIMEOUT
    dimse_timeout: float = DEFAULT_TIMEOUT
    network_timeout: float = DEFAULT_TIMEOUT
    max_pdu: int = 0  # our maximum receive PDU; 0 = unlimited (fewest fragments)
    retries: int = 3  # retries after the first attempt (see RetryPolicy)
    backoff: float = 1.0  # seconds before the first retry, doubled for each further one
    max_backoff: float = 60.0  # the longest single wait

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"

    def __post_init__(self) -> None:
        for name in TIMEOUT_EXTRAS:
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {getattr(self, name)!r}")

    def no_answer(self, what: str, elapsed: float, timeout: str) -> str:
        """Why nothing came back: names host:port and the timeout that expired (when one did)."""
        limit = getattr(self, timeout)
        network = self.network_timeout
        if elapsed >= min(limit, network) * 0.9:
            which = timeout if limit <= network else "network_timeout"
            label = {"acse_timeout": "ACSE", "dimse_timeout": "DIMSE", "network_timeout": "network"}[which]
            return (
                f"no answer from {self.host}:{self.port} to {what} within the {label} timeout "
                f"({getattr(self, which):g} s; set {which})"
            )
        return f"{what}: association aborted by {self.host}:{self.port} (no answer)"

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every operation with this peer."""
        return RetryPolicy(retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)

    @classmethod
    def parse(cls, spec: str, **kwargs: Any) -> DimsePeer:
        """``AET@HOST:PORT`` (as in ``kaapana send --dimse``) -> :class:`DimsePeer`."""
        try:
            aet, hostport = spec.split("@", 1)
            host, port = hostport.rsplit(":", 1)
            return cls(host=host.strip("[]"), port=int(port), called_ae=aet, **kwargs)
        except ValueError as exc:
            raise ValueError(f"{spec!r} is not AET@HOST:PORT") from exc


@dataclass
class StoreResult:
    """The outcome of one C-STORE (or one STOW-RS instance)."""

    path: Path
    sop_instance_uid: str
    status: int | None  # DIMSE status; None when no response came
    ok: bool
    error: str = ""


@dataclass
class RetrieveResult:
    """What a C-GET / C-MOVE / WADO-RS retrieve wrote, and the sub-operation counts."""

    files: list[Path] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    errors: list[str] = field(default_factory=list)


def _retrying(peer: DimsePeer, operation: str, attempt: Callable[[], Any]) -> Any:
    """Run ``attempt`` under the peer's retry policy; used-up retries become a :class:`PacsError`."""
    policy = peer.retry
    try:
        return policy.call(attempt, is_transient, operation=f"{operation} with PACS {peer}", logger=log)
    except TransientError as exc:
        raise PacsError(
            f"{operation} with PACS {peer} failed after {policy.attempts} attempts: {exc}"
        ) from None


def _ae(peer: DimsePeer) -> AE:
    configure_pynetdicom()
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = peer.acse_timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.network_timeout
    ae.maximum_pdu_size = peer.max_pdu
    return ae


def _associate(ae: AE, peer: DimsePeer, operation: str, **kwargs: Any):
    tls_args = (peer.tls, peer.host) if peer.tls is not None else None
    started = time.monotonic()
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.called_ae, tls_args=tls_args, **kwargs)
    except OSError as exc:
        raise TransientError(f"cannot connect to {peer.host}:{peer.port}: {exc}") from exc
    if not assoc.is_established:
        if assoc.is_rejected:
            raise TransientError(f"association rejected by {peer.host}:{peer.port}")
        if assoc.is_aborted:
            elapsed = time.monotonic() - started
            raise TransientError(peer.no_answer("the association request", elapsed, "acse_timeout"))
        raise TransientError(f"association with {peer.host}:{peer.port} not established")
    association_no_delay(assoc)  # each DIMSE message is several writes: see core/net/tcp.py
    return assoc


def _check_alive(assoc: Any, what: str) -> None:
    if not assoc.is_established:
        raise TransientError(f"association lost during {what}")


def echo(peer: DimsePeer) -> None:
    """C-ECHO; raises :class:`PacsError` unless the PACS answers with success."""

    def attempt() -> None:
        ae = _ae(peer)
        ae.add_requested_context(Verification)
        assoc = _associate(ae, peer, "C-ECHO")
        try:
            status = assoc.send_c_echo()
            _check_alive(assoc, "C-ECHO")
        finally:
            assoc.release()
        if not status or status.Status != STATUS_SUCCESS:
            raise TransientError(f"C-ECHO status {getattr(status, 'Status', None)!r}")

    _retrying(peer, "C-ECHO", attempt)


def _query_dataset(level: str, query: Mapping[str, Any] | None, return_keys: Iterable[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for key in return_keys:
        setattr(ds, key, "")
    for key, value in (query or {}).items():
        setattr(ds, key, value)
    return ds


def _level(level: str) -> str:
    try:
        return LEVELS[level.upper()]
    except KeyError:
        raise ValueError(f"query level {level!r} is not one of study, series, instance") from None


def find(
    peer: DimsePeer,
    level: str = "STUDY",
    query: Mapping[str, Any] | None = None,
    return_keys: Sequence[str] | None = None,
) -> list[Dataset]:
    """C-FIND (Study Root) at ``level`` (study/series/instance): the matching identifiers.

    ``query`` maps keywords to match values (``{"PatientID": "P1", "StudyDate": "20260101-"}``);
    ``return_keys`` defaults to the usual keys of the level.
    """
    qr_level = _level(level)
    identifier = _query_dataset(qr_level, query, return_keys or DEFAULT_RETURN_KEYS[qr_level])
    operation = f"C-FIND {qr_level}"

    def attempt() -> list[Dataset]:
        ae = _ae(peer)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = _associate(ae, peer, operation)
        matches: list[Dataset] = []
        try:
            for status, ident in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise TransientError("no response (association aborted or timed out)")
                if status.Status in _PENDING:
                    if ident is not None:
                        matches.append(ident)
                elif status.Status != STATUS_SUCCESS:
                    raise PacsError(f"{operation} with PACS {peer} failed: status 0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        return matches

    return _retrying(peer, operation, attempt)


def _storage_contexts(limit: int) -> list:
    """Storage presentation contexts, preferred classes first, each offering every transfer syntax."""
    seen: set[str] = set()
    contexts = []
    for uid in (*_PREFERRED_STORAGE, *(cx.abstract_syntax for cx in StoragePresentationContexts)):
        if uid in seen:
            continue
        seen.add(uid)
        contexts.append(build_context(uid, ALL_TRANSFER_SYNTAXES))
        if len(contexts) == limit:
            break
    return contexts


@dataclass
class ReceivedInstance:
    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    size: int


def received_uids(
    data: bytes | memoryview,
    transfer_syntax: str,
    affected_sop_instance_uid: str = "",
    affected_sop_class_uid: str = "",
) -> dict[str, str]:
    """Check a received encoded dataset and return its validated UIDs (see :func:`scan_dataset`).

    The SOP Instance/Class UIDs of the request fill in for ones missing in the dataset; a dataset
    SOPInstanceUID differing from the request's is refused. Raises :class:`InvalidDicomError` or
    :class:`InvalidUIDError`.
    """
    uids = scan_dataset(data, transfer_syntax)
    affected = affected_sop_instance_uid.strip()
    uids["sop_instance_uid"] = validate_uid(uids["sop_instance_uid"] or affected, "SOPInstanceUID")
    if affected and validate_uid(affected, "AffectedSOPInstanceUID") != uids["sop_instance_uid"]:
        raise InvalidDicomError(
            f"dataset SOPInstanceUID {uids['sop_instance_uid']} differs from the request's {affected}"
        )
    uids["study_instance_uid"] = validate_uid(uids["study_instance_uid"], "StudyInstanceUID")
    uids["series_instance_uid"] = validate_uid(uids["series_instance_uid"], "SeriesInstanceUID")
    uids["sop_class_uid"] = uids["sop_class_uid"] or affected_sop_class_uid
    return uids


def write_received(
    event: Any,
    path_for: Callable[[dict[str, str]], Path],
    fsync: bool = True,
    fsync_directory: bool = True,
) -> ReceivedInstance:
    """Write the dataset of a C-STORE ``event`` as received, with file meta, atomically.

    ``path_for`` gets the validated UIDs (``study_instance_uid``, ``series_instance_uid``,
    ``sop_instance_uid``, ``sop_class_uid``) and returns the target path. Raises
    :class:`InvalidDicomError` (non-DICOM/truncated data, SOP Instance UID differing from the command)
    or :class:`InvalidUIDError`.
    """
    request = event.request
    transfer_syntax = str(event.context.transfer_syntax)
    data = request.DataSet.getbuffer()
    uids = received_uids(
        data, transfer_syntax, str(request.AffectedSOPInstanceUID or ""), str(request.AffectedSOPClassUID)
    )
    sop_class = uids["sop_class_uid"]
    path = path_for(uids)
    header = file_header(sop_class, uids["sop_instance_uid"], transfer_syntax, event.assoc.requestor.ae_title)
    write_atomic(path, (header, data), fsync=fsync, fsync_directory=fsync_directory)
    return ReceivedInstance(
        path,
        uids["study_instance_uid"],
        uids["series_instance_uid"],
        uids["sop_instance_uid"],
        len(header) + len(data),
    )


def _flat_store_handler(dest_dir: Path, result: RetrieveResult, lock: threading.Lock):
    """A C-STORE handler writing ``dest_dir/<SOPInstanceUID>.dcm`` (for C-GET / C-MOVE into a folder)."""

    def handle(event: Any) -> int:
        try:
            received = write_received(
                event, lambda uids: dest_dir / f"{uids['sop_instance_uid']}.dcm", fsync=False
            )
        except (InvalidDicomError, InvalidUIDError) as exc:
            with lock:
                result.errors.append(str(exc))
            log.error("refused instance from %s: %s", event.assoc.requestor.ae_title, exc)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            with lock:
                result.errors.append(str(exc))
            log.error("cannot write received instance into %s: %s", dest_dir, exc)
            return STATUS_OUT_OF_RESOURCES
        with lock:
            result.files.append(received.path)
        return STATUS_SUCCESS

    return handle


def _retrieve_identifier(
    study_instance_uid: str, series_instance_uid: str | None, sop_instance_uids: Sequence[str] | None
) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = validate_uid(study_instance_uid, "StudyInstanceUID")
    ds.QueryRetrieveLevel = "STUDY"
    if series_instance_uid:
        ds.SeriesInstanceUID = validate_uid(series_instance_uid, "SeriesInstanceUID")
        ds.QueryRetrieveLevel = "SERIES"
    if sop_instance_uids:
        if not series_instance_uid:
            raise ValueError("an instance-level retrieve needs the SeriesInstanceUID")
        ds.SOPInstanceUID = [validate_uid(u, "SOPInstanceUID") for u in sop_instance_uids]
        ds.QueryRetrieveLevel = "IMAGE"
    return ds


def _what(identifier: Dataset) -> str:
    return f"{identifier.QueryRetrieveLevel.lower()} " + (
        identifier.get("SeriesInstanceUID") or identifier.StudyInstanceUID
    )


def _collect_substatus(responses: Iterable, result: RetrieveResult, operation: str, peer: DimsePeer) -> None:
    final = None
    for status, _ident in responses:
        if not status:
            raise TransientError("no response (association aborted or timed out)")
        if status.Status not in _PENDING:
            final = status
    if final is None:
        raise TransientError("no final response")
    result.completed = int(final.get("NumberOfCompletedSuboperations", len(result.files)) or 0)
    result.failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    result.warning = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    if final.Status in (0xA701, 0xA702, STATUS_OUT_OF_RESOURCES):
        raise TransientError(f"status 0x{final.Status:04X} (out of resources)")
    if final.Status not in (STATUS_SUCCESS, *_WARNINGS, 0xFE00):
        raise PacsError(
            f"{operation} with PACS {peer} failed: status 0x{final.Status:04X}, "
            f"{result.failed} failed sub-operations {result.errors[:3]}"
        )


def _finish_retrieve(result: RetrieveResult, operation: str, peer: DimsePeer) -> RetrieveResult:
    if result.failed or result.errors:
        raise PacsError(
            f"{operation} with PACS {peer}: {result.failed} sub-operations failed, "
            f"{len(result.errors)} instances refused: {result.errors[:3]}"
        )
    if not result.files:
        raise PacsError(f"{operation} with PACS {peer} returned no instances")
    result.files = sorted(set(result.files))
    return result


def get(
    peer: DimsePeer,
    dest_dir: str | Path,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] | None = None,
) -> RetrieveResult:
    """C-GET a study, a series or some instances into ``dest_dir/<SOPInstanceUID>.dcm``.

    Raises :class:`PacsError` when the PACS reports failed sub-operations or sends nothing.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    identifier = _retrieve_identifier(study_instance_uid, series_instance_uid, sop_instance_uids)
    operation = f"C-GET {_what(identifier)}"

    def attempt() -> RetrieveResult:
        result = RetrieveResult()
        lock = threading.Lock()
        ae = _ae(peer)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        contexts = _storage_contexts(127)
        roles = []
        for cx in contexts:
            ae.add_requested_context(cx.abstract_syntax, cx.transfer_syntax)
            roles.append(build_role(cx.abstract_syntax, scp_role=True))
        handlers = [(evt.EVT_C_STORE, _flat_store_handler(dest, result, lock))]
        assoc = _associate(ae, peer, operation, ext_neg=roles, evt_handlers=handlers)
        try:
            _collect_substatus(
                assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet),
                result,
                operation,
                peer,
            )
        finally:
            if assoc.is_established:
                assoc.release()
        return result

    return _finish_retrieve(_retrying(peer, operation, attempt), operation, peer)


def move(
    peer: DimsePeer,
    move_destination: str,
    study_instance_uid: str,
    series_instance_uid: str | None = None,
    sop_instance_uids: Sequence[str] | None = None,
    dest_dir: str | Path | None = None,
    listen_port: int | None = None,
    listen_host: str = "0.0.0.0",
) -> RetrieveResult:
    """C-MOVE a study/series/instances to the AE ``move_destination``.

    With ``dest_dir`` and ``listen_port`` a temporary storage SCP titled ``move_destination`` listens
    on ``listen_host:listen_port`` for the duration of the move and writes
    ``dest_dir/<SOPInstanceUID>.dcm`` (the PACS must know that AE title at that address). Without them
    the instances go to an already running node (e.g. ``kaapana listen``) and only counts come back.
    """
    identifier = _retrieve_identifier(study_instance_uid, series_instance_uid, sop_instance_uids)
    operation = f"C-MOVE {_what(identifier)} to {move_destination}"
    if (dest_dir is None) != (listen_port is None):
        raise ValueError("C-MOVE into a folder needs both dest_dir and listen_port")

    def attempt() -> RetrieveResult:
        result = RetrieveResult()
        server = None
        if dest_dir is not None:
            dest = Path(dest_dir)
            dest.mkdir(parents=True, exist_ok=True)
            configure_pynetdicom()
            scp = AE(ae_title=move_destination)
            scp.maximum_pdu_size = 0
            scp.network_timeout = peer.network_timeout
            for cx in _storage_contexts(10_000):
                scp.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
            handler = _flat_store_handler(dest, result, threading.Lock())
            try:
                server = scp.start_server(
                    (listen_host, int(listen_port)),  # type: ignore[arg-type]
                    block=False,
                    evt_handlers=[
                        (evt.EVT_C_STORE, handler),
                        (evt.EVT_CONN_OPEN, lambda event: association_no_delay(event.assoc)),
                    ],
                )
            except OSError as exc:
                raise PacsError(f"{operation}: cannot listen on port {listen_port}: {exc}") from exc
        try:
            ae = _ae(peer)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = _associate(ae, peer, operation)
            try:
                _collect_substatus(
                    assoc.send_c_move(
                        identifier, move_destination, StudyRootQueryRetrieveInformationModelMove
                    ),
                    result,
                    operation,
                    peer,
                )
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            if server is not None:
                server.shutdown()
        return result

    result = _retrying(peer, operation, attempt)
    if dest_dir is None:
        if result.failed:
            raise PacsError(f"{operation} with PACS {peer}: {result.failed} sub-operations failed")
        return result
    return _finish_retrieve(result, operation, peer)


def _file_contexts(paths: Sequence[Path]) -> list[tuple[Path, str, str, str]]:
    """(path, sop_class, sop_instance, transfer_syntax) from each file's meta header."""
    out = []
    for path in paths:
        try:
            meta = read_file_meta_info(path)
            out.append(
                (
                    path,
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID),
                )
            )
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
            raise InvalidDicomError(f"{path}: not a DICOM file with file meta information ({exc})") from exc
    return out


def _context_groups(files: list[tuple[Path, str, str, str]]) -> list[list[tuple[Path, str, str, str]]]:
    """Split files so that each association needs at most 128 (SOP class, transfer syntax) contexts."""
    groups: list[list[tuple[Path, str, str, str]]] = []
    pairs: list[set[tuple[str, str]]] = []
    for item in files:
        pair = (item[1], item[3])
        for group, used in zip(groups, pairs):
            if pair in used or len(used) < 128:
                group.append(item)
                used.add(pair)
                break
        else:
            groups.append([item])
            pairs.append({pair})
    return groups


def store(
    peer: DimsePeer,
    paths: Iterable[str | Path],
    raise_on_failure: bool = True,
    progress: Callable[[StoreResult], None] | None = None,
) -> list[StoreResult]:
    """C-STORE files (sent as they are on disk) over as few associations as possible.

    Each file's status is checked; files without a response or with an out-of-resources status are
    retried on a new association (the peer's retry policy). With ``raise_on_failure`` a
    :class:`PacsError` lists the files that did not succeed; otherwise the per-file results say so.
    """
    files = _file_contexts([Path(p) for p in paths])
    results: dict[Path, StoreResult] = {}
    for group in _context_groups(files):
        _store_with_retries(peer, list(group), results, progress)
    ordered = [results[f[0]] for f in files]
    failed = [r for r in ordered if not r.ok]
    if failed and raise_on_failure:
        shown = "; ".join(f"{r.path.name}: {r.error}" for r in failed[:5])
        raise PacsError(f"C-STORE to PACS {peer}: {len(failed)} of {len(ordered)} files failed ({shown})")
    return ordered


def _store_with_retries(
    peer: DimsePeer,
    todo: list[tuple[Path, str, str, str]],
    results: dict[Path, StoreResult],
    progress: Callable[[StoreResult], None] | None,
) -> None:
    """Send ``todo``, then again the files worth retrying, under the peer's retry policy."""

    def attempt() -> None:
        nonlocal todo
        todo = _store_group(peer, todo, results, progress)
        if todo:
            raise TransientError(f"{len(todo)} files to retry")

    try:
        peer.retry.call(attempt, is_transient, operation=f"C-STORE to PACS {peer}", logger=log)
    except TransientError:
        pass  # the per-file results name what did not succeed


def _store_group(
    peer: DimsePeer,
    todo: list[tuple[Path, str, str, str]],
    results: dict[Path, StoreResult],
    progress: Callable[[StoreResult], None] | None,
) -> list[tuple[Path, str, str, str]]:
    """Send ``todo`` over one association; return the files worth retrying."""
    ae = _ae(peer)
    for pair in sorted({(f[1], f[3]) for f in todo}):
        ae.add_requested_context(pair[0], [pair[1]])
    try:
        assoc = _associate(ae, peer, "C-STORE")
    except TransientError as exc:
        for path, _cls, sop, _ts in todo:
            results[path] = StoreResult(path, sop, None, False, f"C-STORE: {exc}")
        return todo
    retry: list[tuple[Path, str, str, str]] = []
    try:
        for index, item in enumerate(todo):
            path, _cls, sop, _ts = item
            if not assoc.is_established:
                for rest in todo[index:]:
                    results[rest[0]] = StoreResult(rest[0], rest[2], None, False, "association lost")
                retry.extend(todo[index:])
                break
            started = time.monotonic()
            try:
                status = assoc.send_c_store(path)
            except (ValueError, AttributeError) as exc:  # no accepted context / bad meta: permanent
                result = StoreResult(path, sop, None, False, str(exc))
            else:
                code = getattr(status, "Status", None) if status else None
                if code is None:
                    why = peer.no_answer("C-STORE", time.monotonic() - started, "dimse_timeout")
                    result = StoreResult(path, sop, None, False, why)
                    retry.append(item)
                elif code == STATUS_SUCCESS or code in _WARNINGS:
                    result = StoreResult(path, sop, code, True)
                else:
                    result = StoreResult(path, sop, code, False, f"status 0x{code:04X}")
                    if code >> 8 == 0xA7:
                        retry.append(item)
            results[path] = result
            if progress is not None:
                progress(result)
    finally:
        if assoc.is_established:
            assoc.release()
    return retry
