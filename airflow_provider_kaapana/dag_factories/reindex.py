"""Re-index from the PACS: every series of the studies in a date range (or all) -> search index."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task, task_group

from airflow_provider_kaapana.dag_factories.common import (
    PipelineSettings,
    check_run_conf,
    pipeline_dag,
    receive_from_pacs,
    retrieve_method_param,
)
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator

DOC = """
### Re-index from the PACS

Finds the series of every study whose StudyDate lies in the range (both empty: all studies) by C-FIND,
retrieves each series into the run workspace and (re-)indexes it, with its Viewer link and thumbnail
(as ingest writes them). Documents are keyed by SeriesInstanceUID, so re-indexing replaces, never
duplicates. Example conf:

```json
{"date_from": "2026-01-01", "date_to": "2026-01-31"}
```
"""


def create_reindex_dag(dag_id: str = "kaapana_reindex", settings: PipelineSettings | None = None) -> DAG:
    s = settings or PipelineSettings()
    with pipeline_dag(
        dag_id,
        s,
        tags=["index", "maintenance"],
        description="Re-index the PACS's series (by study date) into the search index",
        doc_md=DOC,
        params={
            "date_from": Param(
                None,
                type=["null", "string"],
                format="date",
                title="Study date from",
                description="Empty: no lower bound (both empty: every study).",
            ),
            "date_to": Param(
                None,
                type=["null", "string"],
                format="date",
                title="Study date to",
                description="Empty: no upper bound.",
            ),
            "limit": Param(1000, type="integer", minimum=1, title="At most this many series"),
            "retrieve_method": retrieve_method_param(),
        },
    ) as dag:

        @task(pre_execute=check_run_conf)
        def find_series(params: dict[str, Any] | None = None) -> list[dict[str, str]]:
            from airflow_provider_kaapana.hooks.pacs import PacsHook

            hook = PacsHook(s.pacs_conn_id)
            date_range = _dicom_date_range(params.get("date_from"), params.get("date_to"))
            query = {"StudyDate": date_range} if date_range else {}
            series: list[dict[str, str]] = []
            for study in hook.find("study", query, ["StudyInstanceUID"]):
                study_uid = str(study.StudyInstanceUID)
                for found in hook.find("series", {"StudyInstanceUID": study_uid}, ["SeriesInstanceUID"]):
                    series.append(
                        {"study_instance_uid": study_uid, "series_instance_uid": str(found.SeriesInstanceUID)}
                    )
            return series[: int(params["limit"])]

        @task_group(group_id="per_series")
        def per_series(series: dict[str, str]) -> None:
            received = receive_from_pacs(series, s)
            # the document as ingest writes it: a re-indexed series keeps its Viewer link and thumbnail
            ElasticIndexOperator(
                task_id="index",
                series_dirs=received.output,
                index=s.index,
                search_conn_id=s.search_conn_id,
                pacs_conn_id=s.pacs_conn_id,
                thumbnails=True,
                workspace_base=s.workspace_base,
            )

        per_series.expand(series=find_series())
    return dag


def _dicom_date_range(date_from: str | None, date_to: str | None) -> str:
    """``YYYY-MM-DD`` bounds as a DICOM range matching value (``20260101-20260131``, open ends allowed)."""
    lo = (date_from or "").replace("-", "")
    hi = (date_to or "").replace("-", "")
    return f"{lo}-{hi}" if (lo or hi) else ""
