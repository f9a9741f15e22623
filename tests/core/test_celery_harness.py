"""The CeleryExecutor configuration of the local Airflow harness (no processes started)."""

from __future__ import annotations

import pytest

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.testing.local_airflow import LocalAirflow


def test_celery_env_needs_postgres_and_a_broker(tmp_path):
    airflow = LocalAirflow(tmp_path, tmp_path / "dags", executor="CeleryExecutor")
    with pytest.raises(ValueError, match="db_url"):
        airflow.env()


def test_celery_env_and_worker_commands(tmp_path):
    db = "postgresql+psycopg2://postgres@127.0.0.1:5432/kaapana_e2e_x"
    airflow = LocalAirflow(
        tmp_path,
        tmp_path / "dags",
        executor="CeleryExecutor",
        db_url=db,
        broker_url="redis://127.0.0.1:6379/7",
        celery_workers={"io": "default", "gpu": "gpu,default"},
    )
    env = airflow.env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/7"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{db}"
    command = airflow._worker_command("gpu", "gpu,default")
    assert command[command.index("--queues") + 1] == "gpu,default"
    # two workers on one machine: own pid files, no log server on one shared port
    assert command[command.index("--pid") + 1].endswith("worker-gpu.pid")
    assert "--skip-serve-logs" in command


def test_local_executor_env_has_no_celery(tmp_path):
    env = LocalAirflow(tmp_path, tmp_path / "dags").env()
    assert not any(k.startswith("AIRFLOW__CELERY") for k in env)


def test_scale_out_settings_only_what_is_set():
    assert PipelineSettings().gpu_task_kwargs() == {}
    assert PipelineSettings().pacs_task_kwargs() == {}
    s = PipelineSettings(gpu_queue="gpu", gpu_pool="kaapana_gpu", pacs_pool="kaapana_pacs")
    assert s.gpu_task_kwargs() == {"queue": "gpu", "pool": "kaapana_gpu"}
    assert s.pacs_task_kwargs() == {"pool": "kaapana_pacs"}
