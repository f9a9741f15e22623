"""The DICOM listener: a storage SCP writing a landing zone and announcing complete series.

Each instance is written as received (no decode/re-encode) with a file meta header, atomically, to
``LANDING/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``; only then is success answered.
A series is complete after ``quiet_seconds`` without a new instance. Its new instances are cut into a
numbered *batch* with a manifest under ``LANDING/.kaapana/batches/<SeriesInstanceUID>/``; the manifest
is written (state ``pending``) before the callback runs and marked ``triggered`` after it succeeded.
Instances arriving later form the next batch, so every instance belongs to exactly one batch. Pending
manifests are retried with backoff, also after a restart; files not in any manifest become a new batch.

Under a burst (many series complete at about the same time) batches are announced together: one DAG
run for up to ``max_series_per_run`` batches (of distinct series) or ``max_instances_per_run``
instances (:func:`run_conf`, :func:`run_id_of`). A cut batch waits ``run_linger_seconds`` for others
to join (not when nothing is arriving: no association open, no series waiting for its quiet period), and a
run that is not full goes at most every ``min_run_interval_seconds`` (Nagle-like: a lone series goes at
once or after the linger, a burst in few, full runs); the group is written into each
member's manifest before the callback runs, so a retry announces the same run.

Batches are per (StudyInstanceUID, SeriesInstanceUID): a modality that sends one series UID under two
studies gets one batch per study folder (numbered on in the series' one manifest folder), each listing
only files that are in its ``series_dir``. :meth:`DicomListener.store_instance` is the protocol-free
store path (checks, durable write, series bookkeeping) that the C-STORE handler calls.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from airflow_provider_kaapana.core.deid.deidentify import deidentify_part10
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
from airflow_provider_kaapana.core.deid.pseudonyms import check_key
from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.dicom.elements import DEFLATED_TRANSFER_SYNTAXES, read_file_meta
from airflow_provider_kaapana.core.dicom.raw import file_header, inflated_size, recover_partial_files
from airflow_provider_kaapana.core.dicom.uids import is_valid_uid, validate_uid
from airflow_provider_kaapana.core.files import fsync_dir, make_spare, write_atomic
from airflow_provider_kaapana.core.listener.stow import StowServer
from airflow_provider_kaapana.core.listener.transport import ConnectionLimits, GuardedAssociationServer
from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError, AirflowClient
from airflow_provider_kaapana.core.net.dimse import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    configure_pynetdicom,
    received_uids,
)
from airflow_provider_kaapana.core.net.retry import redact
from airflow_provider_kaapana.exceptions import DeidentificationError, InvalidDicomError, InvalidUIDError

log = logging.getLogger(__name__)

STATE_DIR = ".kaapana"
DEFAULT_DAG_ID = "kaapana_ingest"
LISTENER_POLL_SECONDS = 0.0001
FAST_POLL_ASSOCIATIONS = 4
DEFAULT_MAX_INFLATED_BYTES = 256 << 20
CONFLICTS_DIR = "conflicts"
ANY_AE = "*"  # an intake route's wildcard AE title
# C-STORE statuses the listener answers besides those of core.net.dimse (PS3.4 B.2.3, PS3.7 C)
STATUS_DUPLICATE_KEPT_APART = 0xB000  # warning: stored, but not where the first copy is (see docs)


@dataclass
class StoreOutcome:
    """How :meth:`DicomListener.store_instance` handled one instance: a DICOM status (``0x0000``
    success, ``0xBxxx`` warning, else failure), a short comment for the sender (at most 64
    characters, DICOM ErrorComment) and where the instance is now (``None`` if refused)."""

    status: int
    comment: str = ""
    path: Path | None = None

    @property
    def stored(self) -> bool:
        return self.path is not None


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
    group_run_id: str = ""  # announced in one DAG run with other batches: that run's id
    run_batches: list[str] = field(default_factory=list)  # the manifests of all batches of that run

    @property
    def instance_count(self) -> int:
        return len(self.files)

    @property
    def run_id(self) -> str:
        """A DAG run id that is the same for every retry of this batch (so a retry can't run it twice)."""
        return f"kaapana_listen__{self.series_instance_uid}__b{self.batch:04d}__{int(self.created * 1000)}"

    def conf(self) -> dict[str, Any]:
        """The DAG run conf of this batch (alone in its run; see :func:`run_conf` for several)."""
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


def run_id_of(batches: list[SeriesBatch]) -> str:
    """The DAG run id announcing ``batches``: a lone batch's own :attr:`SeriesBatch.run_id`, else one
    derived from all of theirs (the same for every retry of this group, so it can't run twice)."""
    if len(batches) == 1:
        return batches[0].run_id
    if batches[0].group_run_id:
        return batches[0].group_run_id
    digest = hashlib.sha256("\n".join(b.run_id for b in batches).encode()).hexdigest()[:16]
    created = min(b.created for b in batches)
    return f"kaapana_listen__{len(batches)}series__{int(created * 1000)}__{digest}"


#: The keys of a listener-triggered run's conf (:meth:`SeriesBatch.conf`, and :func:`run_conf` for
#: several batches), kept here beside the two that build it: the ingest DAG accepts them beside its
#: form's parameters, so a key added there and not here would fail every listener-triggered ingest.
LISTENER_CONF_KEYS: tuple[str, ...] = (
    "study_instance_uid",
    "series_instance_uid",
    "series_dir",
    "batch_manifest",
    "batch",
    "files",
    "calling_ae",
    "called_ae",
    "instance_count",
    "received_at",
    "batches",
    "series_count",
)


def run_conf(batches: list[SeriesBatch]) -> dict[str, Any]:
    """The DAG run conf announcing ``batches``: a lone batch's :meth:`SeriesBatch.conf` (as always),
    several as ``{"batches": [conf, ...], "series_count", "instance_count"}``."""
    if len(batches) == 1:
        return batches[0].conf()
    return {
        "batches": [b.conf() for b in batches],
        "series_count": len(batches),
        "instance_count": sum(b.instance_count for b in batches),
    }


@dataclass
class _Series:
    study_instance_uid: str
    series_instance_uid: str
    series_dir: Path
    pending: dict[str, str] = field(default_factory=dict)  # sop uid -> file name, arrival order
    last_arrival: float = 0.0
    calling_ae: str = ""
    called_ae: str = ""


class _SpareFiles:
    """Empty files made ahead by a thread of their own, one per series directory being received, for
    :func:`~airflow_provider_kaapana.core.files.write_atomic`'s ``spare``: creating a file took ~0.4 ms
    of kernel CPU on the development VM's ext4, renaming one 20 us. The first instance of a series
    creates its temporary itself; each later one takes the spare made meanwhile."""

    def __init__(self) -> None:
        self._ready: dict[Path, str] = {}
        self._lock = threading.Lock()
        self._wanted: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._make, name="kaapana-listener-spares", daemon=True)
        self._thread.start()

    def take(self, directory: Path) -> str | None:
        """The spare of ``directory`` (``None`` if none is ready yet); the next one is made."""
        if self._thread is None:
            return None
        with self._lock:
            spare = self._ready.pop(directory, None)
        self._wanted.put(directory)
        return spare

    def discard(self, directory: Path) -> None:
        """Remove the spare of a directory no longer received into."""
        with self._lock:
            spare = self._ready.pop(directory, None)
        if spare is not None:
            _unlink_quietly(spare)

    def stop(self) -> None:
        if self._thread is not None:
            self._wanted.put(None)
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            spares, self._ready = list(self._ready.values()), {}
        for spare in spares:
            _unlink_quietly(spare)

    def _make(self) -> None:
        while (directory := self._wanted.get()) is not None:
            with self._lock:
                if directory in self._ready:
                    continue
            try:
                spare = make_spare(directory)
            except OSError:  # the directory is gone (or the disk full): the writer creates its own
                continue
            with self._lock:
                if directory in self._ready:  # pragma: no cover - only one maker thread
                    _unlink_quietly(spare)
                else:
                    self._ready[directory] = spare


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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

    def trigger_batches(self, batches: list[SeriesBatch]) -> dict[str, Any]:
        """One DAG run for several batches (:func:`run_conf`, :func:`run_id_of`)."""
        return self.trigger(run_conf(batches), run_id=run_id_of(batches))


