"""Ingest: a received series (listener-triggered, or by hand with a path) -> validate -> PACS + index.

The listener triggers one run per batch of a series with a conf naming the batch (see
:func:`airflow_provider_kaapana.core.listener.server.read_batch_files`), or, under a burst, one run for
several batches of distinct series (conf ``{"batches": [...]}``). The landing-zone files of a batch are
removed only after both the PACS store and the indexing succeeded (by ``report``, the last task). Invalid files are set aside in the
run workspace (so they are neither stored nor indexed) and stay in the landing zone, never deleted.
The work of each task is in :mod:`airflow_provider_kaapana.core.ingest`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaapana.core import ingest
from airflow_provider_kaapana.core.listener.server import LISTENER_CONF_KEYS
from airflow_provider_kaapana.core.net.send import SEND_METHODS
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.core.workspace import run_workspace
from airflow_provider_kaapana.dag_factories.common import PipelineSettings, check_run_conf, pipeline_dag
from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator

DOC = """
### Ingest

Triggered by the DICOM listener (`kaapana listen`) when a series has been quiet for its quiet period
(under a burst, one run for up to `--max-series-per-run` series: conf `{"batches": [...]}`, each
batch handled as if alone: stored, indexed, cleared from the landing zone, its bad files set aside),
or by hand with the path of a folder or of CD/DVD media (DICOMDIR): every series in it is ingested.
Validates the instances, stores them in the PACS, indexes the series, then removes the batch from the
landing zone. Files that are not valid DICOM of the series are set aside (kept in the landing zone,
copied to the run's `.invalid` folder): the good files are stored and indexed all the same, and the
last task, `report`, then **fails** with "N stored, M quarantined (where, why)", so the run shows as
failed until someone looks. A series of a several-batch run with no valid file at all is left out
(the others are ingested) and reported the same way. Example manual conf:

```json
{"series_dir": "/data/kaapana/landing/1.2.3/1.2.3.4"}
```
"""


def create_ingest_dag(
    dag_id: str = "kaapana_ingest",
    settings: PipelineSettings | None = None,
    send_method: str = "c-store",
) -> DAG:
    s = settings or PipelineSettings()
    if send_method not in SEND_METHODS:
        raise ValueError(f"send_method must be one of {list(SEND_METHODS)}")
    with pipeline_dag(
        dag_id,
        s,
        tags=["ingest"],
        description="Store a received series in the PACS and index it (triggered by the DICOM listener)",
        doc_md=DOC,
        max_active_runs=16,
        params={
            "series_dir": Param(
                None,
                type=["null", "string"],
                title="Series folder",
                description=(
                    "Folder holding the DICOM files of one series (the listener fills this in). By hand: "
                    "any folder (files of any name, subfolders) or CD/DVD media with a DICOMDIR; every "
                    "series in it is ingested. Give this or listener batches: a run with neither fails "
                    "at once."
                ),
            ),
            "batches": Param(
                None,
                type=["null", "array"],
                items={"type": "object"},
                title="Listener batches",
                description=(
                    "Filled in by the listener when it announces several series in one run (one batch "
                    "conf each); leave empty for a run by hand."
                ),
            ),
            "keep_landing_files": Param(
                False,
                type="boolean",
                title="Keep the landing-zone files",
                description=(
                    "Listener runs: do not remove the batch's files after they were stored and indexed. "
                    "Runs by hand never remove anything."
                ),
            ),
        },
    ) as dag:
        # receive + validate in one task: both local and deterministic, on the same files (a retry
        # links the landing files again and validates again: the same result)
        valid = DicomReceiveOperator(
            task_id="receive",
            landing_conf="{{ dag_run.conf }}",
            workspace_base=s.workspace_base,
            validate=True,
            # unknown conf keys fail the run at once; the listener's batch keys are known
            pre_execute=partial(check_run_conf, also_accepted=LISTENER_CONF_KEYS),
        ).output
        store = DicomSendOperator(
            task_id="store",
            paths=valid,
            method=send_method,
            pacs_conn_id=s.pacs_conn_id,
            **s.pacs_task_kwargs(),
        )
        # A series the listener announces in several batches (late arrivals) is one document:
        # each batch's instances are merged into it, not put in its place.
        index = ElasticIndexOperator(
            task_id="index",
            series_dirs=valid,
            index=s.index,
            search_conn_id=s.search_conn_id,
            # parallel runs of one series: each write is conditional on the version it merged with,
            # and merged again when another run wrote first (optimistic concurrency, see index_series)
            merge_instances=True,
            pacs_conn_id=s.pacs_conn_id,  # its viewer_url template: kaapana.viewer_url, the Viewer link
            thumbnails=True,
            workspace_base=s.workspace_base,
            # searchable when the run ends (a segmentation may select it next) without waiting up to a
            # refresh_interval: one small refresh per run, a few runs a minute even under a burst
            refresh=True,
        )

        @task
        def report(
            validated: list[dict[str, Any]],
            indexed: dict[str, Any] | None = None,
            dag_run=None,
            ti=None,
            params: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            """Only after store and index succeeded (the default trigger rule): clears the batch's valid
            files from the landing zone, then ``N stored, M quarantined (where, why)``; fails (no retry)
            when any file was set aside.

            A file is deleted only when it validated and is still the very file this run stored (a
            modality may resend an instance under the same name meanwhile); anything else stays in the
            landing zone, so nothing received is ever lost. The task runs last, after the good files were
            stored, indexed and cleared: a failed ``report`` (and so a failed run) says "look at the
            quarantine", never that the good files were lost. The summary (with ``removed_from_landing``)
            is the task's XCom ``summary`` either way; ``report.html`` in the run workspace shows it with
            each series' thumbnail and viewer link.
            """
            conf = dict(dag_run.conf or {}) if dag_run is not None else {}
            keep = parse_bool((params or {}).get("keep_landing_files"), "keep_landing_files", default=False)
            removed = ingest.remove_from_landing(conf, validated, keep=keep)
            rejected = (ti.xcom_pull(task_ids="receive", key="rejected") if ti is not None else None) or []
            summary = ingest.ingest_summary([*validated, *rejected], conf)
            summary["removed_from_landing"] = removed
            if dag_run is not None:
                workspace = run_workspace(s.workspace_base, dag_run.dag_id, dag_run.run_id)
                summary["report_html"] = str(
                    ingest.write_report_html(summary, validated, indexed, workspace.root)
                )
            if summary["quarantined"]:
                if ti is not None:
                    ti.xcom_push(key="summary", value=summary)
                raise AirflowFailException(f"ingest: {summary['message']}")
            return summary

        [store, index] >> report(valid, index.output)
    return dag
