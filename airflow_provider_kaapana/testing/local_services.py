"""Local stand-ins for the production services: Orthanc (PACS), osmem-server (OpenSearch API), and for
the CeleryExecutor's Redis broker and PostgreSQL metadata DB.

Used by the test fixtures, the demo and the benchmarks. Each service runs as a child process on free
ports, is waited for until it answers, and is ended by its own pid.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
INSTALL_HINTS = {
    "Orthanc": "apt-get install orthanc orthanc-dicomweb (or run scripts/bootstrap.sh as root)",
    "osmem-server": "pip install osmem-server (part of the package's [test] extra)",
    "storescu": "apt-get install dcmtk",
    "storescp": "apt-get install dcmtk",
    "findscu": "apt-get install dcmtk",
    "dcm2niix": "apt-get install dcm2niix",
    "dciodvfy": "apt-get install dicom3tools",
    "docker-compose": "apt-get install docker-compose",
    "redis-server": "apt-get install redis-server (or run scripts/bootstrap.sh as root)",
    "initdb": "apt-get install postgresql (Debian's /usr/lib/postgresql/<version>/bin/initdb)",
}
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class ServiceError(RuntimeError):
    """A local service could not be started."""


def find_tool(name: str) -> str:
    """Full path of an executable, or :class:`ServiceError` saying how to install it."""
    path = shutil.which(name)
    if path is None:
        # console scripts of the running interpreter's venv are not always on PATH
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
        hint = INSTALL_HINTS.get(name, "install it")
        raise ServiceError(f"{name} not found on PATH: {hint}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, auth: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{proc.args[0]} exited with {proc.returncode} before answering {url}")
        try:
            if requests.get(url, timeout=1, auth=auth).status_code < 500:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.02)
    raise ServiceError(f"{url} did not answer within {timeout} s: {last}")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise ServiceError(f"port {port} did not open within {timeout} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _ready_or_stopped(stop: Callable[[], None], *checks: Callable[[], None]) -> None:
    """Run a started service's readiness checks; one that is not ready in time (or a Ctrl-C meanwhile)
    stops it, so no server is left running behind a failed start."""
    try:
        for check in checks:
            check()
    except BaseException:
        stop()
        raise


@dataclass
class Orthanc:
    """A running Orthanc with the DICOMweb plugin: DIMSE on ``dicom_port``, REST + DICOMweb on ``http_port``."""

    workdir: Path
    aet: str = "ORTHANC"
    username: str | None = None
    password: str | None = None
    modalities: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # name -> (AET, host, port)
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username and self.password else None

    def config(self) -> dict:
        return {
            "Name": "kaapana-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.auth),
            "RegisteredUsers": {self.username: self.password} if self.auth else {},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": True,
            "StorageCompression": False,
            "StableAge": 2,
            "SaveJobs": False,
            "HttpTimeout": 30,
            "DicomScpTimeout": 30,
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "StudiesMetadata": "Full",
            },
        }

    def start(self, timeout: float = 15.0) -> Orthanc:
        binary = find_tool("Orthanc")
        if not Path(ORTHANC_DICOMWEB_PLUGIN).exists():
            raise ServiceError(f"Orthanc DICOMweb plugin missing: {INSTALL_HINTS['Orthanc']}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        # Orthanc's DICOM side (dcmtk) keeps Nagle's algorithm on unless TCP_NODELAY=1 is set: each small
        # C-STORE then waited for a delayed ACK (see core/net/tcp.py). dcm4chee, which Orthanc stands in
        # for, turns it off (dcm4che's Connection.tcpNoDelay defaults to true).
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        _ready_or_stopped(
            self.stop,
            lambda: _wait_http(f"{self.url}/system", self.proc, timeout, self.auth),
            lambda: _wait_port(self.dicom_port, self.proc, timeout),
        )
        return self

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register a C-MOVE destination at run time (Orthanc only moves to known modalities)."""
        r = requests.put(f"{self.url}/modalities/{name}", json=[aet, host, port], auth=self.auth, timeout=10)
        r.raise_for_status()

    def clear(self) -> None:
        """Delete every patient, so a test starts from an empty PACS."""
        for pid in requests.get(f"{self.url}/patients", auth=self.auth, timeout=10).json():
            requests.delete(f"{self.url}/patients/{pid}", auth=self.auth, timeout=30)

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Orthanc:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Osmem:
    """A running osmem-server: an OpenSearch-compatible search server in one binary."""

    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Osmem:
        try:
            from osmem_server import resolve_binary

            binary = resolve_binary()
        except ImportError:
            binary = find_tool("osmem-server")
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [binary, "-addr", f"127.0.0.1:{self.port}", "-no-stdin-watch"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _ready_or_stopped(self.stop, lambda: _wait_http(self.url, self.proc, timeout))
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Osmem:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Redis:
    """A running ``redis-server`` on a free port without persistence: the CeleryExecutor's broker."""

    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> Redis:
        binary = find_tool("redis-server")
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            # --save '' and --appendonly no: nothing written to disk, nothing left behind
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _ready_or_stopped(self.stop, lambda: _wait_port(self.port, self.proc, timeout))
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Redis:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def postgres_bin_dir() -> Path:
    """The newest of Debian's ``/usr/lib/postgresql/<version>/bin`` (or the folder of ``initdb`` on PATH)."""
    dirs = sorted(
        (Path(d) for d in glob.glob(POSTGRES_BIN_GLOB) if (Path(d) / "initdb").exists()),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
    )
    if dirs:
        return dirs[-1]
    return Path(find_tool("initdb")).parent


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster (``initdb`` + ``postgres``) on a free port: the metadata DB.

    Data and socket live in a fresh temporary folder, removed at :meth:`stop`. As root the server runs
    as the ``postgres`` user (PostgreSQL refuses to run as root). Trust authentication, no fsync: for
    tests and benchmarks only. :attr:`admin_url` is what
    :func:`~airflow_provider_kaapana.testing.local_airflow.create_postgres_database` takes.
    """

    port: int = 0
    proc: subprocess.Popen | None = None
    folder: Path | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("PostgreSQL cannot run as root and there is no user 'postgres'") from None
        return "postgres"

    def start(self, timeout: float = 60.0) -> Postgres:
        bin_dir = postgres_bin_dir()
        user = self._user()
        self.port = self.port or free_port()
        # not under a test's tmp_path: that is root's 0700 folder, which the postgres user cannot enter
        self.folder = Path(tempfile.mkdtemp(prefix="kaapana-postgres-"))
        if user is not None:
            shutil.chown(self.folder, user)
        data = self.folder / "data"
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            user=user,
            cwd=self.folder,
            timeout=timeout,
        )
        if init.returncode != 0:
            self._remove_folder()
            raise ServiceError(f"initdb in {data} failed ({init.returncode}): {init.stderr[-2000:]}")
        log = open(self.folder / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
                # a test database: durability is not wanted, speed is
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            cwd=self.folder,
        )
        log.close()
        _ready_or_stopped(self.stop, lambda: self._wait_ready(time.monotonic() + timeout))
        return self

    def _wait_ready(self, deadline: float) -> None:
        import psycopg2  # lazily: only the PostgreSQL variant needs it

        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                psycopg2.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:  # not listening, or "starting up"
                last = exc
            time.sleep(0.1)
        raise ServiceError(f"postgres on port {self.port} not ready in time: {last}; {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        path = self.folder / "postgres.log" if self.folder else None
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnect the clients, no waiting for them), then remove the folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> Postgres:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
