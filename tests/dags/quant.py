"""Test DAG: SegmentStatisticsOperator fed by an export-shaped XCom, and SegmentationEvaluationOperator."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.segment_statistics import SegmentStatisticsOperator
from airflow_provider_kaapana.operators.segmentation_evaluation import SegmentationEvaluationOperator

with DAG(
    "kaapana_test_quant",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["kaapana", "test"],
) as dag:

    @task
    def exported(dag_run=None) -> dict:
        """What the SEG export step returns."""
        return dag_run.conf["exported"]

    @task
    def received(dag_run=None) -> dict:
        """What the receive step returns."""
        return dag_run.conf["received"]

    stats = SegmentStatisticsOperator(
        task_id="stats",
        segmentation=exported(),
        source=received(),
        sr=True,
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
        pacs_conn_id="kaapana_test_viewer",  # only its viewer_url: the task's Viewer link
    )
    evaluation = SegmentationEvaluationOperator(
        task_id="evaluate",
        reference="{{ dag_run.conf['reference'] }}",
        test="{{ dag_run.conf['exported']['seg_path'] }}",
        source_dir="{{ dag_run.conf['received']['series_dir'] }}",
        tolerance_mm=2.0,
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
    )

    @task
    def collect(stats_result, evaluation_result, dag_run=None) -> None:
        """Leave the XComs where the test can read them."""
        import json
        from pathlib import Path

        out = Path(dag_run.conf["workspace_base"]) / "collected.json"
        out.write_text(json.dumps({"stats": stats_result, "evaluation": evaluation_result}))

    collect(stats.output, evaluation.output)
