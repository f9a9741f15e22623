"""The DICOM listener: a storage SCP writing a landing zone and announcing complete series.

Each instance is written as received (no decode/re-encode) with a file meta header, atomically, to
``LANDING/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; only then is success answered.
A series is complete after ``quiet_seconds`` without a new instance. Its new instances are cut into a
numbered *batch* with a manifest under ``LANDING/.kaapana/batches/<SeriesInstanceUID>/``; the manifest
is written (state ``pending``) before the callback runs and marked ``triggered`` after it succeeded.
Instances arriving later form the next batch, so every instance belongs to exactly one batch. Pending
manifests are retried with backoff, also after a restart; files not in any manifest become a new batch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.dicom.raw import recover_partial_files
from airflow_provider_kaapana.core.dicom.uids import is_valid_uid
from airflow_provider_kaapana.core.files import fsync_dir, write_atomic
from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError, AirflowClient
from airflow_provider_kaapana.core.net.dimse import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    configure_pynetdicom,
    write_received,
)
from airflow_provider_kaapana.core.net.retry import redact
from airflow_provider_kaapana.exceptions import InvalidDicomError, InvalidUIDError

log = logging.getLogger(__name__)

STATE_DIR = ".kaapana"
DEFAULT_DAG_ID = "kaapana_ingest"
LISTENER_POLL_SECONDS = 0.0001


@dataclass
class SeriesBatch:
    """A set of newly received instances of one series, announced together (one DAG run)."""

    study_instance_uid: str
    series_instance_uid: str
    series_dir: str
    batch: int
    files: list[str]  # file names inside series_dir
    calling_ae: str
    called_ae: str
    created: float
    manifest: str = ""
    state: str = "pending"  # pending -> triggered
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def instance_count(self) -> int:
        return len(self.files)

    @property
    def run_id(self) -> str:
        """A DAG run id that is the same for every retry of this batch (so a retry can't run it twice)."""
        return f"kaapana_listen__{self.series_instance_uid}__b{self.batch:04d}__{int(self.created * 1000)}"

    def conf(self) -> dict[str, Any]:
        """The DAG run conf of this batch."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "series_dir": self.series_dir,
            "batch_manifest": self.manifest,
            "batch": self.batch,
            "files": list(self.files),
            "calling_ae": self.calling_ae,
            "called_ae": self.called_ae,
            "instance_count": self.instance_count,
            "received_at": _dt.datetime.fromtimestamp(self.created, _dt.timezone.utc).isoformat(),
        }

    def save(self) -> None:
        write_atomic(self.manifest, [json.dumps(asdict(self), indent=1).encode()])

    @classmethod
    def load(cls, path: str | Path) -> SeriesBatch:
        data = json.loads(Path(path).read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class _Series:
    study_instance_uid: str
    series_instance_uid: str
    series_dir: Path
    pending: dict[str, str] = field(default_factory=dict)  # sop uid -> file name, arrival order
    last_arrival: float = 0.0
    calling_ae: str = ""
    called_ae: str = ""
    next_batch: int = 1


class AirflowTrigger:
    """Triggers a DAG run per batch through Airflow's REST API v2 (an
    :class:`~airflow_provider_kaapana.core.net.airflow_api.AirflowClient`).

    The token is given, or fetched from ``POST /auth/token`` with ``username``/``password`` (and
    fetched again once on a 401). Connection errors, 5xx and 429 are retried with the client's retry
    policy (``retries``, ``backoff``, ``max_backoff``); a 409 (run id exists: this batch was already
    triggered) counts as success.
    """

    def __init__(
        self,
        airflow_url: str,
        dag_id: str = DEFAULT_DAG_ID,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        retries: int = 3,
        backoff: float = 1.0,
        timeout: float = 30.0,
        verify: bool | str = True,
        max_backoff: float = 60.0,
        client: AirflowClient | None = None,
    ) -> None:
        self.client = client or AirflowClient(
            airflow_url,
            token=token,
            username=username,
            password=password,
            verify=verify,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
        )
        self.airflow_url = self.client.base_url
        self.dag_id = dag_id

    def __repr__(self) -> str:
        return f"AirflowTrigger({redact(self.airflow_url)!r}, dag_id={self.dag_id!r})"

    def trigger(self, conf: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """POST a DAG run; returns Airflow's answer (``{"dag_run_id": ...}``). Raises KaapanaError."""
        try:
            return self.client.trigger_dag_run(self.dag_id, conf, run_id=run_id)
        except AirflowApiError as exc:
            if exc.status == 409:
                return {"dag_run_id": run_id, "already_triggered": True}
            raise

    def __call__(self, batch: SeriesBatch) -> dict[str, Any]:
        return self.trigger(batch.conf(), run_id=batch.run_id)


