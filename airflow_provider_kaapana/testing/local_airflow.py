"""A real Airflow 3 on this machine: api-server, scheduler and dag-processor as child processes.

With ``executor="CeleryExecutor"`` also Celery workers (``airflow celery worker``, one per queue set) on
a Redis broker and a PostgreSQL metadata DB (see :class:`~airflow_provider_kaapana.testing.local_services.Redis`,
:class:`~airflow_provider_kaapana.testing.local_services.Postgres` and :func:`create_postgres_database`).
Each worker records its name as the ``hostname`` of the task instances it runs
(:mod:`airflow_provider_kaapana.testing.hostname`).

Used by the end-to-end tests, the demo and the benchmarks. Nothing here imports Airflow: the class
writes Airflow's configuration as environment variables, runs the ``airflow`` CLI and talks to the
api-server over REST API v2 with a JWT through
:class:`~airflow_provider_kaapana.core.net.airflow_api.AirflowClient`, the client the DICOM listener
uses too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError, AirflowClient
from airflow_provider_kaapana.core.net.retry import redact
from airflow_provider_kaapana.testing.hostname import HOSTNAME_CALLABLE, WORKER_NAME_ENV
from airflow_provider_kaapana.testing.local_services import ServiceError, free_port

LOCAL_DAG_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# REST calls to the local api-server: a short retry of connection errors and 5xx, no long waits
_CLIENT_RETRY = {"retries": 2, "backoff": 0.5, "max_backoff": 2.0}


class AirflowError(ServiceError):
    """The local Airflow could not be started, or a REST call or a DAG run did not go as asked."""


@contextlib.contextmanager
def _rest_errors(secrets: Iterable[str] = ()) -> Iterator[None]:
    """The REST client's errors as :class:`AirflowError` (``secrets`` hidden)."""
    try:
        yield
    except AirflowApiError as exc:
        raise AirflowError(redact(str(exc), secrets)) from exc


