"""Scale-out on the CeleryExecutor with two workers: ingest under load with one worker SIGKILLed, segmentation.

30 small series from 3 concurrent ``storescu`` senders (see :mod:`airflow_provider_kaapana.testing.load`):
every instance ends in Orthanc and the index exactly once, every ingest run succeeds, even though the
``gpu`` worker (queues gpu,default) is SIGKILLed while it runs an ingest task: each task it was running
ends in success with its last try on the ``io`` worker (the task instance's hostname: each worker
records its own name). And the segmentation DAG end to end on the same set-up, with predict on the
``gpu`` queue. PostgreSQL and Redis are the harness's own, started and ended by pid.
"""

from __future__ import annotations

import sys

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
        series=30,
        instances=2,
        senders=3,
        timeout=240,
        kill_busy_worker=True,
        # several ingest runs at once (not one of 30 series): both workers busy when one is killed
        max_series_per_run=8,
        on_started=check_workers,
        out=sys.stdout,  # progress and the kill, shown when the test fails
    )
    assert "--queues default " in workers[0]["worker-io"]
    assert "--queues gpu,default " in workers[0]["worker-gpu"]
    assert result.problems == []
    assert (result.lost, result.duplicated) == (0, 0)
    assert len(result.latencies) == 30
    # every series in exactly one run (several per run when they complete together), all successful
    assert sum(result.series_per_run) == 30 and len(result.series_per_run) == result.dag_runs
    assert result.failed_runs == []
    # the kill hit running tasks of the gpu worker; each was retried on the io worker and succeeded
    assert result.killed_tasks
    assert set(result.killed_tasks_final) == set(result.killed_tasks)
    for key, at_kill in result.killed_tasks.items():
        final = result.killed_tasks_final[key]
        assert at_kill["hostname"] == "gpu", (key, at_kill)
        assert final == {"state": "success", "hostname": "io", "try_number": final["try_number"]}, (
            key,
            final,
        )
        assert final["try_number"] > at_kill["try_number"], (key, at_kill, final)


def test_segmentation_on_celery_with_predict_on_the_gpu_queue(tmp_path):
    from airflow_provider_kaapana.testing.demo import run_demo
    from airflow_provider_kaapana.testing.load import CELERY_WORKERS
    from airflow_provider_kaapana.testing.local_airflow import create_postgres_database
    from airflow_provider_kaapana.testing.local_services import Postgres, Redis

    with Postgres() as postgres, Redis() as redis:
        result = run_demo(
            tmp_path / "demo",
            db_url=create_postgres_database(postgres.admin_url),
            scale_out={"broker_url": redis.url, "celery_workers": CELERY_WORKERS},
        )
    assert result.seg_document["Modality"] == "SEG"
    assert result.seg_document["kaapana"]["segment_labels"] == ["sphere"]
    assert result.task_queues["per_series.predict[0]"] == "gpu"
    assert result.task_queues["per_series.nifti[0]"] == "default"
