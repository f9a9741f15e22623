"""The real-Airflow harness: api-server + scheduler + dag-processor, LocalExecutor on PostgreSQL.

A DAG run is triggered over REST API v2 with a JWT, as the DICOM listener does in production, and the
conf must arrive in the task process that the scheduler started.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from airflow_provider_kaapana.testing.local_airflow import AirflowError
from tests.conftest import E2E_LISTENER_USER, E2E_VIEWER_USER

pytestmark = pytest.mark.slow

DAG_ID = "kaapana_e2e_conf_echo"


def test_conf_sent_over_rest_reaches_the_task(airflow_cluster, tmp_path):
    airflow_cluster.wait_for_dag(DAG_ID)
    listener_token = airflow_cluster.get_token(*E2E_LISTENER_USER)
    out_file = tmp_path / "conf.json"
    conf = {"out_file": str(out_file), "identifiers": ["1.2.826.0.1.3680043.8.498.1"], "limit": 3}
    good = airflow_cluster.trigger(DAG_ID, conf, token=listener_token)
    # a path whose folder does not exist: the task fails, and the harness must say so
    bad = airflow_cluster.trigger(DAG_ID, {"out_file": str(tmp_path / "missing" / "x.json")})

    assert airflow_cluster.wait_for_run(DAG_ID, good, timeout=180) == "success"
    assert airflow_cluster.wait_for_run(DAG_ID, bad, timeout=180) == "failed"
    assert airflow_cluster.task_states(DAG_ID, good) == {"echo_conf": "success"}
    assert airflow_cluster.task_states(DAG_ID, bad) == {"echo_conf": "failed"}
    written = json.loads(out_file.read_text())
    assert written == {"conf": conf, "run_id": good}
    assert "FileNotFoundError" in airflow_cluster.task_log(DAG_ID, bad, "echo_conf")


def test_connection_created_over_rest_reaches_the_task(airflow_cluster, tmp_path):
    airflow_cluster.wait_for_dag(DAG_ID)
    extra = {"called_aet": "ORTHANC", "dicomweb_url": "http://127.0.0.1:8042/dicom-web"}
    airflow_cluster.add_connection(
        "e2e_pacs", "generic", host="127.0.0.1", port=4242, password="first", extra=extra
    )
    # a second call replaces the connection instead of failing on the existing id
    airflow_cluster.add_connection(
        "e2e_pacs", "generic", host="127.0.0.1", port=4242, password="s3cret", extra=extra
    )
    out_file = tmp_path / "conn.json"
    run_id = airflow_cluster.trigger(DAG_ID, {"out_file": str(out_file), "conn_id": "e2e_pacs"})

    assert airflow_cluster.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    assert json.loads(out_file.read_text())["connection"] == {
        "conn_type": "generic",
        "host": "127.0.0.1",
        "port": 4242,
        "password": "s3cret",
        "extra": extra,
    }


def test_trigger_without_or_with_a_weak_token_is_refused(airflow_cluster, tmp_path):
    airflow_cluster.wait_for_dag(DAG_ID)
    url = f"{airflow_cluster.url}/api/v2/dags/{DAG_ID}/dagRuns"
    body = {"logical_date": None, "dag_run_id": f"refused-{uuid.uuid4().hex}", "conf": {"out_file": "x"}}

    anonymous = requests.post(url, json=body, timeout=10)
    assert anonymous.status_code == 401
    forged = requests.post(url, json=body, headers={"Authorization": "Bearer not.a.jwt"}, timeout=10)
    assert forged.status_code in (401, 403)
    viewer_token = airflow_cluster.get_token(*E2E_VIEWER_USER)
    viewer = requests.post(url, json=body, headers={"Authorization": f"Bearer {viewer_token}"}, timeout=10)
    assert viewer.status_code == 403
    with pytest.raises(AirflowError, match="login as 'listener' refused"):
        airflow_cluster.get_token("listener", "wrong-password")

    runs = airflow_cluster.api("GET", f"dags/{DAG_ID}/dagRuns").json()["dag_runs"]
    assert body["dag_run_id"] not in {run["dag_run_id"] for run in runs}


def test_dag_files_written_at_run_time_are_parsed_or_their_error_reported(airflow_cluster):
    scratch = airflow_cluster.dag_folders[-1]
    (scratch / "kaapana_e2e_late.py").write_text(
        "from airflow.sdk import DAG, task\n"
        "with DAG('kaapana_e2e_late', schedule=None, tags=['kaapana', 'test']):\n"
        "    task(lambda: 1, task_id='one')()\n"
    )
    (scratch / "kaapana_e2e_broken.py").write_text(
        "from airflow.sdk import DAG\nraise RuntimeError('broken on purpose: kaapana_e2e_broken')\n"
    )

    dag = airflow_cluster.wait_for_dag("kaapana_e2e_late", timeout=120)
    assert dag["dag_id"] == "kaapana_e2e_late" and dag["is_paused"] is False
    with pytest.raises(AirflowError, match="broken on purpose") as raised:
        airflow_cluster.wait_for_dag("kaapana_e2e_broken", timeout=120)
    assert "import error in" in str(raised.value)