@dataclass(frozen=True)
class IntakeRoute:
    """One intake profile: what a sender addresses to ``called_ae`` (``*``: any) from ``calling_ae``
    (``*``: any) is de-identified under ``profile``."""

    profile: DeidentificationProfile
    called_ae: str = ANY_AE
    calling_ae: str = ANY_AE

    def __post_init__(self) -> None:
        object.__setattr__(self, "called_ae", self.called_ae.strip() or ANY_AE)
        object.__setattr__(self, "calling_ae", self.calling_ae.strip() or ANY_AE)

    def matches(self, called_ae: str, calling_ae: str) -> bool:
        return self.called_ae in (ANY_AE, called_ae.strip()) and self.calling_ae in (
            ANY_AE,
            calling_ae.strip(),
        )

    def __str__(self) -> str:
        options = ",".join(sorted(o.value for o in self.profile.options)) or "basic profile"
        return f"{self.called_ae}:{self.calling_ae}={options}"

    @classmethod
    def parse(cls, text: str, **profile_kwargs: Any) -> IntakeRoute:
        """``CALLED_AE[:CALLING_AE]=OPTION[,OPTION...]`` (``*`` for any AE title; no option: the basic
        profile alone). ``profile_kwargs`` go to the profile (``safe_private``...). ValueError if bad."""
        aes, sep, options = text.partition("=")
        called, _, calling = aes.partition(":")
        if not sep or not called.strip():
            raise ValueError(
                f"intake route {text!r}: expected CALLED_AE[:CALLING_AE]=OPTION[,OPTION...] (* for any AE)"
            )
        for title in (called, calling):
            if len(title.strip()) > 16:
                raise ValueError(f"intake route {text!r}: AE title {title.strip()!r} is longer than 16")
        names = [n.strip() for n in options.split(",") if n.strip()]
        return cls(DeidentificationProfile.from_names(names, **profile_kwargs), called, calling or ANY_AE)


