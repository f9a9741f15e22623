"""A busy hospital in miniature: S series x I instances from K concurrent ``storescu`` senders.

The listener receives, the ingest DAG stores and indexes, on a real Airflow with the LocalExecutor or
the CeleryExecutor (two workers on a Redis broker); the metadata DB is a PostgreSQL cluster of its own.
Every service (PostgreSQL, Redis, Orthanc, osmem-server, Airflow, the listener) is started here and
ended by its pid. :func:`run_load` measures
until every series is in the PACS and the index: drain time, the latency from a series' last instance
to its document being searchable, instances lost and documents or PACS instances duplicated. Used by
``tests/e2e/test_celery.py`` and ``benchmarks/bench_load.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import requests

INGEST_DAG = "kaapana_ingest"
INDEX = "kaapana-load"
# the pools the ingest and segmentation DAGs use under scale-out (docs/guides/scale_out.rst)
POOLS = {"kaapana_pacs": 4, "kaapana_gpu": 1}
# worker name -> queues: one I/O worker, one GPU worker that also helps with I/O
CELERY_WORKERS = {"io": "default", "gpu": "gpu,default"}

_DAG_FILE = '''"""Load-test variant of the shipped ingest DAG (written by airflow_provider_kaapana.testing.load)."""

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag

dag = create_ingest_dag(settings=PipelineSettings(**{settings!r}))
'''


@dataclass
class LoadResult:
    """What one load run measured."""

    executor: str
    series: int
    instances: int
    senders: int
    lost: int = 0
    duplicated: int = 0
    drain_s: float = 0.0  # from the first C-STORE until every series is in the PACS and the index
    send_s: float = 0.0  # until the last sender finished
    latencies: list[float] = field(default_factory=list)  # last instance -> document searchable, per series
    dag_runs: int = 0
    series_per_run: list[int] = field(default_factory=list)  # series batches each ingest run took
    failed_runs: list[str] = field(default_factory=list)
    # what the SIGKILLed worker was running: task key (run.task[map index]) -> {"hostname", "try_number"}
    # at the kill, and the same task instance at the end -> {"state", "hostname", "try_number"}
    killed_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    killed_tasks_final: dict[str, dict[str, Any]] = field(default_factory=dict)
    retried_tasks: int = 0  # task instances that needed more than one try (a killed worker's)
    problems: list[str] = field(default_factory=list)  # per series: what is missing or doubled

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    def line(self) -> str:
        """The issue's result line: ``executor=… series=… lost=N duplicated=M drain_s=… p95_s=…``."""
        return (
            f"executor={self.executor} series={self.series} lost={self.lost} duplicated={self.duplicated} "
            f"drain_s={self.drain_s:.1f} p95_s={self.percentile(95):.1f}"
        )

    def detail_line(self) -> str:
        """The other facts of the run, for the line before :meth:`line`."""
        return (
            f"detail: executor={self.executor} series={self.series} instances={self.instances} "
            f"senders={self.senders} runs={self.dag_runs} retried={self.retried_tasks} "
            f"failed_runs={len(self.failed_runs)} send_s={self.send_s:.1f} p50_s={self.percentile(50):.1f}"
        )


def task_key(ti: dict[str, Any]) -> str:
    """``run_id.task_id`` (``[map_index]`` for a mapped task) of a REST API task instance."""
    mapped = f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""
    return f"{ti['dag_run_id']}.{ti['task_id']}{mapped}"


def _ti_facts(ti: dict[str, Any]) -> dict[str, Any]:
    return {"state": ti.get("state"), "hostname": ti.get("hostname"), "try_number": ti.get("try_number")}