@dataclass
class LocalAirflow:
    """An Airflow 3 (api-server + scheduler + dag-processor) on free ports, ended by its own process groups.

    ``dags_folder`` is one folder or several; each becomes a ``LocalDagBundle`` (the first one is named
    ``dags-folder``, like Airflow's default bundle). ``db_url`` ``None`` means SQLite in ``home``; pass a
    ``postgresql+psycopg2://`` URL (see :func:`create_postgres_database`) for a LocalExecutor that runs
    tasks in parallel. ``users`` adds more simple-auth-manager users: name -> (role, password), role one
    of VIEWER, USER, OP, ADMIN. ``extra_env`` is added to every process (``AIRFLOW_CONN_*``, paths);
    ``AIRFLOW__*`` and ``AIRFLOW_CONN_*`` variables of the calling process are not inherited. Ports left
    at 0 (``api_port``, ``log_server_port``) are chosen free at :meth:`start`. ``dag_folders`` holds the
    resolved DAG folders, one bundle each.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    home: Path
    dags_folder: Path | Sequence[Path]
    db_url: str | None = None
    executor: str = "LocalExecutor"
    api_port: int = 0
    username: str = "admin"
    password: str = "admin"
    users: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    bundle_refresh_interval: int = 2
    min_file_process_interval: int = 30
    parallelism: int = 4
    log_server_port: int = 0
    # CeleryExecutor (executor="CeleryExecutor"): the broker, and one worker per entry:
    # worker name -> comma-separated queues (e.g. {"io": "default", "gpu": "gpu,default"})
    broker_url: str | None = None
    celery_workers: Mapping[str, str] = field(default_factory=dict)
    worker_concurrency: int = 2
    pools: Mapping[str, int] = field(default_factory=dict)  # created at start(): name -> slots
    # LocalExecutor: workers start from a forkserver that imported airflow_provider_kaapana.preload, so a
    # task process does not import the task runner, pydicom, highdicom, ... again (docs/guides/production.rst)
    preload: bool = True
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    # seconds measured: db_migrate, components_healthy (after the migration), total; stop (after stop())
    timings: dict[str, float] = field(default_factory=dict, init=False)
    _token: str | None = field(default=None, init=False, repr=False)
    _client: AirflowClient | None = field(default=None, init=False, repr=False)
    _jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(64), init=False, repr=False)

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        folders = [self.dags_folder] if isinstance(self.dags_folder, str | Path) else list(self.dags_folder)
        if not folders:
            raise ValueError("LocalAirflow needs at least one DAG folder")
        self.dag_folders = [Path(f).resolve() for f in folders]

    # --- configuration -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sql_alchemy_conn(self) -> str:
        return self.db_url or f"sqlite:///{self.home / 'airflow.db'}"

    def bundles(self) -> list[dict[str, Any]]:
        """The DAG bundle config list: one LocalDagBundle per DAG folder."""
        return [
            {
                "name": "dags-folder" if i == 0 else f"{folder.name}-{i}",
                "classpath": LOCAL_DAG_BUNDLE,
                "kwargs": {"path": str(folder)},
            }
            for i, folder in enumerate(self.dag_folders)
        ]

    def env(self) -> dict[str, str]:
        """The environment every Airflow process gets: inherited ``AIRFLOW__*``/``AIRFLOW_CONN_*`` are dropped."""
        # A test session configures its own in-process Airflow through AIRFLOW__* variables (unit test
        # mode, another DB, other bundles); none of that may leak into this instance.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        all_users = {self.username: ("admin", self.password), **self.users}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dag_folders[0]),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": self.executor,
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn,
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(self.bundles()),
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(self.bundle_refresh_interval),
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": str(self.min_file_process_interval),
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "1",
                # the api-server serves REST v2 (/api/v2), the UI, the token endpoint (/auth) and the
                # execution API (/execution) that task processes of Airflow 3 report to
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                # several Airflows on two cores: a task's first call to the api-server can take longer
                # than the 5 s default, and a timed-out start fails the task before it runs
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{name}:{role.lower()}" for name, (role, _) in all_users.items()
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / PASSWORDS_FILE),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                # the scheduler serves task logs on a fixed 8793 by default: two instances would collide
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
                "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
                    self.home / "logs" / "dag_processor"
                ),
            }
        )
        if self.preload and self.executor == "LocalExecutor":
            env.update(
                {
                    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
                    "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "airflow_provider_kaapana.preload",
                }
            )
        if self.executor == "CeleryExecutor":
            if not self.db_url or not self.broker_url:
                raise ValueError("the CeleryExecutor needs db_url (PostgreSQL) and broker_url (Redis)")
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{self.sql_alchemy_conn}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
                    # a task of a killed worker is sent again after this long (Redis visibility timeout)
                    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "60",
                    # both workers share this machine's FQDN: each records its own name instead, so a
                    # task instance's hostname says which worker ran (each try of) it
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
                }
            )
        env.update(self.extra_env)
        return env

    def _write_passwords(self) -> None:
        # The simple auth manager generates random passwords for users missing from this file;
        # pre-writing it makes the passwords known.
        all_users = {self.username: ("admin", self.password), **self.users}
        path = self.home / PASSWORDS_FILE
        path.write_text(json.dumps({name: pw for name, (_, pw) in all_users.items()}) + "\n")
        path.chmod(0o600)

    # --- processes -----------------------------------------------------------------------------

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def migrate(self, timeout: float = 300) -> None:
        """``airflow db migrate`` against :attr:`sql_alchemy_conn`."""
        started = time.monotonic()
        result = subprocess.run(
            self._airflow("db", "migrate"),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AirflowError(
                f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        self.timings["db_migrate"] = round(time.monotonic() - started, 1)

    def start(self, timeout: float = 180) -> LocalAirflow:
        """Migrate the DB, start the three components, wait until healthy and log in."""
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        for folder in self.dag_folders:
            folder.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        self.log_server_port = self.log_server_port or free_port()
        self._write_passwords()
        self.migrate()
        env = self.env()
        try:
            envs: dict[str, dict[str, str]] = {}
            commands = {
                "api-server": self._airflow(
                    "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)
                ),
                "scheduler": self._airflow("scheduler"),
                "dag-processor": self._airflow("dag-processor"),
            }
            if self.executor == "CeleryExecutor":
                for name, queues in self.celery_workers.items():
                    commands[f"worker-{name}"] = self._worker_command(name, queues)
                    envs[f"worker-{name}"] = self.worker_env(name, env)
            for name, command in commands.items():
                log = open(self.log_path(name), "ab")  # noqa: SIM115 - lives as long as the process
                # own session = own process group, so stop() ends the component and the workers it forked
                self.procs[name] = subprocess.Popen(
                    command,
                    env=envs.get(name, env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                log.close()
            components_started = time.monotonic()
            self._wait_healthy(started + timeout)
            self._warm_execution_api(started + timeout)
            self.timings["components_healthy"] = round(time.monotonic() - components_started, 1)
            self._client = self._new_client(username=self.username, password=self.password)
            with _rest_errors():
                self._token = self._client.fetch_token()
            for pool, slots in self.pools.items():
                self.set_pool(pool, slots)
            self.timings["total"] = round(time.monotonic() - started, 1)
        except BaseException:
            self.stop()
            raise
        return self

    def worker_env(self, name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """:meth:`env` (or ``env``) plus the worker's name, which it records as task instances' hostname."""
        return {**(self.env() if env is None else env), WORKER_NAME_ENV: name}

    def _worker_command(self, name: str, queues: str) -> list[str]:
        # each worker would serve its logs on the same port: the api-server reads them from the shared
        # log folder instead
        return self._airflow(
            "celery",
            "worker",
            "--queues",
            queues,
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(self.worker_concurrency),
            "--skip-serve-logs",
            "--pid",
            str(self.home / f"worker-{name}.pid"),
            "--without-mingle",
            "--without-gossip",
        )

    def kill_worker(self, name: str) -> None:
        """SIGKILL a Celery worker, as if its machine died: its process group and every task process.

        Airflow's supervisor puts each task process in a process group of its own, so the task
        processes are found as descendants of the worker first.
        """
        proc = self.procs.pop(f"worker-{name}")
        tasks = _descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _kill(tasks)
        proc.wait(timeout=10)

    def worker_tasks(self, name: str, dag_id: str) -> list[dict[str, Any]]:
        """Running task instances of ``dag_id`` (the REST API's JSON) whose task process is a descendant
        of worker ``name``."""
        proc = self.procs.get(f"worker-{name}")
        if proc is None:
            return []
        with _rest_errors():
            tis = self.client.request(
                "GET",
                f"dags/{quote(dag_id, safe='')}/dagRuns/~/taskInstances",
                params={"state": "running", "limit": 1000},
            ).json()
        children = {child.pid for child in _descendants(proc.pid)}
        return [ti for ti in tis.get("task_instances", []) if ti.get("pid") in children]

    def log_path(self, component: str) -> Path:
        return self.home / f"{component}.log"

    def log_tail(self, component: str, chars: int = 3000) -> str:
        path = self.log_path(component)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowError(
                    f"airflow {name} exited with {proc.returncode}; log {self.log_path(name)}:\n"
                    f"{self.log_tail(name)}"
                )

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (no auth needed)."""
        r = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5)
        r.raise_for_status()
        return r.json()

    def _wait_healthy(self, deadline: float) -> None:
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = self.health()
                if all(
                    last.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler")
                ):
                    if last.get("dag_processor", {}).get("status") == "healthy":
                        return
            except (requests.RequestException, ValueError) as exc:
                last = exc
            time.sleep(0.5)
        raise AirflowError(f"Airflow at {self.url} not healthy in time: {last}")

    def _warm_execution_api(self, deadline: float) -> None:
        """The api-server builds its execution API (the one task processes call) on its first request:
        4-8 s here that the first task after a start would otherwise wait for in its ``run`` call. A
        readiness probe on ``/execution/health`` does the same in production (docs/guides/production.rst)."""
        response = requests.get(f"{self.url}/execution/health", timeout=max(1.0, deadline - time.monotonic()))
        if response.status_code != 200:
            raise AirflowError(
                f"the execution API at {self.url}/execution/health answered {response.status_code}"
            )

    def stop(self) -> None:
        """End each component's process group (SIGTERM, then SIGKILL after 15 s)."""
        started = time.monotonic()
        # task processes of the executor run in process groups of their own: collected now, killed last
        orphans = [child for proc in self.procs.values() for child in _descendants(proc.pid)]
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                # the group may outlive its leader (forked task workers)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=5)
        _kill(orphans)
        if self.procs:
            self.timings["stop"] = round(time.monotonic() - started, 1)
        self.procs.clear()

    def __enter__(self) -> LocalAirflow:
        return self.start() if not self.procs else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- REST API v2 ---------------------------------------------------------------------------

    def _new_client(self, **credentials: Any) -> AirflowClient:
        return AirflowClient(self.url, timeout=30, **_CLIENT_RETRY, **credentials)

    def get_token(self, username: str, password: str) -> str:
        """A JWT from ``POST /auth/token`` (the simple auth manager's login endpoint)."""
        with _rest_errors():
            return self._new_client(username=username, password=password).fetch_token()

    @property
    def token(self) -> str:
        if self._token is None:
            raise AirflowError("LocalAirflow is not started")
        return self._token

    @property
    def client(self) -> AirflowClient:
        """The admin's REST client (logs in again by itself when its token expires)."""
        if self._client is None:
            raise AirflowError("LocalAirflow is not started")
        return self._client

    def _client_for(self, token: str | None) -> AirflowClient:
        return self.client if token is None else self._new_client(token=token)

    def api(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        """A REST call under ``/api/v2`` with the admin's (or the given) bearer token; raises on HTTP errors."""
        with _rest_errors():
            return self._client_for(token).request(method, path, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``, then unpause it; returns the DAG's JSON.

        Fails early, with the traceback, when the file that defines the DAG has an import error (a file
        named ``<dag_id>.py`` or one that mentions the ``dag_id``).
        """
        deadline = time.monotonic() + timeout
        last = ""
        polls = 0
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.client.get_dag(dag_id)
            except AirflowApiError as exc:
                if exc.status is None:  # no answer at all, even after the retries
                    raise AirflowError(str(exc)) from exc
                last = str(exc)
            else:
                with _rest_errors():
                    return self.client.set_dag_paused(dag_id, False)
            polls += 1
            if polls % 4 == 0 and (error := self._import_error_for(dag_id)) is not None:
                raise AirflowError(
                    f"DAG {dag_id!r}: import error in {error.get('filename')}:\n{error.get('stack_trace')}"
                )
            time.sleep(0.5)
        raise AirflowError(
            f"DAG {dag_id!r} not parsed within {timeout} s ({last}); import errors: {self.import_errors()}"
        )

    def import_errors(self) -> list[dict[str, Any]]:
        """The dag-processor's current import errors (``filename``, ``bundle_name``, ``stack_trace``)."""
        return self.api("GET", "importErrors", params={"limit": 1000}).json().get("import_errors", [])

    def _import_error_for(self, dag_id: str) -> dict[str, Any] | None:
        folders = {bundle["name"]: Path(bundle["kwargs"]["path"]) for bundle in self.bundles()}
        for error in self.import_errors():
            path = Path(error.get("filename") or "")
            if not path.is_absolute() and error.get("bundle_name") in folders:
                path = folders[error["bundle_name"]] / path
            if path.stem == dag_id:
                return error
            try:
                if dag_id in path.read_text(errors="replace"):
                    return error
            except OSError:
                continue
        return None

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """``POST /api/v2/dags/{dag_id}/dagRuns`` with ``conf``; returns the new run's ``dag_run_id``."""
        with _rest_errors():
            return self._client_for(token).trigger_dag_run(dag_id, conf, run_id=run_id)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        with _rest_errors():
            return self.client.get_dag_run(dag_id, run_id)["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Poll the run until it is ``success`` or ``failed``; returns that state (raises on timeout)."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            self._check_alive()
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            time.sleep(0.2)  # one cheap REST call: the end of a run is seen within 0.2 s (bench_e2e)
        raise AirflowError(
            f"run {run_id} of {dag_id} still {state} after {timeout} s; tasks: {self.task_states(dag_id, run_id)}"
        )

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task id (``task[map_index]`` for mapped tasks) -> the REST API's task instance of one run."""
        with _rest_errors():
            instances = self.client.list_task_instances(dag_id, run_id)
        return {
            (ti["task_id"] if ti.get("map_index", -1) < 0 else f"{ti['task_id']}[{ti['map_index']}]"): ti
            for ti in instances
        }

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """Task id (``task[map_index]`` for mapped tasks) -> state for one run."""
        return {key: ti["state"] for key, ti in self.task_instances(dag_id, run_id).items()}

    def task_durations(self, dag_id: str, run_id: str) -> dict[str, float]:
        """Task id (``task[map_index]`` for mapped tasks) -> run time in seconds, for finished tasks."""
        return {
            key: float(ti["duration"])
            for key, ti in self.task_instances(dag_id, run_id).items()
            if ti.get("duration") is not None
        }

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The log text of one task try (for assertion messages)."""
        r = self.api(
            "GET",
            f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{quote(task_id, safe='')}/logs/{try_number}",
            params={"map_index": map_index, "full_content": True},
            headers={"Accept": "application/json"},
        )
        content = r.json().get("content", [])
        if isinstance(content, str):
            return content
        # structured log lines: {"event": ..., "level": ..., "timestamp": ...} or plain strings
        return "\n".join(
            line if isinstance(line, str) else " ".join(str(v) for v in line.values()) for line in content
        )

    def set_pool(self, name: str, slots: int, description: str = "") -> None:
        """Create or resize an Airflow pool."""
        body = {"name": name, "slots": slots, "description": description or f"kaapana pool {name}"}
        with _rest_errors():
            try:
                self.client.request("POST", "pools", json=body, operation=f"creating pool {name}")
            except AirflowApiError as exc:
                if exc.status != 409:
                    raise
                self.client.request("PATCH", f"pools/{quote(name, safe='')}", json=body)

    def add_connection(self, conn_id: str, conn_type: str, **fields: Any) -> None:
        """Create or replace an Airflow connection (``host``, ``port``, ``login``, ``password``, ``extra``...)."""
        if isinstance(fields.get("extra"), dict):
            fields["extra"] = json.dumps(fields["extra"])
        body = {"connection_id": conn_id, "conn_type": conn_type, **fields}
        secrets = [str(fields["password"])] if fields.get("password") else []
        with _rest_errors(secrets):
            try:
                self.client.request(
                    "POST", "connections", json=body, operation=f"creating connection {conn_id}"
                )
            except AirflowApiError as exc:
                if exc.status != 409:
                    raise
                self.client.request("PATCH", f"connections/{quote(conn_id, safe='')}", json=body)


def create_postgres_database(
    admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres", name: str | None = None
) -> str:
    """Create a fresh database (``kaapana_e2e_<random>``) and return its SQLAlchemy URL for Airflow."""
    name = name or f"kaapana_e2e_{secrets.token_hex(4)}"
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    _admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    return f"postgresql+psycopg2://{parts.netloc}/{name}"


def drop_postgres_database(
    db_url: str, admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
) -> None:
    """Drop the database named in ``db_url`` (ends its leftover connections first)."""
    name = urlsplit(db_url).path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _descendants(pid: int) -> list[Any]:
    """Every process below ``pid`` as ``psutil.Process`` (psutil comes with Airflow)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill(processes: Iterable[Any]) -> None:
    """SIGKILL each ``psutil.Process`` still running (psutil checks it is still the same process)."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _admin_execute(admin_url: str, statement: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE cannot run inside one)."""
    import psycopg2  # lazily: only the PostgreSQL variant needs it

    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()
