"""nnU-Net segmentation: series from the PACS -> NIfTI -> nnU-Net -> DICOM SEG -> PACS -> index.

After the SEG export, the statistics step measures every segment on the source series and writes them
as a DICOM SR (TID 1500 Measurement Report): the SR goes to the PACS like the SEG, the statistics go to
the index on the SEG's series document (``kaapana.segments``).

Input: Series Instance UIDs, or a search-index query/filter with a limit. Each series runs its own
mapped chain (a mapped task group), so one series failing does not stop the others.

Each step stays a task of its own although every task costs a process start and a parse of this file
(see ``docs/guides/benchmarks_e2e.rst``): the steps fail and are retried for different reasons (PACS,
conversion, GPU, PACS store, index), and a merged task would redo the others' work on a retry. What the
parse costs is kept small instead: the nnU-Net pod operator, whose module imports the Kubernetes clients,
is built only where predict may run (:func:`predict_task`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, Param, task_group

from airflow_provider_kaapana.dag_factories.common import (
    UID_ITEMS,
    PipelineSettings,
    StandIn,
    check_run_conf,
    model_param,
    pipeline_dag,
    receive_from_pacs,
    retrieve_method_param,
    runs_in_this_process,
)
from airflow_provider_kaapana.operators.cohort import CohortSelectOperator
from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator
from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator
from airflow_provider_kaapana.operators.segment_statistics import SegmentStatisticsOperator

if TYPE_CHECKING:
    from airflow_provider_kaapana.operators.nnunet_predict import NnUNetPredictOperator

DOC = """
### nnU-Net segmentation

Choose the input by **Series Instance UIDs** *or* by a **search** (filters or a raw query) with a limit.
For every series: retrieve from the PACS, convert to NIfTI, run nnU-Net, export a DICOM SEG, store it
in the PACS, measure every segment (volume, shape, intensities) and store the numbers as a DICOM SR
(TID 1500 Measurement Report) in the PACS, and index the SEG with its statistics. Example conf:

```json
{"identifiers": ["1.2.826.0.1.3680043.8.498.1"], "model": "Dataset901_TinySphere"}
```
"""

# the form's filter fields, each a CohortFilter key of the same name
FILTER_PARAMS = ("modality", "body_part", "description_pattern", "date_from", "date_to")


def input_params() -> dict[str, Param]:
    """The form's "Input data" section: UIDs, or filters / a raw query, and a limit (see :func:`select_series`)."""
    return {
        "identifiers": Param(
            None,
            type=["null", "array"],
            items=UID_ITEMS,
            title="Series Instance UIDs",
            description=(
                "Process these series (one per line; at most `limit` of them). Leave empty to select "
                "by the filters or the raw query below; UIDs, when given, win over both."
            ),
            section="Input data",
        ),
        "modality": Param(
            None,
            type=["null", "string"],
            title="Modality filter",
            description="With no UIDs given: only series of this modality (CT, MR, ...).",
            section="Input data",
        ),
        "body_part": Param(None, type=["null", "string"], title="Body part filter", section="Input data"),
        "description_pattern": Param(
            None,
            type=["null", "string"],
            title="Series description pattern",
            description="Case-insensitive wildcard on SeriesDescription, e.g. *abdomen*.",
            section="Input data",
        ),
        "date_from": Param(
            None, type=["null", "string"], format="date", title="Study date from", section="Input data"
        ),
        "date_to": Param(
            None, type=["null", "string"], format="date", title="Study date to", section="Input data"
        ),
        "query": Param(
            None,
            type=["null", "object"],
            title="Raw search query",
            description='Query DSL (the value of "query"); when given (and no UIDs), the filters above are not used.',
            section="Input data",
        ),
        "limit": Param(
            10,
            type="integer",
            minimum=1,
            maximum=1000,
            title="At most this many series",
            section="Input data",
        ),
    }


def select_series(s: PipelineSettings) -> CohortSelectOperator:
    """UIDs first, else the raw query, else the filters; an empty form fails, no match skips the run."""
    return CohortSelectOperator(
        task_id="select_series",
        identifiers="{{ params.identifiers }}",
        query="{{ params.query }}",
        filters={key: "{{ params." + key + " }}" for key in FILTER_PARAMS},
        index=s.index,
        limit="{{ params.limit }}",
        search_conn_id=s.search_conn_id,
        pacs_conn_id=s.pacs_conn_id,
        require_selection=True,
        skip_if_empty=True,
        pre_execute=check_run_conf,  # unknown conf keys fail the run at once
    )


