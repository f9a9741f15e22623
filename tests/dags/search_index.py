"""Index series given in the run conf, select a cohort from the index, map one task per series."""

from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.cohort import CohortSelectOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator

with DAG(
    "kaapana_search_index_test",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={"series_dirs": [], "index": "kaapana-dicom-test", "modality": "CT"},
    tags=["kaapana", "test"],
) as dag:
    indexed = ElasticIndexOperator(
        task_id="index",
        series_dirs="{{ params.series_dirs }}",
        index="{{ params.index }}",
        search_conn_id="kaapana_search_test",
        fail_on_rejected=True,
    )
    cohort = CohortSelectOperator(
        task_id="cohort",
        index="{{ params.index }}",
        filters={"modality": "{{ params.modality }}"},
        limit=10,
        search_conn_id="kaapana_search_test",
    )

    @task
    def process(series: dict) -> str:
        return series["series_instance_uid"]

    indexed >> cohort
    process.expand(series=cohort.output)
