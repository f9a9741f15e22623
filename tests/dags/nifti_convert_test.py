"""Test DAG: NiftiConvertOperator on a list of received series, plainly and through dynamic task mapping.

``dag_run.conf``: ``series`` (the receive operator's XCom list), ``workspace_base``, ``report`` (a JSON file
the last task writes the XComs to, for the test to read).
"""

from __future__ import annotations

import json

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator

with DAG(
    "kaapana_test_nifti_convert",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    tags=["kaapana", "test"],
) as dag:
    all_series = NiftiConvertOperator(
        task_id="nifti",
        series="{{ dag_run.conf['series'] }}",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
    )

    @task
    def series_list(params=None, dag_run=None) -> list:
        return dag_run.conf["series"]

    mapped = NiftiConvertOperator.partial(
        task_id="nifti_mapped",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
        channel_suffix="_0001",
    ).expand(series=series_list())

    @task
    def report(plain, per_series, dag_run=None) -> None:
        with open(dag_run.conf["report"], "w") as fh:
            json.dump({"plain": plain, "mapped": list(per_series)}, fh)

    report(all_series.output, mapped.output)
