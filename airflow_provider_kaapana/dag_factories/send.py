"""Send series to another PACS: retrieve from our PACS, then C-STORE or STOW-RS to a destination connection."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task, task_group

from airflow_provider_kaapana.core.params import as_list
from airflow_provider_kaapana.dag_factories.common import (
    UID_ITEMS,
    PipelineSettings,
    check_run_conf,
    pipeline_dag,
    receive_from_pacs,
    retrieve_method_param,
    send_method_param,
)
from airflow_provider_kaapana.operators.cohort import find_series_in_pacs
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator

DOC = """
### Send series to another PACS

Retrieves each series from the platform's PACS and sends it to the PACS of the destination connection
(a `kaapana_pacs` connection), verifying afterwards that every instance arrived. Example conf:

```json
{"identifiers": ["1.2.3.4"], "destination_conn_id": "partner_pacs", "send_method": "c-store"}
```
"""


def create_send_dag(dag_id: str = "kaapana_send_series", settings: PipelineSettings | None = None) -> DAG:
    s = settings or PipelineSettings()
    with pipeline_dag(
        dag_id,
        s,
        tags=["pacs"],
        description="Send series from the platform's PACS to another PACS and verify they arrived",
        doc_md=DOC,
        params={
            "identifiers": Param(
                [],
                type="array",
                minItems=1,
                items=UID_ITEMS,
                title="Series Instance UIDs",
            ),
            "destination_conn_id": Param(
                "",
                type="string",
                minLength=1,
                title="Destination PACS connection",
                description="A kaapana_pacs connection id.",
            ),
            "send_method": send_method_param(),
            "retrieve_method": retrieve_method_param(),
            "verify": Param(True, type="boolean", title="Verify by query afterwards"),
        },
    ) as dag:

        @task(pre_execute=check_run_conf)
        def lookup_studies(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
            return find_series_in_pacs(as_list(params["identifiers"]), s.pacs_conn_id)

        @task_group(group_id="per_series")
        def per_series(series: dict[str, str]) -> None:
            received = receive_from_pacs(series, s)
            DicomSendOperator(
                task_id="send",
                paths=received.output,
                method="{{ params.send_method }}",
                pacs_conn_id="{{ params.destination_conn_id }}",
                verify="{{ params.verify }}",
            )

        per_series.expand(series=lookup_studies())
    return dag