class DicomListener:
    """A storage SCP writing ``landing_dir`` and calling ``on_series_complete(batch)`` per finished batch.

    ``allow_calling``: calling AE titles accepted (empty: all). Associations are refused (transient,
    local limit exceeded) while free space in ``landing_dir`` is below ``min_free_bytes``.
    ``on_series_complete`` may return a dict that is stored in the manifest (e.g. the DAG run id); if it
    raises, the batch stays pending and is retried with backoff (``retry_seconds``, doubling, capped at
    ``max_retry_seconds``). Use :meth:`start` / :meth:`stop` or as a context manager, or
    :meth:`serve_forever`.
    """

    def __init__(
        self,
        landing_dir: str | Path,
        port: int = 11112,
        ae_title: str = "KAAPANA",
        quiet_seconds: float = 20.0,
        allow_calling: Iterable[str] | None = None,
        min_free_bytes: int = 1 << 30,
        on_series_complete: Callable[[SeriesBatch], dict[str, Any] | None] | None = None,
        host: str = "0.0.0.0",
        max_pdu: int = 0,
        max_associations: int = 10,
        fsync: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        retry_seconds: float = 5.0,
        max_retry_seconds: float = 300.0,
        network_timeout: float = 60.0,
    ) -> None:
        self.landing_dir = Path(landing_dir)
        self.port = port
        self.host = host
        self.ae_title = ae_title
        self.quiet_seconds = quiet_seconds
        self.allow_calling = [a.strip() for a in allow_calling or [] if a.strip()]
        self.min_free_bytes = min_free_bytes
        self.on_series_complete = on_series_complete
        self.max_pdu = max_pdu
        self.max_associations = max_associations
        self.fsync = fsync
        self.ssl_context = ssl_context
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.network_timeout = network_timeout
        self.state_dir = self.landing_dir / STATE_DIR / "batches"
        self.received = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._known_dirs: set[Path] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # manifest -> (next attempt, delay)
        self._stop = threading.Event()
        self._server: Any = None
        self._checker: threading.Thread | None = None
        self._free_checked = 0.0
        self._disk_ok = True

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> DicomListener:
        """Recover state from the landing zone, then listen (non-blocking)."""
        self.landing_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        recovered, removed = recover_partial_files(self.landing_dir)
        if recovered or removed:
            log.warning(
                "interrupted writes: %d complete instances recovered, %d partial files removed",
                recovered,
                removed,
            )
        self._recover()
        configure_pynetdicom()
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.maximum_associations = self.max_associations
        ae.network_timeout = self.network_timeout
        ae.require_calling_aet = list(self.allow_calling)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_REQUESTED, self._handle_requested)]
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        self.port = self._server.server_address[1]
        self._stop.clear()
        self._checker = threading.Thread(target=self._check_loop, name="kaapana-listener-quiet", daemon=True)
        self._checker.start()
        log.info(
            "listening as %s on %s:%d, landing zone %s", self.ae_title, self.host, self.port, self.landing_dir
        )
        return self

    def stop(self, flush: bool = False) -> None:
        """Stop listening. With ``flush`` every pending series is cut and announced now."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        if self._checker is not None:
            self._checker.join(timeout=30)
            self._checker = None
        if flush:
            self.check(force=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (True) or ``timeout`` (False)."""
        return self._stop.wait(timeout)

    def serve_forever(self) -> None:
        """Start and block until interrupted (SIGINT/SIGTERM raising KeyboardInterrupt/SystemExit)."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def __enter__(self) -> DicomListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- receiving -------------------------------------------------------------------------------

    def _free_space_ok(self) -> bool:
        now = time.monotonic()
        if now - self._free_checked > 1.0:
            self._disk_ok = shutil.disk_usage(self.landing_dir).free >= self.min_free_bytes
            self._free_checked = now
        return self._disk_ok

    def _handle_requested(self, event: Any) -> None:
        # pynetdicom's network reactor naps 1 ms whenever a read finds nothing yet; for a modality
        # streaming large instances that nap dominates, so this association polls ten times as often.
        event.assoc.dul._run_loop_delay = LISTENER_POLL_SECONDS
        self._free_checked = 0.0  # always look afresh when an association starts
        if not self._free_space_ok():
            calling = event.assoc.requestor.ae_title
            log.error(
                "refusing association from %s: less than %d bytes free in %s",
                calling,
                self.min_free_bytes,
                self.landing_dir,
            )
            event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, local limit exceeded
            event.assoc.is_rejected = True
            event.assoc.kill()

    def _path_for(self, uids: dict[str, str]) -> Path:
        series_dir = self.landing_dir / uids["study_instance_uid"] / uids["series_instance_uid"]
        if series_dir not in self._known_dirs:
            series_dir.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(series_dir)
        return series_dir / f"{uids['sop_instance_uid']}.dcm"

    def _handle_store(self, event: Any) -> int:
        calling = event.assoc.requestor.ae_title
        called = event.assoc.acceptor.ae_title
        if not self._free_space_ok():
            log.error("refusing instance from %s: landing zone %s nearly full", calling, self.landing_dir)
            self.refused += 1
            return STATUS_OUT_OF_RESOURCES
        try:
            # The file's data is fsynced before success is answered. Its directory entry is made
            # durable per batch (see check()): until then a crash leaves at worst the complete hidden
            # temporary, which start() promotes (recover_partial_files).
            received = write_received(event, self._path_for, fsync=self.fsync, fsync_directory=False)
        except (InvalidDicomError, InvalidUIDError) as exc:
            self.refused += 1
            log.error("refused instance %s from %s: %s", event.request.AffectedSOPInstanceUID, calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            self.refused += 1
            log.error("cannot store instance from %s: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - never let one instance end the association
            self.refused += 1
            log.exception("failed to store instance from %s", calling)
            return STATUS_PROCESSING_FAILURE
        with self._lock:
            series = self._series.get(received.series_instance_uid)
            if series is None:
                series = self._series[received.series_instance_uid] = _Series(
                    received.study_instance_uid, received.series_instance_uid, received.path.parent
                )
                series.next_batch = self._next_batch_number(received.series_instance_uid)
            series.pending[received.sop_instance_uid] = received.path.name
            series.last_arrival = time.monotonic()
            series.calling_ae, series.called_ae = calling, called
            self.received += 1
        return STATUS_SUCCESS

    # --- batches ---------------------------------------------------------------------------------

    def _manifest_dir(self, series_instance_uid: str) -> Path:
        return self.state_dir / series_instance_uid

    def _next_batch_number(self, series_instance_uid: str) -> int:
        numbers = [
            int(p.stem) for p in self._manifest_dir(series_instance_uid).glob("*.json") if p.stem.isdigit()
        ]
        return max(numbers, default=0) + 1

    def _recover(self) -> None:
        """Pending manifests -> retry now; files in no manifest -> pending, announced after a quiet period."""
        manifested: dict[str, set[str]] = {}
        for manifest in sorted(self.state_dir.glob("*/*.json")):
            try:
                batch = SeriesBatch.load(manifest)
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable batch manifest %s: %s", manifest, exc)
                continue
            manifested.setdefault(batch.series_instance_uid, set()).update(batch.files)
            if batch.state != "triggered":
                self._retry[str(manifest)] = (0.0, self.retry_seconds)
        now = time.monotonic()
        for study_dir in sorted(self.landing_dir.iterdir()):
            if not study_dir.is_dir() or not is_valid_uid(study_dir.name):
                continue
            for series_dir in sorted(study_dir.iterdir()):
                if not series_dir.is_dir() or not is_valid_uid(series_dir.name):
                    continue
                done = manifested.get(series_dir.name, set())
                new = {
                    f.stem: f.name
                    for f in sorted(series_dir.glob("*.dcm"), key=lambda f: f.stat().st_mtime)
                    if f.name not in done
                }
                if not new:
                    continue
                series = _Series(study_dir.name, series_dir.name, series_dir, pending=new, last_arrival=now)
                series.next_batch = self._next_batch_number(series_dir.name)
                self._series[series_dir.name] = series
                self._known_dirs.add(series_dir)
                log.info("series %s: %d instances not yet announced", series_dir.name, len(new))

    def pending_series(self) -> dict[str, int]:
        """SeriesInstanceUID -> number of received instances not yet in a batch."""
        with self._lock:
            return {uid: len(s.pending) for uid, s in self._series.items() if s.pending}

    def check(self, force: bool = False) -> list[SeriesBatch]:
        """Cut batches of quiet series (all series with ``force``) and announce due batches; returns
        the batches announced successfully in this call. Called periodically by the listener."""
        now = time.monotonic()
        cut: list[SeriesBatch] = []
        with self._lock:
            # forget long-idle series whose batches are all cut (their manifests were saved by an
            # earlier call): a later instance recreates the entry, numbering on from the manifests
            idle = [
                uid
                for uid, series in self._series.items()
                if not series.pending and now - series.last_arrival > max(60.0, 3 * self.quiet_seconds)
            ]
            for uid in idle:
                self._known_dirs.discard(self._series.pop(uid).series_dir)
            for series in self._series.values():
                if series.pending and (force or now - series.last_arrival >= self.quiet_seconds):
                    batch = SeriesBatch(
                        study_instance_uid=series.study_instance_uid,
                        series_instance_uid=series.series_instance_uid,
                        series_dir=str(series.series_dir),
                        batch=series.next_batch,
                        files=list(series.pending.values()),
                        calling_ae=series.calling_ae,
                        called_ae=series.called_ae,
                        created=time.time(),
                    )
                    series.next_batch += 1
                    series.pending = {}
                    cut.append(batch)
        announced: list[SeriesBatch] = []
        if self.fsync:
            for directory in {b.series_dir for b in cut}:
                fsync_dir(directory)
        for batch in cut:
            manifest_dir = self._manifest_dir(batch.series_instance_uid)
            manifest_dir.mkdir(parents=True, exist_ok=True)
            batch.manifest = str(manifest_dir / f"{batch.batch:06d}.json")
            try:
                batch.save()  # durable before anyone is told: a crash from here on re-announces it
            except OSError as exc:  # e.g. disk full: give the instances back, cut them again later
                log.error("cannot write batch manifest %s: %s", batch.manifest, exc)
                with self._lock:
                    series = self._series.setdefault(
                        batch.series_instance_uid,
                        _Series(
                            batch.study_instance_uid,
                            batch.series_instance_uid,
                            Path(batch.series_dir),
                            next_batch=batch.batch + 1,
                        ),
                    )
                    series.pending = {Path(f).stem: f for f in batch.files} | series.pending
                    series.last_arrival = now
                continue
            if self._announce(batch):
                announced.append(batch)
        for manifest, (due, _delay) in list(self._retry.items()):
            if force or due <= now:
                try:
                    batch = SeriesBatch.load(manifest)
                except (OSError, ValueError, TypeError) as exc:
                    log.error("unreadable batch manifest %s: %s", manifest, exc)
                    self._retry.pop(manifest, None)
                    continue
                if self._announce(batch):
                    announced.append(batch)
        return announced

    def _announce(self, batch: SeriesBatch) -> bool:
        try:
            result = self.on_series_complete(batch) if self.on_series_complete else None
        except Exception as exc:  # noqa: BLE001 - keep the batch pending and retry later
            _due, delay = self._retry.get(batch.manifest, (0.0, self.retry_seconds))
            self._retry[batch.manifest] = (time.monotonic() + delay, min(delay * 2, self.max_retry_seconds))
            log.error(
                "announcing series %s batch %d failed (%s); retrying in %.0f s",
                batch.series_instance_uid,
                batch.batch,
                exc,
                delay,
            )
            return False
        batch.state = "triggered"
        batch.result = dict(result or {})
        batch.save()
        self._retry.pop(batch.manifest, None)
        log.info(
            "series %s batch %d (%d instances from %s) announced",
            batch.series_instance_uid,
            batch.batch,
            batch.instance_count,
            batch.calling_ae,
        )
        return True

    def _check_loop(self) -> None:
        interval = max(0.05, min(1.0, self.quiet_seconds / 4))
        while not self._stop.wait(interval):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the loop must survive (disk full while saving, ...)
                log.exception("listener bookkeeping failed")


def read_batch_files(conf: dict[str, Any]) -> list[Path]:
    """The instance files a listener-triggered run must process, from its DAG run ``conf``.

    Uses the batch manifest when present (only that batch's instances), else ``files``, else the DICOM
    files of ``series_dir`` found by :func:`~airflow_provider_kaapana.core.dicom.discovery.dicom_files`
    (a run by hand: any file name, subfolders, DICOMDIR media).
    """
    series_dir = Path(conf["series_dir"])
    names: list[str] | None = None
    manifest = conf.get("batch_manifest")
    if manifest and Path(manifest).exists():
        names = SeriesBatch.load(manifest).files
    elif conf.get("files"):
        names = list(conf["files"])
    if names is None:
        return dicom_files(series_dir, only_dicom=True)
    for name in names:
        if os.sep in name or name.startswith("."):
            raise InvalidDicomError(f"batch file name {name!r} is not a plain file name")
    return [series_dir / name for name in names]
