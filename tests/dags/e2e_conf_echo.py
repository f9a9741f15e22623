"""The end-to-end harness check: a real scheduler runs this, and the task writes its run's conf to a file.

The file is named by the conf (``out_file``), so the test proves that the conf sent over REST reached the
task process that the LocalExecutor started.
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import DAG, task

with DAG("kaapana_e2e_conf_echo", schedule=None, catchup=False, tags=["kaapana", "test"]) as dag:

    @task
    def echo_conf(**context) -> str:
        conf = context["dag_run"].conf
        out_file = Path(conf["out_file"])
        out_file.write_text(json.dumps({"conf": conf, "run_id": context["run_id"]}))
        return str(out_file)

    echo_conf()
