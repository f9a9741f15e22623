"""NnUNetPredictOperator in local mode behind a task that hands over a NIfTI-step XCom (for dag.test())."""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.nnunet_predict import NnUNetPredictOperator

with DAG("kaapana_test_nnunet_local", schedule=None, catchup=False, tags=["kaapana", "test"]) as dag:

    @task
    def nifti(dag_run=None) -> dict:
        conf = dag_run.conf
        return {
            "series_instance_uid": conf["series_instance_uid"],
            "case_id": conf["case_id"],
            "nifti_dir": conf["nifti_dir"],
        }

    predicted = NnUNetPredictOperator(
        task_id="nnunet",
        mode="local",
        model="{{ dag_run.conf['model'] }}",
        models_dir="{{ dag_run.conf['models_dir'] }}",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
        folds=["{{ dag_run.conf['fold'] }}"],
        series=nifti(),
        device="cpu",
        tta=False,
    )

    @task
    def record(result: dict, dag_run=None) -> None:
        Path(dag_run.conf["result_file"]).write_text(json.dumps(result))

    record(predicted.output)
