"""Scale-out on the CeleryExecutor with two workers: ingest under load with one worker SIGKILLed, segmentation.

10 small series from 3 concurrent ``storescu`` senders (see :mod:`airflow_provider_kaapana.testing.load`):
every instance ends in Orthanc and the index exactly once, every ingest run succeeds, even though the
``gpu`` worker (queues gpu,default) is killed while it runs an ingest task and its tasks are retried on the
``io`` worker. And the segmentation DAG end to end on the same set-up, with predict on the ``gpu`` queue.
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
    # every series in exactly one run (several per run when they complete together), all successful
    assert sum(result.series_per_run) == 10 and len(result.series_per_run) == result.dag_runs
    assert result.failed_runs == []
    # the kill hit running tasks: they were retried (on the io worker, the only one left)
    assert result.killed_tasks
    assert result.retried_tasks >= len(result.killed_tasks)


def test_segmentation_on_celery_with_predict_on_the_gpu_queue(tmp_path):
    from airflow_provider_kaapana.testing.demo import run_demo
    from airflow_provider_kaapana.testing.load import CELERY_WORKERS
    from airflow_provider_kaapana.testing.local_airflow import (
        create_postgres_database,
        drop_postgres_database,
        flush_redis,
        redis_broker_url,
    )

    db_url = create_postgres_database()
    broker = redis_broker_url()
    try:
        result = run_demo(
            tmp_path / "demo",
            db_url=db_url,
            scale_out={"broker_url": broker, "celery_workers": CELERY_WORKERS},
        )
    finally:
        drop_postgres_database(db_url)
        flush_redis(broker)
    assert result.seg_document["Modality"] == "SEG"
    assert result.seg_document["kaapana"]["segment_labels"] == ["sphere"]
    assert result.task_queues["per_series.predict[0]"] == "gpu"
    assert result.task_queues["per_series.nifti[0]"] == "default"