def seg_send_index(
    prediction: Any, received: Any, s: PipelineSettings, **seg_kwargs: Any
) -> DicomSegExportOperator:
    """A label map (``prediction``: label_map_path, labels_path) -> DICOM SEG -> the PACS; its per-segment
    statistics -> a DICOM SR (TID 1500) -> the PACS, after the SEG; the SEG's series document with the
    statistics (``kaapana.segments``) -> the index."""
    seg = DicomSegExportOperator(
        task_id="seg",
        prediction=prediction,
        source=received,
        workspace_base=s.workspace_base,
        pacs_conn_id=s.pacs_conn_id,  # the Viewer link
        **seg_kwargs,
    )
    send = DicomSendOperator(
        task_id="send", paths=seg.output, pacs_conn_id=s.pacs_conn_id, **s.pacs_task_kwargs()
    )
    stats = SegmentStatisticsOperator(
        task_id="stats",
        segmentation=seg.output,
        source=received,
        sr=True,
        workspace_base=s.workspace_base,
        pacs_conn_id=s.pacs_conn_id,
    )
    # the SR after the SEG: a PACS (and its viewers) gets the referenced object first
    send_sr = DicomSendOperator(
        task_id="send_sr", paths=stats.output, pacs_conn_id=s.pacs_conn_id, **s.pacs_task_kwargs()
    )
    send >> send_sr
    index = ElasticIndexOperator(
        task_id="index",
        series_dirs=stats.output,
        index=s.index,
        search_conn_id=s.search_conn_id,
        pacs_conn_id=s.pacs_conn_id,
        workspace_base=s.workspace_base,
        refresh=True,  # searchable when the run ends, as in the ingest DAG
    )
    seg >> [send, stats]
    stats >> [send_sr, index]
    return seg


PREDICT_TASK_ID = "per_series.predict"


def predict_task(series: Any, s: PipelineSettings) -> NnUNetPredictOperator | StandIn:
    """nnU-Net on the NIfTI step's output (``series``), in ``s.predict_mode``.

    The operator is a KubernetesPodOperator: its module is imported only where the task may run (the
    dag-processor, the predict task's own process); the other tasks' processes get a :class:`StandIn`
    (see :func:`~airflow_provider_kaapana.dag_factories.common.runs_in_this_process`).
    """
    if not runs_in_this_process(PREDICT_TASK_ID):
        return StandIn(task_id="predict", upstream=series)
    from airflow_provider_kaapana.operators.nnunet_predict import NnUNetPredictOperator

    return NnUNetPredictOperator(
        task_id="predict",
        model="{{ params.model }}",
        series=series,
        configuration="{{ params.configuration }}",
        folds="{{ params.folds }}",
        tta="{{ params.tta }}",
        step_size="{{ params.step_size }}",
        mode=s.predict_mode,
        models_dir=s.models_dir,
        workspace_base=s.workspace_base,
        **s.predict_kwargs,
        **s.gpu_task_kwargs(),
    )


def create_segmentation_dag(
    dag_id: str = "kaapana_nnunet_segmentation",
    settings: PipelineSettings | None = None,
    schedule: Any = None,
) -> DAG:
    s = settings or PipelineSettings()
    with pipeline_dag(
        dag_id,
        s,
        tags=["nnunet", "segmentation"],
        description="Segment series with an installed nnU-Net model; DICOM SEG to the PACS and the index",
        doc_md=DOC,
        schedule=schedule,
        max_active_runs=4,
        params={
            **input_params(),
            "model": model_param(s.models_dir),
            "configuration": Param(
                None,
                type=["null", "string"],
                title="nnU-Net configuration",
                description="Empty: 3d_fullres when the model has it, else its only configuration.",
                section="Model",
            ),
            "folds": Param(
                None,
                type=["null", "array"],
                items={"type": ["integer", "string"]},
                title="Folds",
                description="Empty: every fold of the model.",
                section="Model",
            ),
            "tta": Param(True, type="boolean", title="Test-time augmentation (mirroring)", section="Model"),
            "step_size": Param(
                0.5,
                type="number",
                minimum=0.1,
                maximum=1.0,
                title="Sliding-window step size",
                section="Model",
            ),
            "retrieve_method": retrieve_method_param(section="PACS"),
        },
    ) as dag:
        select = select_series(s)

        @task_group(group_id="per_series")
        def per_series(series: dict[str, str]) -> None:
            received = receive_from_pacs(series, s)
            nifti = NiftiConvertOperator(
                task_id="nifti", series=received.output, workspace_base=s.workspace_base
            )
            predict = predict_task(nifti.output, s)
            seg_send_index(
                predict.output,
                received.output,
                s,
                model_id="{{ params.model }}",
                configuration="{{ params.configuration or 'default' }}",
            )

        per_series.expand(series=select.output)
    return dag
