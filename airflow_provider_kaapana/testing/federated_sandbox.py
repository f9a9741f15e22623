"""A federation on one machine: a coordinator Airflow and N site Airflows, each site with its own
search server holding its own synthetic cohort. Used by the end-to-end test, ``kaapana demo
--federated`` and ``benchmarks/bench_federated.py``.

Each Airflow is a real :class:`~airflow_provider_kaapana.testing.local_airflow.LocalAirflow`
(api-server, scheduler, dag-processor; LocalExecutor) on its own PostgreSQL database, cloned from one
migrated template (one ``airflow db migrate`` instead of N+1), or on SQLite when PostgreSQL is not
there. Secrets live only in ``AIRFLOW_CONN_*`` variables of the processes. A site whose spec says
``start=False`` has a user on the coordinator but no Airflow: it never answers.

This module starts processes and talks HTTP; it never imports Airflow itself.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import airflow_provider_kaapana
from airflow_provider_kaapana.core.federation.crypto import generate_keypair
from airflow_provider_kaapana.core.index.client import bulk_index, ensure_index_template, make_search_client
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.testing.federation import SyntheticSite, synthetic_site
from airflow_provider_kaapana.testing.local_airflow import (
    AirflowError,
    LocalAirflow,
    _admin_execute,
    create_postgres_database,
    drop_postgres_database,
)
from airflow_provider_kaapana.testing.local_services import Osmem, free_port

COORDINATOR_DAG = "kaapana_federated_cohort_statistics"
POLL_DAG = "kaapana_federation_poll"
SITE_DAG = "kaapana_federated_site_cohort_statistics"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_DAG_FILE = '''"""Written by the federated sandbox: {what} with sandbox settings."""

from airflow_provider_kaapana.dag_factories.federation import FederationSettings, {factory}

dag = {factory}({args}settings=FederationSettings(**{settings!r}))
'''


@dataclass
class SiteSpec:
    """One site of the sandbox: its cohort size and seed, its policy, whether its Airflow runs."""

    name: str
    n_patients: int = 40
    seed: int = 1
    allowed_analyses: Mapping[str, Any] = field(default_factory=lambda: {"cohort_statistics": ["1"]})
    require_approval: bool = False
    k_min: int = 10
    start: bool = True


@dataclass
class Site:
    """A running (or deliberately absent) site."""

    spec: SiteSpec
    password: str
    cohort: SyntheticSite | None = None
    airflow: LocalAirflow | None = None
    osmem: Osmem | None = None
    audit_log: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class _ClonedAirflow(LocalAirflow):
    """A LocalAirflow whose database was cloned from a migrated template: no migration at start."""

    def migrate(self, timeout: float = 300) -> None:
        if getattr(self, "premigrated", False):
            self.timings["db_migrate"] = 0.0
            return
        super().migrate(timeout)


def _package_root() -> str:
    return str(Path(airflow_provider_kaapana.__file__).resolve().parents[1])


APPROVAL_SETTLE_SECONDS = 5.0


class FederatedSandbox:
    """A coordinator and its sites, started with :meth:`start` (or as a context manager).

    :param root: work folder (Airflow homes, DAG files, cohorts, audit logs, the report)
    :param sites: the sites; their names are their user names on the coordinator
    :param poll_interval: seconds between a site's poll runs
    :param poll_window: seconds each poll run keeps looking (every ``poll_look`` s) before it ends; 0:
        one look per run. Looking inside one task process costs far less CPU than a run per look,
        which matters with four Airflows on two cores.
    :param postgres: PostgreSQL databases (``None``: when a server answers at ``pg_admin_url``)
    :param out: receives one line per start-up step
    """

    def __init__(
        self,
        root: str | Path,
        sites: Sequence[SiteSpec],
        *,
        poll_interval: float = 3.0,
        poll_window: float = 60.0,
        poll_look: float = 1.5,
        postgres: bool | None = None,
        pg_admin_url: str = PG_ADMIN_URL,
        index: str = DEFAULT_INDEX,
        out: TextIO | None = None,
    ) -> None:
        self.root = Path(root)
        self.poll_interval = poll_interval
        self.poll_window = poll_window
        self.poll_look = poll_look
        self.pg_admin_url = pg_admin_url
        self.postgres = postgres
        self.index = index
        self.out = out
        self.sites = {spec.name: Site(spec, secrets.token_urlsafe(12)) for spec in sites}
        self.admin_password = secrets.token_urlsafe(12)
        self.private_key, self.public_key = generate_keypair()
        self.coordinator: LocalAirflow | None = None
        self.databases: list[str] = []
        self.steps: list[tuple[str, float]] = []
        self._stack = ExitStack()

    # --- start-up ----------------------------------------------------------------------------------

    def _step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = fn()
        elapsed = time.monotonic() - started
        self.steps.append((name, elapsed))
        if self.out is not None:
            print(f"[{elapsed:7.1f} s] {name}", file=self.out, flush=True)
        return result

    @property
    def workspace_base(self) -> Path:
        return self.root / "coordinator-workspace"

    def _write_dags(self) -> tuple[Path, Path]:
        coordinator_dags = self.root / "dags" / "coordinator"
        site_dags = self.root / "dags" / "site"
        for folder in (coordinator_dags, site_dags):
            folder.mkdir(parents=True, exist_ok=True)
        coordinator_settings = {"workspace_base": str(self.workspace_base), "default_args": {"retries": 0}}
        site_settings = {
            "poll_interval_seconds": self.poll_interval,
            "poll_window_seconds": self.poll_window,
            "poll_look_seconds": self.poll_look,
            "index": self.index,
            "default_args": {"retries": 0},
        }
        (coordinator_dags / f"{COORDINATOR_DAG}.py").write_text(
            _DAG_FILE.format(
                what="the coordinator DAG",
                factory="federated_analysis_dag",
                args='"cohort_statistics", ',
                settings=coordinator_settings,
            )
        )
        (site_dags / f"{POLL_DAG}.py").write_text(
            _DAG_FILE.format(
                what="the poll DAG", factory="federation_poll_dag", args="", settings=site_settings
            )
        )
        (site_dags / f"{SITE_DAG}.py").write_text(
            _DAG_FILE.format(
                what="the site analysis DAG",
                factory="federated_site_dag",
                args='"cohort_statistics", ',
                settings=site_settings,
            )
        )
        return coordinator_dags, site_dags

    def _cohorts(self) -> None:
        for site in self.sites.values():
            spec = site.spec
            site.cohort = synthetic_site(
                self.root / "cohorts", spec.name, n_patients=spec.n_patients, seed=spec.seed
            )

    def _index_cohorts(self) -> None:
        for site in self.sites.values():
            if not site.spec.start:
                continue
            site.osmem = Osmem().start()
            self._stack.callback(site.osmem.stop)
            client = make_search_client(site.osmem.url, flavor="opensearch")
            ensure_index_template(client, self.index)
            assert site.cohort is not None
            docs = [(doc["SeriesInstanceUID"], doc) for doc in site.cohort.documents]
            result = bulk_index(client, self.index, docs, refresh=True)
            if result.failed:
                raise AirflowError(f"indexing site {site.name}'s cohort failed: {result.failed}")

    def _use_postgres(self) -> bool:
        if self.postgres is not None:
            return self.postgres
        try:
            _admin_execute(self.pg_admin_url, "SELECT 1")
        except Exception:
            return False
        return True

    def _databases(self, count: int) -> list[str | None]:
        """``count`` database URLs: clones of one migrated PostgreSQL database, or SQLite (None)."""
        if not self._use_postgres():
            return [None] * count
        template = create_postgres_database(self.pg_admin_url, name=f"kaapana_fed_tpl_{secrets.token_hex(4)}")
        self.databases.append(template)
        (self.root / "migrate-home").mkdir(parents=True, exist_ok=True)
        LocalAirflow(
            self.root / "migrate-home", self.root / "dags" / "coordinator", db_url=template
        ).migrate()
        template_name = template.rsplit("/", 1)[1]
        urls: list[str | None] = []
        for _ in range(count):
            name = f"kaapana_fed_{secrets.token_hex(4)}"
            _admin_execute(self.pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
            url = template.rsplit("/", 1)[0] + "/" + name
            self.databases.append(url)
            urls.append(url)
        return urls

    def _airflow(self, home: Path, dags: Path, db_url: str | None, **kwargs: Any) -> LocalAirflow:
        env = dict(kwargs.pop("extra_env", {}))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))
        airflow = _ClonedAirflow(home, [dags], db_url=db_url, extra_env=env, **kwargs)
        airflow.premigrated = db_url is not None  # type: ignore[attr-defined]
        return airflow

    def site_connection(self, site: Site) -> dict[str, Any]:
        """The site's ``kaapana_federation`` connection (as an ``AIRFLOW_CONN_*`` JSON object)."""
        assert self.coordinator is not None
        return {
            "conn_type": "kaapana_federation",
            "host": self.coordinator.url,
            "login": site.name,
            "password": site.password,
            "extra": {
                "site": site.name,
                "coordinator_public_key": self.public_key,
                "audit_log": str(site.audit_log),
                "verify": False,
                "retries": 1,
                "backoff": 0.5,
                "policy": {
                    "allowed_analyses": dict(site.spec.allowed_analyses),
                    "require_approval": site.spec.require_approval,
                    "k_min": site.spec.k_min,
                },
            },
        }

    def start(self) -> FederatedSandbox:
        """Cohorts, search servers, databases, then every Airflow in parallel; DAGs parsed and unpaused."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        coordinator_dags, site_dags = self._write_dags()
        running = [s for s in self.sites.values() if s.spec.start]
        self._step(
            f"synthetic cohorts for {len(self.sites)} sites (real DICOM headers -> index documents)",
            self._cohorts,
        )
        self._step(f"osmem-server per running site ({len(running)}), cohorts indexed", self._index_cohorts)
        urls = self._step(
            "Airflow databases (one migrated, cloned per Airflow)", lambda: self._databases(1 + len(running))
        )
        self.coordinator = self._airflow(
            self.root / "coordinator",
            coordinator_dags,
            urls[0],
            api_port=free_port(),
            password=self.admin_password,
            users={name: ("user", site.password) for name, site in self.sites.items()},
            extra_env={
                "AIRFLOW_CONN_KAAPANA_FEDERATION_COORDINATOR": json.dumps(
                    {"conn_type": "kaapana_federation_coordinator", "password": self.private_key}
                ),
                # the HITL timeout sweep: a silent site is timed_out within 2 s of its deadline
                "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
            },
        )
        for site, url in zip(running, urls[1:], strict=True):
            site.audit_log = self.root / "audit" / f"{site.name}.jsonl"
            assert site.osmem is not None
            site.airflow = self._airflow(
                self.root / "sites" / site.name,
                site_dags,
                url,
                password=self.admin_password,
                extra_env={
                    "AIRFLOW_CONN_KAAPANA_FEDERATION_DEFAULT": json.dumps(self.site_connection(site)),
                    "AIRFLOW_CONN_KAAPANA_SEARCH_DEFAULT": json.dumps(
                        {
                            "conn_type": "kaapana_search",
                            "host": "127.0.0.1",
                            "port": site.osmem.port,
                            "extra": {"flavor": "opensearch"},
                        }
                    ),
                },
            )
        airflows = [self.coordinator, *(s.airflow for s in running)]

        def start_all() -> None:
            errors: list[BaseException] = []

            def one(airflow: LocalAirflow) -> None:
                try:
                    airflow.start()
                except BaseException as exc:  # reported below, after every thread ended
                    errors.append(exc)

            threads = [threading.Thread(target=one, args=(a,), daemon=True) for a in airflows]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for airflow in airflows:
                self._stack.callback(airflow.stop)
            if errors:
                raise errors[0]

        self._step(
            f"start {len(airflows)} Airflows in parallel (coordinator + {len(running)} sites)", start_all
        )

        def parse() -> None:
            self.coordinator.wait_for_dag(COORDINATOR_DAG, timeout=180)  # type: ignore[union-attr]
            for site in running:
                site.airflow.wait_for_dag(SITE_DAG, timeout=180)  # type: ignore[union-attr]
                site.airflow.wait_for_dag(POLL_DAG, timeout=180)  # type: ignore[union-attr]

        self._step("DAGs parsed and unpaused (coordinator DAG; poll + analysis DAG per site)", parse)

    def stop(self) -> None:
        """Stop every Airflow and search server; drop the databases."""
        self._stack.close()
        for airflow in [self.coordinator, *(s.airflow for s in self.sites.values())]:
            if airflow is not None:
                airflow.stop()
        for url in reversed(self.databases):
            try:
                drop_postgres_database(url, self.pg_admin_url)
            except Exception:  # best effort: a database in use is dropped WITH (FORCE) anyway
                pass
        self.databases.clear()

    def __enter__(self) -> FederatedSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- jobs --------------------------------------------------------------------------------------

    def trigger(
        self,
        sites: Sequence[str] | None = None,
        *,
        k: int = 10,
        site_timeout_seconds: int = 120,
        run_id: str | None = None,
    ) -> str:
        """Start a job on the coordinator (as its admin); returns the run id."""
        assert self.coordinator is not None
        conf = {
            "sites": list(sites if sites is not None else self.sites),
            "k": k,
            "site_timeout_seconds": site_timeout_seconds,
        }
        return self.coordinator.trigger(COORDINATOR_DAG, conf, run_id=run_id)

    def wait(self, run_id: str, timeout: float = 300) -> str:
        assert self.coordinator is not None
        return self.coordinator.wait_for_run(COORDINATOR_DAG, run_id, timeout=timeout)

    def report_dir(self, run_id: str) -> Path:
        from airflow_provider_kaapana.core.workspace import RunWorkspace

        return RunWorkspace(self.workspace_base, COORDINATOR_DAG, run_id).root / "federation"

    def report(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.report_dir(run_id) / "report.json").read_text())

    def local_run(self, site: str, coordinator_run_id: str, timeout: float = 120) -> str:
        """The site's local analysis run for a coordinator run (waits until the poll started it)."""
        airflow = self.sites[site].airflow
        assert airflow is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = airflow.api("GET", f"dags/{SITE_DAG}/dagRuns", params={"limit": 100}).json()["dag_runs"]
            for run in runs:
                if (run.get("conf") or {}).get("request", {}).get("run_id") == coordinator_run_id:
                    return run["dag_run_id"]
            time.sleep(0.5)
        raise AirflowError(f"site {site} started no analysis run for {coordinator_run_id} within {timeout} s")

    # A person answers seconds after the request appears, never in the same instant. Answering a HITL
    # task the moment it parks can land before Airflow 3.3.2 has settled the parking (the race the
    # sites' answers also wait out, see FederationSettings.answer_settle_seconds), which fails the task.
    def decide_approval(self, site: str, coordinator_run_id: str, approve: bool, timeout: float = 120) -> str:
        """Play the site's reviewer: approve or reject the local run's approval task; returns its run id."""
        airflow = self.sites[site].airflow
        assert airflow is not None
        run_id = self.local_run(site, coordinator_run_id, timeout)
        path = f"dags/{SITE_DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve/-1/hitlDetails"
        deadline = time.monotonic() + timeout
        answered: set[int] = set()
        waiting: dict[int, float] = {}
        while time.monotonic() < deadline:
            ti = airflow.task_instances(SITE_DAG, run_id).get("approve") or {}
            state, attempt = ti.get("state"), int(ti.get("try_number") or 0)
            if answered and state in ("success", "skipped", "failed", "upstream_failed"):
                return run_id
            if state in ("awaiting_input", "deferred") and attempt not in answered:
                # a person answers each new request (a retried try shows the request again)
                since = waiting.setdefault(attempt, time.monotonic())
                if time.monotonic() - since >= APPROVAL_SETTLE_SECONDS:
                    try:
                        airflow.api(
                            "PATCH", path, json={"chosen_options": ["Approve" if approve else "Reject"]}
                        )
                    except AirflowError as exc:  # 409: this try is already answered
                        if "409" not in str(exc):
                            raise
                    answered.add(attempt)
            time.sleep(0.5)
        raise AirflowError(f"site {site}: the approval of {run_id} did not wait for input within {timeout} s")

    def abort_local_run(self, site: str, coordinator_run_id: str, timeout: float = 120) -> str:
        """Play the site's operator: mark the local run of a request failed while it waits for approval."""
        airflow = self.sites[site].airflow
        assert airflow is not None
        run_id = self.local_run(site, coordinator_run_id, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if airflow.task_states(SITE_DAG, run_id).get("approve") in ("awaiting_input", "deferred"):
                airflow.api(
                    "PATCH", f"dags/{SITE_DAG}/dagRuns/{quote(run_id, safe='')}", json={"state": "failed"}
                )
                return run_id
            time.sleep(0.5)
        raise AirflowError(f"site {site}: {run_id} did not wait for approval within {timeout} s")


# --------------------------------------------------------------------------------------------------
# kaapana demo --federated

# Large enough that each site may publish its 8-bin age histogram (at most 1 bin per 10 patients).
DEMO_SITES = (
    SiteSpec("alpha", n_patients=90, seed=11),
    SiteSpec("beta", n_patients=80, seed=12),
    SiteSpec("gamma", n_patients=70, seed=13),
)


@dataclass
class FederatedDemoResult:
    run_id: str
    report: dict[str, Any]
    report_path: Path
    steps: list[tuple[str, float]]
    job_seconds: float


def _statistic_line(name: str, stat: Mapping[str, Any]) -> str:
    if stat["kind"] == "counts":
        cells = ", ".join(
            f"{label} {value}{'*' if label in stat['incomplete'] else ''}"
            for label, value in stat["cells"].items()
        )
        return f"  {name:<28} {cells}  (total {stat['total']}{'*' if stat['total_incomplete'] else ''})"
    if stat.get("withheld_by") and not stat.get("sites"):
        return f"  {name:<28} withheld by every site (too few individuals)"
    if stat["kind"] == "moments":
        if stat["mean"] is None:
            return f"  {name:<28} n {stat['n']}"
        return f"  {name:<28} n {stat['n']}, mean {stat['mean']:.1f}, SD {(stat['sd'] or 0):.1f}"
    counts = ", ".join(
        f"{value}{'*' if i in stat['incomplete'] else ''}" for i, value in enumerate(stat["counts"])
    )
    return f"  {name:<28} [{counts}] over edges {[float(e) for e in stat['edges']]}"


def run_federated_demo(
    workdir: str | Path | None = None,
    out: TextIO | None = None,
    report_path: str | Path | None = None,
    sites: Sequence[SiteSpec] = DEMO_SITES,
    postgres: bool | None = None,
) -> FederatedDemoResult:
    """A coordinator and three sites answer one cohort-statistics job; prints each site's status and
    the aggregate, and copies the JSON report to ``report_path`` (if given)."""
    own_dir = workdir is None
    root = Path(workdir or tempfile.mkdtemp(prefix="kaapana-federated-demo-"))
    # the search client logs each 404 of the "is the index template there yet?" check as a warning
    logging.getLogger("opensearch").setLevel(logging.ERROR)
    try:
        with FederatedSandbox(root, sites, out=out, postgres=postgres) as sandbox:
            started = time.monotonic()
            run_id = sandbox._step("trigger the job on the coordinator", lambda: sandbox.trigger())
            state = sandbox._step(
                "sites poll, decide, compute, guard, seal, answer; coordinator aggregates",
                lambda: sandbox.wait(run_id, timeout=600),
            )
            job_seconds = time.monotonic() - started
            if state != "success":
                raise AirflowError(f"the job {run_id} ended {state}")
            report = sandbox.report(run_id)
            source = sandbox.report_dir(run_id) / "report.json"
            target = Path(report_path) if report_path else source
            if report_path:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                shutil.copyfile(source.with_suffix(".html"), target.with_suffix(".html"))
            steps = list(sandbox.steps)
    finally:
        if own_dir and report_path:
            shutil.rmtree(root, ignore_errors=True)
    if out is not None:
        print(f"\njob {report['job']['job_id']} ({job_seconds:.1f} s from trigger to report)", file=out)
        for row in report["sites"]:
            extra = f"  {row['suppressed_cells']} cells suppressed" if row["status"] == "ok" else ""
            reason = f"  ({row['reason']})" if row.get("reason") else ""
            print(f"site {row['name']:<10} {row['status']:<10}{extra}{reason}", file=out)
        print(
            f"aggregate{' (partial)' if report['partial'] else ''}, * = incomplete (a site suppressed it):",
            file=out,
        )
        for name, stat in report["aggregate"].items():
            print(_statistic_line(name, stat), file=out)
        where = target if report_path or not own_dir else f"{target} (temporary, removed)"
        print(f"report: {where} (+ .html)", file=out, flush=True)
    return FederatedDemoResult(run_id, report, target, steps, job_seconds)


__all__ = [
    "DEMO_SITES",
    "FederatedDemoResult",
    "FederatedSandbox",
    "Site",
    "SiteSpec",
    "run_federated_demo",
]
