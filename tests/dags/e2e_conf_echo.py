"""The end-to-end harness check: a real scheduler runs this, and the task writes its run's conf to a file.

The file is named by the conf (``out_file``), so the test proves that the conf sent over REST reached the
task process that the LocalExecutor started. With ``conn_id`` in the conf, the task also writes that
connection as it sees it (a connection created over REST must reach the task through the execution API).
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import DAG, Connection, task

with DAG("kaapana_e2e_conf_echo", schedule=None, catchup=False, tags=["kaapana", "test"]) as dag:

    @task
    def echo_conf(**context) -> str:
        conf = context["dag_run"].conf
        out_file = Path(conf["out_file"])
        written = {"conf": conf, "run_id": context["run_id"]}
        if conf.get("conn_id"):
            conn = Connection.get(conf["conn_id"])
            written["connection"] = {
                "conn_type": conn.conn_type,
                "host": conn.host,
                "port": conn.port,
                "password": conn.password,
                "extra": conn.extra_dejson,
            }
        out_file.write_text(json.dumps(written))
        return str(out_file)

    echo_conf()
