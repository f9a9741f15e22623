"""Test DAGs for the PACS operators: PACS -> workspace -> PACS, and landing zone -> workspace -> PACS.

Everything comes from the run conf (nothing read at parse time): ``series`` (list of UID dicts),
``method``, ``send_method``, ``workspace_base``.
"""

from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator

with DAG("kaapana_test_dicom_io", schedule=None, catchup=False, tags=["kaapana", "test"]) as dicom_io:

    @task
    def cohort(**context) -> list[dict]:
        return list(context["dag_run"].conf["series"])

    received = DicomReceiveOperator.partial(
        task_id="receive",
        method="{{ dag_run.conf.get('method', 'c-get') }}",
        pacs_conn_id="kaapana_test_source",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
    ).expand(series=cohort())

    DicomSendOperator.partial(
        task_id="send",
        method="{{ dag_run.conf.get('send_method', 'stow-rs') }}",
        pacs_conn_id="kaapana_test_target",
        verify=True,
    ).expand(paths=received.output)


with DAG(
    "kaapana_test_dicom_landing", schedule=None, catchup=False, tags=["kaapana", "test"]
) as dicom_landing:
    from_landing = DicomReceiveOperator(
        task_id="receive",
        landing_conf="{{ dag_run.conf }}",
        workspace_base="{{ dag_run.conf['workspace_base'] }}",
    )
    DicomSendOperator(
        task_id="send",
        paths=from_landing.output,
        method="c-store",
        pacs_conn_id="kaapana_test_target",
        verify=True,
    )
