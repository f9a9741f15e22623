"""Scale-out: the listener -> ingest chain on the CeleryExecutor with two workers, one SIGKILLed mid-run.

10 small series from 3 concurrent ``storescu`` senders (see :mod:`airflow_provider_kaapana.testing.load`):
every instance ends in Orthanc and the index exactly once, every ingest run succeeds, even though the
``gpu`` worker (queues gpu,default) is killed while it runs an ingest task and its tasks are retried on the
``io`` worker.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_celery_two_workers_one_killed_nothing_lost_or_doubled(tmp_path):
    from airflow_provider_kaapana.testing.load import run_load

    workers: list[dict[str, str]] = []

    def check_workers(airflow) -> None:
        # both workers are the harness's children, on their queues
        workers.append(
            {name: " ".join(p.args) for name, p in airflow.procs.items() if name.startswith("worker-")}
        )

    result = run_load(
        tmp_path,
        executor="celery",
        series=10,
        instances=3,
        senders=3,
        timeout=240,
        kill_busy_worker=True,
        on_started=check_workers,
    )
    assert "--queues default " in workers[0]["worker-io"]
    assert "--queues gpu,default " in workers[0]["worker-gpu"]
    assert result.problems == []
    assert (result.lost, result.duplicated) == (0, 0)
    assert len(result.latencies) == 10
    # one run per series (each sent once, after its quiet period), all of them successful
    assert result.dag_runs == 10
    assert result.failed_runs == []
    # the kill hit running tasks: they were retried (on the io worker, the only one left)
    assert result.killed_tasks
    assert result.retried_tasks >= len(result.killed_tasks)
