"""Test DAG: DicomSegExportOperator fed by predict/receive-shaped XComs, once plain and once mapped."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator

with DAG(
    "kaapana_test_seg_export",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["kaapana", "test"],
) as dag:

    @task
    def predicted(dag_run=None) -> list[dict]:
        """What the predict step returns, one per series (paths from the run conf)."""
        return dag_run.conf["predictions"]

    @task
    def received(dag_run=None) -> list[dict]:
        """What the receive step returns, one per series."""
        return dag_run.conf["received"]

    @task
    def pair(predictions: list[dict], sources: list[dict]) -> list[dict]:
        return [{"prediction": p, "source": s} for p, s in zip(predictions, sources)]

    single = DicomSegExportOperator(
        task_id="seg_single",
        # a rendered template is text: the operator parses the JSON back (labels_path, series UID)
        prediction="{{ dag_run.conf['predictions'][0] | tojson }}",
        label_map="{{ dag_run.conf['predictions'][0]['label_map_path'] }}",
        source_dir="{{ dag_run.conf['received'][0]['series_dir'] }}",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
        model_id="Dataset001_Test",
        pacs_conn_id="kaapana_test_viewer",  # only its viewer_url: the task's Viewer link
    )
    mapped = DicomSegExportOperator.partial(
        task_id="seg_mapped",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
        model_id="Dataset001_Test",
    ).expand_kwargs(pair(predicted(), received()))

    @task(trigger_rule="all_done")
    def collect(results, single_result, dag_run=None) -> None:
        """Leave the XComs where the test can read them."""
        import json
        from pathlib import Path

        out = Path(dag_run.conf["workspace_base"]) / "collected.json"
        out.write_text(json.dumps({"mapped": [r for r in results if r], "single": single_result}))

    collect(mapped.output, single.output)