@dataclass(frozen=True)
class IntakeDeidentification:
    """De-identify on intake, by route: an instance whose association (called AE title, calling AE
    title) matches a route is de-identified under that route's profile with the site ``key``
    (:func:`~airflow_provider_kaapana.core.deid.deidentify.deidentify_part10`) before anything is
    written, so its original never reaches the landing zone; an instance the profile refuses (burned-in
    text) is answered with a failure status and not written at all. Routes are tried in order, the
    first match wins; an association that matches no route is stored as received (originals)."""

    key: bytes = field(repr=False)
    routes: tuple[IntakeRoute, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", check_key(self.key))
        object.__setattr__(self, "routes", tuple(self.routes))
        if not self.routes:
            raise ValueError("intake de-identification needs at least one route")

    @classmethod
    def for_called_aes(
        cls, profile: DeidentificationProfile, key: bytes, called_aes: Iterable[str] = ()
    ) -> IntakeDeidentification:
        """One profile for what is addressed to ``called_aes`` (none: every association)."""
        titles = [a.strip() for a in called_aes if a.strip()] or [ANY_AE]
        return cls(key, tuple(IntakeRoute(profile, called) for called in titles))

    def route(self, called_ae: str, calling_ae: str) -> IntakeRoute | None:
        """The first route the association matches; None: keep the originals."""
        for route in self.routes:
            if route.matches(called_ae, calling_ae):
                return route
        return None


class DicomListener:
    """A storage SCP writing ``landing_dir`` and calling ``on_series_complete(batch)`` per finished batch.

    ``allow_calling``: calling AE titles accepted (empty: all). Associations are refused (transient,
    local limit exceeded) while free space in ``landing_dir`` is below ``min_free_bytes``. Timeouts and
    connection limits: see :class:`~.transport.ConnectionLimits` (``max_associations`` and
    ``network_timeout`` here are the same fields). A deflated dataset that inflates past
    ``max_inflated_bytes`` is refused (``0xA700``) without being inflated in memory. With
    ``deidentification`` (:class:`IntakeDeidentification`) instances whose called/calling AE titles
    match one of its routes are de-identified under that route's profile before they are written.
    With ``stow_port`` the listener also takes DICOMweb STOW-RS (:mod:`~.stow`; ``stow_tokens``: the
    bearer tokens it accepts, none: no authentication) through the same store path.
    ``on_series_complete`` may return a dict that is stored in the manifest (e.g. the DAG run id); if it
    raises, the batch stays pending and is retried with backoff (``retry_seconds``, doubling, capped at
    ``max_retry_seconds``). Use :meth:`start` / :meth:`stop` or as a context manager, or
    :meth:`serve_forever`.

    ``on_batches_complete`` (instead of ``on_series_complete``) is called with several batches at
    once, to announce them in one DAG run (e.g. :meth:`AirflowTrigger.trigger_batches`): at most
    ``max_series_per_run`` batches (of distinct series) and ``max_instances_per_run`` instances (a
    larger batch goes alone). A full group goes at once. The others go once no batch was cut for
    ``run_linger_seconds`` (or the oldest waited ``min_run_interval_seconds``, or nothing is arriving: no
    association open and no series waiting for its quiet period, so none could join), but not sooner
    than ``min_run_interval_seconds`` after the last run: a lone series goes at once, while under a
    burst each run takes all that completed meanwhile.
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
        acse_timeout: float = 10.0,
        dimse_timeout: float = 10.0,
        tls_handshake_timeout: float = 10.0,
        max_connections: int = 100,
        max_connections_per_peer: int = 20,
        max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
        deidentification: IntakeDeidentification | None = None,
        stow_port: int | None = None,
        stow_tokens: Iterable[str] = (),
        on_batches_complete: Callable[[list[SeriesBatch]], dict[str, Any] | None] | None = None,
        max_series_per_run: int = 32,
        max_instances_per_run: int = 4096,
        run_linger_seconds: float = 1.0,
        min_run_interval_seconds: float = 10.0,
    ) -> None:
        if on_series_complete is not None and on_batches_complete is not None:
            raise ValueError("give on_series_complete or on_batches_complete, not both")
        if max_series_per_run < 1 or max_instances_per_run < 1:
            raise ValueError("max_series_per_run and max_instances_per_run must be at least 1")
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
        self.limits = ConnectionLimits(
            acse_timeout=acse_timeout,
            network_timeout=network_timeout,
            dimse_timeout=dimse_timeout,
            tls_handshake_timeout=tls_handshake_timeout,
            max_connections=max_connections,
            max_connections_per_peer=max_connections_per_peer,
            max_associations=max_associations,
        )
        self.max_inflated_bytes = max_inflated_bytes
        self.deidentification = deidentification
        self.stow_port = stow_port
        self.stow_tokens = list(stow_tokens)
        self.stow: StowServer | None = None
        self.on_batches_complete = on_batches_complete
        # one batch per run unless the callback takes several
        self.max_series_per_run = max_series_per_run if on_batches_complete is not None else 1
        self.max_instances_per_run = max_instances_per_run
        self.run_linger_seconds = run_linger_seconds
        self.min_run_interval_seconds = min_run_interval_seconds
        self._last_release = float("-inf")  # monotonic: when the last run was released
        # cut and saved batches waiting for others to join their run, with when each was cut (monotonic)
        self._waiting: list[tuple[SeriesBatch, float]] = []
        self.state_dir = self.landing_dir / STATE_DIR / "batches"
        self.received = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}  # (study uid, series uid) -> series
        self._last_batch: dict[str, int] = {}  # series uid -> last batch number handed out
        self._known_dirs: set[Path] = set()
        self._spares = _SpareFiles()
        self._path_locks: dict[Path, threading.Lock] = {}
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
        self._spares.start()
        configure_pynetdicom()
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        # the association limit and the allow-list are checked (and refusals logged) in
        # _handle_requested; pynetdicom's own limit would count connections that never asked
        ae.maximum_associations = self.limits.max_connections + 1
        ae.network_timeout = self.limits.network_timeout
        ae.acse_timeout = self.limits.acse_timeout
        ae.dimse_timeout = self.limits.dimse_timeout
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_ACCEPTED, self._handle_accepted),
        ]
        server = ae.make_server(
            (self.host, self.port),
            ssl_context=self.ssl_context,
            evt_handlers=handlers,
            server_class=GuardedAssociationServer,
            limits=self.limits,
            on_empty_store=self._refuse_empty_store,
        )
        ae._servers.append(server)
        threading.Thread(target=server.serve_forever, name="kaapana-listener-accept", daemon=True).start()
        self._server = server
        self.port = server.server_address[1]
        self._stop.clear()
        self._checker = threading.Thread(target=self._check_loop, name="kaapana-listener-quiet", daemon=True)
        self._checker.start()
        log.info(
            "listening as %s on %s:%d, landing zone %s", self.ae_title, self.host, self.port, self.landing_dir
        )
        if self.stow_port is not None:
            self.stow = StowServer(
                self,
                self.host,
                self.stow_port,
                tokens=self.stow_tokens,
                ssl_context=self.ssl_context,
                handshake_timeout=self.limits.tls_handshake_timeout,
                request_timeout=self.limits.network_timeout,
            ).start()
            self.stow_port = self.stow.port
            log.info(
                "STOW-RS on %s://%s:%d/studies%s",
                "https" if self.ssl_context else "http",
                self.host,
                self.stow_port,
                " (bearer tokens required)" if self.stow_tokens else "",
            )
        return self

    def stop(self, flush: bool = False) -> None:
        """Stop listening. With ``flush`` every pending series is cut and announced now."""
        if self.stow is not None:
            stow, self.stow = self.stow, None
            stow.shutdown()
            stow.server_close()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            for assoc in server.active_associations:  # and those still open, idle ones included
                assoc.abort()
        self._spares.stop()
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
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        peer = assoc.requestor.address_info
        where = f"{calling} ({peer.address}:{peer.port})"
        if self.allow_calling and calling not in self.allow_calling:
            log.warning("rejected association from %s: calling AE title not on the allow-list", where)
            return self._reject(assoc, 0x01, 0x01, 0x03)  # permanent, calling AE title not recognised
        with self._lock:
            active = sum(
                1
                for a in (self._server.active_associations if self._server else [])
                if getattr(a, "_kaapana_counted", False) and a.is_alive() and a is not assoc
            )
            if active >= self.limits.max_associations:
                log.warning(
                    "rejected association from %s: %d associations active (limit %d)",
                    where,
                    active,
                    self.limits.max_associations,
                )
                return self._reject(assoc, 0x02, 0x03, 0x02)  # transient, local limit exceeded
            assoc._kaapana_counted = True
            if active < FAST_POLL_ASSOCIATIONS:
                # pynetdicom's network reactor naps 1 ms whenever a read finds nothing yet; for a
                # modality streaming large instances that nap dominates, so a few associations poll
                # ten times as often (many at once would spend the CPU polling)
                assoc.dul._run_loop_delay = LISTENER_POLL_SECONDS
        self._free_checked = 0.0  # always look afresh when an association starts
        if not self._free_space_ok():
            log.error(
                "rejected association from %s: less than %d bytes free in %s",
                where,
                self.min_free_bytes,
                self.landing_dir,
            )
            return self._reject(assoc, 0x02, 0x03, 0x02)

    def _reject(self, assoc: Any, result: int, source: int, reason: int) -> None:
        self.refused += 1
        assoc.acse.send_reject(result, source, reason)
        assoc.is_rejected = True
        assoc.kill()

    def _handle_accepted(self, event: Any) -> None:
        reasons = {0x03: "SOP class not supported", 0x04: "transfer syntaxes not supported"}
        refused = [cx for cx in event.assoc.rejected_contexts if cx.abstract_syntax]
        if refused:
            log.warning(
                "association from %s: refused presentation contexts %s",
                event.assoc.requestor.ae_title,
                ", ".join(f"{cx.abstract_syntax} ({reasons.get(cx.result, 'rejected')})" for cx in refused),
            )

    def _refuse_empty_store(self, assoc: Any, request: C_STORE, context_id: int, reason: str) -> None:
        self.refused += 1
        log.error(
            "refused instance %s from %s: %s",
            request.AffectedSOPInstanceUID,
            assoc.requestor.ae_title,
            reason,
        )
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = request.MessageID
        rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        rsp.Status = STATUS_CANNOT_UNDERSTAND
        rsp.ErrorComment = reason
        assoc.dimse.send_msg(rsp, context_id)

    def _series_dir(self, study_instance_uid: str, series_instance_uid: str) -> Path:
        series_dir = self.landing_dir / study_instance_uid / series_instance_uid
        if series_dir not in self._known_dirs:
            series_dir.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(series_dir)
        return series_dir

    def _handle_store(self, event: Any) -> int | Dataset:
        request = event.request
        outcome = self.store_instance(
            request.DataSet.getbuffer(),
            str(event.context.transfer_syntax),
            calling_ae=event.assoc.requestor.ae_title,
            # the title the sender addressed (pynetdicom's acceptor.ae_title is always our own)
            called_ae=str(event.assoc.requestor.primitive.called_ae_title).strip(),
            affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
        )
        if not outcome.comment:
            return outcome.status
        rsp = Dataset()
        rsp.Status = outcome.status
        rsp.ErrorComment = outcome.comment[:64]
        return rsp

    def store_instance(
        self,
        data: bytes | memoryview,
        transfer_syntax: str,
        calling_ae: str,
        called_ae: str,
        affected_sop_instance_uid: str = "",
        affected_sop_class_uid: str = "",
    ) -> StoreOutcome:
        """Store one received encoded dataset (no file meta) in the landing zone and add it to its
        series' next batch; the store path of every intake protocol. Never raises: a refusal is an
        outcome with a failure status, logged here naming the sender and instance.

        Checks, in order: free space (``0xA700``), the inflated size of a deflated dataset
        (``0xA700``, nothing inflated in memory), structure and UIDs (``0xC000``). An instance whose
        SOP Instance UID is already in the landing zone is idempotent success when its dataset bytes
        are the same; otherwise the new copy is kept apart under ``.kaapana/conflicts/`` and answered
        with warning ``0xB000`` (the first copy is never overwritten).
        """
        what = affected_sop_instance_uid or "(no SOP Instance UID)"
        if not self._free_space_ok():
            log.error(
                "refused instance %s from %s: landing zone %s nearly full", what, calling_ae, self.landing_dir
            )
            return self._refusal(STATUS_OUT_OF_RESOURCES, "landing zone full")
        try:
            if transfer_syntax in DEFLATED_TRANSFER_SYNTAXES:
                if inflated_size(data, self.max_inflated_bytes) is None:
                    log.error(
                        "refused instance %s from %s: deflated dataset of %d bytes inflates past the "
                        "limit of %d bytes",
                        what,
                        calling_ae,
                        len(data),
                        self.max_inflated_bytes,
                    )
                    return self._refusal(
                        STATUS_OUT_OF_RESOURCES, f"inflated dataset exceeds {self.max_inflated_bytes} bytes"
                    )
            uids = received_uids(data, transfer_syntax, affected_sop_instance_uid, affected_sop_class_uid)
            chunks: tuple[bytes | memoryview, ...] = (
                file_header(uids["sop_class_uid"], uids["sop_instance_uid"], transfer_syntax, calling_ae),
                data,
            )
            deid = self.deidentification
            route = deid.route(called_ae, calling_ae) if deid is not None else None
            if route is not None and deid is not None:
                try:
                    clean = deidentify_part10(b"".join(chunks), route.profile, deid.key)
                except DeidentificationError as exc:
                    log.warning(
                        "refused instance %s from %s to %s: the intake de-identification profile of route "
                        "%s refuses it (%s); nothing was written",
                        what,
                        calling_ae,
                        called_ae,
                        route,
                        exc,
                    )
                    return self._refusal(STATUS_CANNOT_UNDERSTAND, "refused by intake de-identification")
                uids = {
                    "sop_class_uid": clean.sop_class_uid,
                    "sop_instance_uid": validate_uid(clean.sop_instance_uid, "de-identified SOPInstanceUID"),
                    "series_instance_uid": validate_uid(
                        clean.series_instance_uid, "de-identified SeriesInstanceUID"
                    ),
                    "study_instance_uid": validate_uid(
                        clean.study_instance_uid, "de-identified StudyInstanceUID"
                    ),
                }
                data = memoryview(clean.data)[read_file_meta(clean.data)[1] :]
                chunks = (clean.data,)
            series_dir = self._series_dir(uids["study_instance_uid"], uids["series_instance_uid"])
            path = series_dir / f"{uids['sop_instance_uid']}.dcm"
            with self._store_lock(path):
                if path.exists():
                    return self._store_duplicate(path, uids, data, chunks, calling_ae)
                # The file's data is fsynced before success is answered. Its directory entry is
                # made durable per batch (see check()): until then a crash leaves at worst the
                # complete hidden temporary, which start() promotes (recover_partial_files).
                spare = self._spares.take(series_dir)
                write_atomic(path, chunks, fsync=self.fsync, fsync_directory=False, spare=spare)
        except (InvalidDicomError, InvalidUIDError) as exc:
            log.error("refused instance %s from %s: %s", what, calling_ae, exc)
            return self._refusal(STATUS_CANNOT_UNDERSTAND, str(exc))
        except OSError as exc:
            log.error("cannot store instance %s from %s: %s", what, calling_ae, exc)
            return self._refusal(STATUS_OUT_OF_RESOURCES, "cannot write the instance")
        except Exception:  # noqa: BLE001 - never let one instance end the association
            log.exception("failed to store instance %s from %s", what, calling_ae)
            return self._refusal(STATUS_PROCESSING_FAILURE, "")
        self._add_to_batch(
            uids["study_instance_uid"], uids["series_instance_uid"], path, calling_ae, called_ae
        )
        return StoreOutcome(STATUS_SUCCESS, path=path)

    def _refusal(self, status: int, comment: str) -> StoreOutcome:
        with self._lock:
            self.refused += 1
        return StoreOutcome(status, comment)

    def _store_lock(self, path: Path) -> threading.Lock:
        # one lock per SOP Instance UID being written: two associations sending the same instance
        # at once must not both find "no file yet" and overwrite each other
        with self._lock:
            lock = self._path_locks.get(path)
            if lock is None:
                lock = self._path_locks[path] = threading.Lock()
                if len(self._path_locks) > 4096:  # forget idle ones; a dropped lock is only re-made
                    for key in [k for k, v in self._path_locks.items() if not v.locked() and k != path]:
                        del self._path_locks[key]
            return lock

    def _store_duplicate(
        self, path: Path, uids: dict[str, str], data: bytes | memoryview, chunks: tuple, calling_ae: str
    ) -> StoreOutcome:
        existing = path.read_bytes()
        _meta, offset = read_file_meta(existing)
        if existing[offset:] == bytes(data):
            log.info("instance %s from %s: already stored with the same content", path.stem, calling_ae)
            return StoreOutcome(STATUS_SUCCESS, path=path)
        digest = hashlib.sha256(data).hexdigest()[:16]
        conflict_dir = self.landing_dir / STATE_DIR / CONFLICTS_DIR / uids["series_instance_uid"]
        conflict_dir.mkdir(parents=True, exist_ok=True)
        kept = conflict_dir / f"{uids['sop_instance_uid']}.{digest}.dcm"
        if not kept.exists():
            write_atomic(kept, chunks, fsync=self.fsync)
        log.warning(
            "instance %s from %s differs from the copy already stored at %s: the first copy is kept, "
            "the new one is kept apart at %s",
            uids["sop_instance_uid"],
            calling_ae,
            path,
            kept,
        )
        return StoreOutcome(
            STATUS_DUPLICATE_KEPT_APART, "SOP Instance UID stored before with other content", kept
        )

    def _add_to_batch(
        self, study_instance_uid: str, series_instance_uid: str, path: Path, calling_ae: str, called_ae: str
    ) -> None:
        with self._lock:
            key = (study_instance_uid, series_instance_uid)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(study_instance_uid, series_instance_uid, path.parent)
            series.pending[path.stem] = path.name
            series.last_arrival = time.monotonic()
            series.calling_ae, series.called_ae = calling_ae, called_ae
            self.received += 1

    # --- batches ---------------------------------------------------------------------------------

    def _manifest_dir(self, series_instance_uid: str) -> Path:
        return self.state_dir / series_instance_uid

    def _next_batch_number(self, series_instance_uid: str) -> int:
        """The next batch number of a series (call under ``self._lock``): one sequence per series UID,
        shared by the parts of a series that arrived under several studies."""
        numbers = [
            int(p.stem) for p in self._manifest_dir(series_instance_uid).glob("*.json") if p.stem.isdigit()
        ]
        number = max([*numbers, self._last_batch.get(series_instance_uid, 0)]) + 1
        self._last_batch[series_instance_uid] = number
        return number

    def _recover(self) -> None:
        """Pending manifests -> retry now; files in no manifest -> pending, announced after a quiet period."""
        manifested: dict[tuple[str, str], set[str]] = {}
        for manifest in sorted(self.state_dir.glob("*/*.json")):
            try:
                batch = SeriesBatch.load(manifest)
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable batch manifest %s: %s", manifest, exc)
                continue
            key = (batch.study_instance_uid, batch.series_instance_uid)
            manifested.setdefault(key, set()).update(batch.files)
            if batch.state != "triggered":
                self._retry[str(manifest)] = (0.0, self.retry_seconds)
        now = time.monotonic()
        for study_dir in sorted(self.landing_dir.iterdir()):
            if not study_dir.is_dir() or not is_valid_uid(study_dir.name):
                continue
            for series_dir in sorted(study_dir.iterdir()):
                if not series_dir.is_dir() or not is_valid_uid(series_dir.name):
                    continue
                done = manifested.get((study_dir.name, series_dir.name), set())
                new = {
                    f.stem: f.name
                    for f in sorted(series_dir.glob("*.dcm"), key=lambda f: f.stat().st_mtime)
                    if f.name not in done
                }
                if not new:
                    continue
                series = _Series(study_dir.name, series_dir.name, series_dir, pending=new, last_arrival=now)
                self._series[(study_dir.name, series_dir.name)] = series
                self._known_dirs.add(series_dir)
                log.info(
                    "series %s (study %s): %d instances not yet announced",
                    series_dir.name,
                    study_dir.name,
                    len(new),
                )

    def pending_series(self) -> dict[str, int]:
        """SeriesInstanceUID -> number of received instances not yet in a batch."""
        with self._lock:
            pending: dict[str, int] = {}
            for (_study, uid), series in self._series.items():
                if series.pending:
                    pending[uid] = pending.get(uid, 0) + len(series.pending)
            return pending

    def check(self, force: bool = False) -> list[SeriesBatch]:
        """Cut batches of quiet series (all series with ``force``) and announce due batches; returns
        the batches announced successfully in this call. Called periodically by the listener."""
        now = time.monotonic()
        cut: list[SeriesBatch] = []
        with self._lock:
            # forget long-idle series whose batches are all cut (their manifests were saved by an
            # earlier call): a later instance recreates the entry, numbering on from the manifests
            idle = [
                key
                for key, series in self._series.items()
                if not series.pending and now - series.last_arrival > max(60.0, 3 * self.quiet_seconds)
            ]
            for key in idle:
                series_dir = self._series.pop(key).series_dir
                self._known_dirs.discard(series_dir)
                self._spares.discard(series_dir)
            for series in self._series.values():
                if series.pending and (force or now - series.last_arrival >= self.quiet_seconds):
                    batch = SeriesBatch(
                        study_instance_uid=series.study_instance_uid,
                        series_instance_uid=series.series_instance_uid,
                        series_dir=str(series.series_dir),
                        batch=self._next_batch_number(series.series_instance_uid),
                        files=list(series.pending.values()),
                        calling_ae=series.calling_ae,
                        called_ae=series.called_ae,
                        created=time.time(),
                    )
                    series.pending = {}
                    self._spares.discard(series.series_dir)  # quiet: no instance is on its way
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
                        (batch.study_instance_uid, batch.series_instance_uid),
                        _Series(batch.study_instance_uid, batch.series_instance_uid, Path(batch.series_dir)),
                    )
                    series.pending = {Path(f).stem: f for f in batch.files} | series.pending
                    series.last_arrival = now
                continue
            self._wait(batch, now)
        tried: set[str] = set()
        for manifest in list(self._retry):
            entry = self._retry.get(manifest)
            if entry is None or not (force or entry[0] <= now) or manifest in tried:
                continue  # not due, or announced (or tried) with its run's other batches just now
            try:
                batch = SeriesBatch.load(manifest)
            except (OSError, ValueError, TypeError) as exc:
                log.error("unreadable batch manifest %s: %s", manifest, exc)
                self._retry.pop(manifest, None)
                continue
            if not batch.run_batches:  # never announced in a run yet: may join one now
                self._retry.pop(manifest, None)
                self._wait(batch, now)
                continue
            members = []  # the very run announced before (same run id and conf)
            for path in batch.run_batches:
                tried.add(path)
                try:
                    members.append(SeriesBatch.load(path))
                except (OSError, ValueError, TypeError) as exc:
                    log.error("unreadable batch manifest %s: %s", path, exc)
                    self._retry.pop(path, None)
            if members and self._announce(members):
                announced.extend(members)
        for group in self._release(now, force):
            if self._announce(group):
                announced.extend(group)
        return announced

    def _wait(self, batch: SeriesBatch, now: float) -> None:
        """Hold a saved batch until its run is released (:meth:`_release`)."""
        self._waiting.append((batch, now))

    def _release(self, now: float, force: bool) -> list[list[SeriesBatch]]:
        """Group the waiting batches into runs and take those due: full ones at once; all with
        ``force``, or once none joined for ``run_linger_seconds`` (or the oldest waited
        ``min_run_interval_seconds``) and the last run went ``min_run_interval_seconds`` ago."""
        if not self._waiting:
            return []
        groups: list[list[tuple[SeriesBatch, float]]] = []
        for item in self._waiting:
            batch = item[0]
            for group in groups:
                instances = sum(b.instance_count for b, _t in group)
                if (
                    len(group) < self.max_series_per_run
                    and instances + batch.instance_count <= self.max_instances_per_run
                    and all(b.series_instance_uid != batch.series_instance_uid for b, _t in group)
                ):
                    group.append(item)
                    break
            else:
                groups.append([item])
        last_joined = max(t for _b, t in self._waiting)
        oldest = min(t for _b, t in self._waiting)
        interval = self.min_run_interval_seconds
        release_all = force or (
            now - self._last_release >= interval
            and (
                now - last_joined >= self.run_linger_seconds
                or now - oldest >= interval
                or not self._arriving()
            )
        )

        def full(group: list[tuple[SeriesBatch, float]]) -> bool:
            instances = sum(b.instance_count for b, _t in group)
            return len(group) >= self.max_series_per_run or instances >= self.max_instances_per_run

        due = [g for g in groups if release_all or full(g)]
        self._waiting = [item for g in groups if not (release_all or full(g)) for item in g]
        if due:
            self._last_release = now
        return [[b for b, _t in g] for g in due]

    def _arriving(self) -> bool:
        """Whether another batch may be cut soon: a series has instances waiting for its quiet period, or
        an association is open (a new series may start on it). If not, lingering can add nothing."""
        with self._lock:
            if any(series.pending for series in self._series.values()):
                return True
        server = self._server
        return server is not None and any(a.is_alive() for a in server.active_associations)

    def _announce(self, batches: list[SeriesBatch]) -> bool:
        """Announce ``batches`` in one DAG run; on failure they stay pending and are retried (the
        same run: the group is saved in each manifest first)."""
        what = (
            f"series {batches[0].series_instance_uid} batch {batches[0].batch}"
            if len(batches) == 1
            else f"{len(batches)} batches in run {run_id_of(batches)}"
        )
        try:
            if self.max_series_per_run > 1 and not batches[0].run_batches:
                # fixed before anyone is told: a retry (also after a restart) announces this very
                # run, never the batches regrouped (a lone batch too: it may have been created)
                group_run_id = run_id_of(batches) if len(batches) > 1 else ""
                manifests = [b.manifest for b in batches]
                for batch in batches:
                    batch.group_run_id, batch.run_batches = group_run_id, manifests
                    batch.save()
            if self.on_batches_complete is not None:
                result = self.on_batches_complete(batches)
            elif self.on_series_complete is not None:
                # one batch per run (a run saved with others while on_batches_complete was given
                # is announced batch by batch)
                results = [self.on_series_complete(batch) for batch in batches]
                result = results[0] if len(results) == 1 else {"runs": results}
            else:
                result = None
        except Exception as exc:  # noqa: BLE001 - keep the batches pending and retry later
            delay = self.retry_seconds
            for batch in batches:
                _due, delay = self._retry.get(batch.manifest, (0.0, self.retry_seconds))
                self._retry[batch.manifest] = (
                    time.monotonic() + delay,
                    min(delay * 2, self.max_retry_seconds),
                )
            log.error("announcing %s failed (%s); retrying in %.0f s", what, exc, delay)
            return False
        for batch in batches:
            batch.state = "triggered"
            batch.result = dict(result or {})
            batch.save()
            self._retry.pop(batch.manifest, None)
        log.info(
            "%s (%d instances from %s) announced",
            what,
            sum(b.instance_count for b in batches),
            ", ".join(sorted({b.calling_ae for b in batches})),
        )
        return True

    def _check_loop(self) -> None:
        interval = max(0.05, min(1.0, self.quiet_seconds / 4, self.run_linger_seconds / 2))
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