def _send(files: list[Path], port: int, calling_ae: str) -> None:
    from airflow_provider_kaapana.testing.local_services import find_tool

    result = subprocess.run(
        [
            find_tool("storescu"),
            "-aet",
            calling_ae,
            "-aec",
            "KAAPANA",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu from {calling_ae} failed: {result.stderr[-2000:]}")


def _index_counts(osmem_url: str) -> dict[str, list[int]]:
    """SeriesInstanceUID -> the instance counts of its documents (one document each, if all is well)."""
    from airflow_provider_kaapana.core.index.client import make_search_client

    client = make_search_client(osmem_url, flavor="opensearch")
    try:
        if not client.raw.indices.exists(index=INDEX):  # no 404 warnings before the first run indexed
            return {}
        client.refresh(INDEX)
        hits = client.search(INDEX, {"size": 10000, "query": {"match_all": {}}})["hits"]["hits"]
    except Exception:  # noqa: BLE001 - the index does not exist before the first run indexed
        return {}
    counts: dict[str, list[int]] = {}
    for hit in hits:
        doc = hit["_source"]
        counts.setdefault(doc.get("SeriesInstanceUID", ""), []).append(
            int((doc.get("kaapana") or {}).get("instance_count", 0))
        )
    return counts


def _pacs_counts(orthanc_url: str) -> dict[str, int]:
    """SeriesInstanceUID -> instances Orthanc holds."""
    r = requests.get(f"{orthanc_url}/series", params={"expand": ""}, timeout=60)
    r.raise_for_status()
    return {s["MainDicomTags"]["SeriesInstanceUID"]: len(s["Instances"]) for s in r.json()}


def run_load(
    workdir: str | Path,
    *,
    executor: str = "local",
    series: int = 10,
    instances: int = 4,
    senders: int = 3,
    pixels: int = 8,
    timeout: float = 600,
    kill_busy_worker: bool = False,
    max_series_per_run: int = 32,
    out: TextIO | None = None,
    on_started: Callable[[Any], None] | None = None,
) -> LoadResult:
    """Run one load test in ``workdir``; ``executor`` is ``local`` or ``celery``.

    ``kill_busy_worker`` (celery only): the ``gpu`` worker is SIGKILLed as soon as it runs an ingest task;
    the scheduler fails its tasks (heartbeat timeout) and their retries run on the ``io`` worker
    (``LoadResult.killed_tasks`` and ``killed_tasks_final``: each worker records its name as the task
    instance's hostname).
    ``max_series_per_run``: the listener's burst batching (1: one ingest run per series batch).
    """
    from airflow_provider_kaapana.core.listener.server import AirflowTrigger, DicomListener
    from airflow_provider_kaapana.testing.local_airflow import LocalAirflow, create_postgres_database
    from airflow_provider_kaapana.testing.local_services import Orthanc, Osmem, Postgres, Redis
    from airflow_provider_kaapana.testing.synthetic import generate_series

    if executor not in ("local", "celery"):
        raise ValueError("executor must be 'local' or 'celery'")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if out is not None:
            print(message, file=out, flush=True)

    generated = [
        generate_series(
            root / "synthetic" / f"s{i:04d}",
            rows=pixels,
            columns=pixels,
            slices=instances,
            seed=1000 + i,
            patient_id=f"LOAD{i:04d}",
            noise_sd=0.0,
        )
        for i in range(series)
    ]
    result = LoadResult(executor, series, instances, senders)
    with ExitStack() as stack:
        orthanc = Orthanc(workdir=root / "orthanc").start()
        stack.callback(orthanc.stop)
        osmem = Osmem().start()
        stack.callback(osmem.stop)
        postgres = Postgres().start()
        stack.callback(postgres.stop)
        db_url = create_postgres_database(postgres.admin_url)
        celery: dict[str, Any] = {}
        if executor == "celery":
            redis = Redis().start()
            stack.callback(redis.stop)
            celery = {
                "executor": "CeleryExecutor",
                "broker_url": redis.url,
                "celery_workers": CELERY_WORKERS,
            }
        settings = {
            "workspace_base": str(root / "workspace"),
            "pacs_conn_id": "kaapana_pacs_default",
            "search_conn_id": "kaapana_search_default",
            "index": INDEX,
            "pacs_pool": "kaapana_pacs",
            "gpu_queue": "gpu",
            "gpu_pool": "kaapana_gpu",
            "default_args": {"retries": 3, "retry_delay": 2.0},
        }
        dags = root / "dags"
        dags.mkdir(exist_ok=True)
        (dags / f"{INGEST_DAG}.py").write_text(_DAG_FILE.format(settings=settings))
        pacs = {
            "conn_type": "kaapana_pacs",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "extra": {
                "called_ae": orthanc.aet,
                "calling_ae": "KAAPANA",
                "dicomweb_url": orthanc.dicomweb_url,
            },
        }
        search = {
            "conn_type": "kaapana_search",
            "host": "127.0.0.1",
            "port": osmem.port,
            "extra": {"flavor": "opensearch"},
        }
        airflow = LocalAirflow(
            root / "airflow",
            [dags],
            db_url=db_url,
            parallelism=8,
            pools=POOLS,
            extra_env={
                "AIRFLOW_CONN_KAAPANA_PACS_DEFAULT": json.dumps(pacs),
                "AIRFLOW_CONN_KAAPANA_SEARCH_DEFAULT": json.dumps(search),
                # a task whose worker died is failed (and retried) after this long without a heartbeat:
                # short for the kill test; otherwise long: on a saturated machine (load 20-30 on 2
                # cores) a live task can miss 20 s, and a retry redoes its work (the 200x32 run saw
                # second tries of store tasks)
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20" if kill_busy_worker else "120",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
                # a task whose Celery message the killed worker had already taken (prefetched) stays
                # "queued"; it is queued again after this long (Airflow's default: 600 s, checked
                # every 120 s; a 7-series run waited past the kill test's 240 s that way)
                **(
                    {
                        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
                        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
                    }
                    if kill_busy_worker
                    else {}
                ),
            },
            **celery,
        )
        started = time.monotonic()
        airflow.start()
        stack.callback(airflow.stop)
        airflow.wait_for_dag(INGEST_DAG)
        say(f"[{executor}] Airflow up in {time.monotonic() - started:.0f} s")
        if on_started is not None:
            on_started(airflow)

        listener = DicomListener(
            root / "landing",
            port=0,
            quiet_seconds=1.0,
            on_batches_complete=AirflowTrigger(
                airflow.url, INGEST_DAG, username="admin", password="admin"
            ).trigger_batches,
            max_series_per_run=max_series_per_run,
        )
        listener.start()
        stack.callback(listener.stop)

        last_instance: dict[str, float] = {}
        errors: list[str] = []

        def sender(k: int) -> None:
            for s in generated[k::senders]:
                try:
                    _send(s.files, listener.port, f"MOD{k}")
                except Exception as exc:  # noqa: BLE001 - reported, counted as lost below
                    errors.append(str(exc))
                last_instance[s.series_instance_uid] = time.monotonic()

        t0 = time.monotonic()
        threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
        for t in threads:
            t.start()
        killed = False
        searchable: dict[str, float] = {}
        wanted = {s.series_instance_uid for s in generated}
        deadline = t0 + timeout
        pacs: dict[str, int] = {}
        while time.monotonic() < deadline:
            if kill_busy_worker and not killed and (running := airflow.worker_tasks("gpu", INGEST_DAG)):
                airflow.kill_worker("gpu")
                killed = True
                result.killed_tasks = {
                    task_key(ti): {"hostname": ti.get("hostname"), "try_number": ti.get("try_number")}
                    for ti in running
                }
                say(
                    f"[{executor}] worker gpu SIGKILLed at {time.monotonic() - t0:.1f} s running "
                    f"{sorted(result.killed_tasks)}"
                )
            now = time.monotonic()
            for uid, counts in _index_counts(osmem.url).items():
                if uid in wanted and uid not in searchable and counts and max(counts) >= instances:
                    searchable[uid] = now
            if len(searchable) == len(wanted) and not any(t.is_alive() for t in threads):
                pacs = _pacs_counts(orthanc.url)
                if all(pacs.get(uid, 0) >= instances for uid in wanted):
                    break
            time.sleep(0.5)
        result.drain_s = round(time.monotonic() - t0, 1)
        result.send_s = round(max(last_instance.values(), default=t0) - t0, 1)
        result.latencies = sorted(
            round(searchable[uid] - last_instance[uid], 2) for uid in searchable if uid in last_instance
        )
        # the final count: nothing lost, nothing doubled, in the PACS and the index
        pacs = _pacs_counts(orthanc.url)
        index = _index_counts(osmem.url)
        for uid in sorted(wanted):
            docs = index.get(uid, [])
            in_index = max(docs, default=0)
            in_pacs = pacs.get(uid, 0)
            lost = max(0, instances - min(in_index, in_pacs))
            doubled = max(0, len(docs) - 1) + max(0, in_index - instances) + max(0, in_pacs - instances)
            result.lost += lost
            result.duplicated += doubled
            if lost or doubled:
                result.problems.append(f"{uid}: pacs={in_pacs} index={docs} (want {instances})")
        result.problems.extend(errors)
        runs = airflow.client.request("GET", f"dags/{INGEST_DAG}/dagRuns", params={"limit": 1000}).json()
        result.dag_runs = int(runs.get("total_entries", 0))
        result.series_per_run = [
            int((r.get("conf") or {}).get("series_count", 1)) for r in runs.get("dag_runs", [])
        ]
        result.failed_runs = [r["dag_run_id"] for r in runs.get("dag_runs", []) if r["state"] == "failed"]
        tis = airflow.client.request(
            "GET", f"dags/{INGEST_DAG}/dagRuns/~/taskInstances", params={"limit": 1000}
        ).json()
        result.retried_tasks = sum(1 for ti in tis.get("task_instances", []) if ti.get("try_number", 1) > 1)
        result.killed_tasks_final = {
            task_key(ti): _ti_facts(ti)
            for ti in tis.get("task_instances", [])
            if task_key(ti) in result.killed_tasks
        }
        say(
            f"[{executor}] {series} series x {instances} instances from {senders} senders: sent in "
            f"{result.send_s} s, drained in {result.drain_s} s, {result.dag_runs} ingest runs "
            f"(series per run: max {max(result.series_per_run, default=0)}), {result.retried_tasks} tasks retried, "
            f"p50 {result.percentile(50):.1f} s, p95 {result.percentile(95):.1f} s"
        )
    if os.environ.get("KAAPANA_KEEP_LOAD_WORKDIR") != "1":
        shutil.rmtree(root / "synthetic", ignore_errors=True)
    return result
