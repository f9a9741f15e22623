"""The CeleryExecutor configuration of the local Airflow harness, its own Redis and PostgreSQL, the
load benchmark's result lines."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

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
    # each worker records its own name as the hostname of the task instances it runs
    assert (
        env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "airflow_provider_kaapana.testing.hostname.worker_hostname"
    )
    assert "KAAPANA_WORKER_NAME" not in env
    assert airflow.worker_env("gpu")["KAAPANA_WORKER_NAME"] == "gpu"


def test_worker_hostname_is_the_worker_name_else_the_fqdn():
    """What Airflow's hostname_callable returns, in a fresh interpreter as a task process would call it."""
    probe = "from airflow_provider_kaapana.testing.hostname import worker_hostname; print(worker_hostname())"
    env = {k: v for k, v in os.environ.items() if k != "KAAPANA_WORKER_NAME"}
    named = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "KAAPANA_WORKER_NAME": "io"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert named.stdout.strip() == "io"
    unnamed = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert unnamed.stdout.strip() == socket.getfqdn()


def test_local_executor_env_has_no_celery(tmp_path):
    env = LocalAirflow(tmp_path, tmp_path / "dags").env()
    assert not any(k.startswith("AIRFLOW__CELERY") for k in env)


def test_scale_out_settings_only_what_is_set():
    assert PipelineSettings().gpu_task_kwargs() == {}
    assert PipelineSettings().pacs_task_kwargs() == {}
    s = PipelineSettings(gpu_queue="gpu", gpu_pool="kaapana_gpu", pacs_pool="kaapana_pacs")
    assert s.gpu_task_kwargs() == {"queue": "gpu", "pool": "kaapana_gpu"}
    assert s.pacs_task_kwargs() == {"pool": "kaapana_pacs"}


def test_own_redis_and_postgres_started_and_ended_by_pid():
    import psycopg2
    import redis as redis_client

    from airflow_provider_kaapana.testing.local_airflow import create_postgres_database
    from airflow_provider_kaapana.testing.local_services import Postgres, Redis

    with Postgres() as postgres, Redis() as redis:
        assert redis_client.Redis.from_url(redis.url).ping()
        db_url = create_postgres_database(postgres.admin_url)
        assert f"127.0.0.1:{postgres.port}/kaapana_e2e_" in db_url
        psycopg2.connect(db_url.replace("postgresql+psycopg2://", "postgresql://")).close()
        folder = postgres.folder
    assert redis.proc.returncode is not None and postgres.proc.returncode is not None
    assert not folder.exists()  # data and socket removed with the cluster


@pytest.mark.parametrize("name", ["Redis", "Orthanc", "Osmem"])
def test_a_service_that_does_not_answer_in_time_is_stopped(monkeypatch, tmp_path, name):
    from airflow_provider_kaapana.testing import local_services

    def never_ready(*args, **kwargs):
        raise local_services.ServiceError("did not answer in time")

    monkeypatch.setattr(local_services, "_wait_port", never_ready)
    monkeypatch.setattr(local_services, "_wait_http", never_ready)
    service = (
        local_services.Orthanc(workdir=tmp_path) if name == "Orthanc" else getattr(local_services, name)()
    )
    try:
        with pytest.raises(local_services.ServiceError, match="did not answer"):
            service.start()
        assert service.proc is not None and service.proc.poll() is not None  # not left running
    finally:
        service.stop()  # this test leaves none behind either way


def test_missing_redis_server_names_the_debian_package(monkeypatch):
    from airflow_provider_kaapana.testing import local_services

    monkeypatch.setattr(local_services.shutil, "which", lambda name: None)
    with pytest.raises(local_services.ServiceError, match="apt-get install redis-server"):
        local_services.Redis().start()


def test_load_result_ends_with_the_issue_line():
    from airflow_provider_kaapana.testing.load import LoadResult

    result = LoadResult("celery", 30, 2, 3, lost=0, duplicated=1, drain_s=61.3, latencies=[1.0, 2.0, 9.0])
    result.dag_runs = 4
    assert re.fullmatch(
        r"executor=celery series=30 lost=0 duplicated=1 drain_s=61\.3 p95_s=\d+\.\d", result.line()
    ), result.line()
    assert "instances=2 senders=3 runs=4" in result.detail_line()
