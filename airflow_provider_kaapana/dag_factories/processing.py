"""Bring-your-own-algorithm DAGs: one per installed manifest, built from the segmentation DAG's steps.

select series (the same form and task as segmentation) -> per series: retrieve -> [NIfTI] -> the
algorithm (:class:`~airflow_provider_kaapana.operators.container_processing.ContainerProcessingOperator`)
-> its outputs: a label map to SEG -> PACS + index, measurements -> index, DICOM files -> PACS + index.
The form gets one field per manifest parameter (title, enum, section...).

:func:`algorithm_dag` is what a generated DAG file calls (``kaapana algorithms install --dags-folder``):
it reads one manifest from the local algorithms folder (``[kaapana] algorithms_dir`` in the Airflow
config, else ``$KAAPANA_ALGORITHMS_DIR``) and raises a :class:`ManifestError` naming the manifest file
and field when it is broken, so Airflow reports an import error for that DAG file only.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task_group

from airflow_provider_kaapana.core.algorithms.manifest import Manifest, load_manifest
from airflow_provider_kaapana.core.algorithms.manifest import algorithms_dir as resolve_algorithms_dir
from airflow_provider_kaapana.dag_factories.common import (
    PipelineSettings,
    pipeline_dag,
    receive_from_pacs,
    retrieve_method_param,
)
from airflow_provider_kaapana.dag_factories.segmentation import input_params, seg_send_index, select_series
from airflow_provider_kaapana.operators.container_processing import (
    ContainerProcessingOperator,
    MeasurementsIndexOperator,
)
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator
from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator

ALGORITHM_SECTION = "Algorithm"


def algorithm_params(manifest: Manifest, taken: set[str]) -> dict[str, Param]:
    """The manifest's parameters as form fields; a name the form already uses is refused by name."""
    params: dict[str, Param] = {}
    for name, schema in manifest.parameters.items():
        if name in taken:
            raise ValueError(
                f"algorithm {manifest.name}: parameter {name!r} clashes with the input form's field of that name"
            )
        schema = dict(schema)
        default = schema.pop("default", None)
        schema.setdefault("title", name)
        schema.setdefault("section", ALGORITHM_SECTION)
        params[name] = Param(default, **schema)
    return params


def _doc(manifest: Manifest) -> str:
    outputs = ", ".join(o.kind for o in manifest.outputs)
    return (
        f"### {manifest.title} ({manifest.name} {manifest.version})\n\n"
        f"{manifest.data.get('description', '')}\n\n"
        f"Image `{manifest.image}`; input {manifest.input_format}"
        f"{' (' + ', '.join(manifest.inputs['modality']) + ')' if manifest.inputs.get('modality') else ''}; "
        f"outputs: {outputs}. Choose the series by UIDs or by a search, as for nnU-Net segmentation."
    )


def create_processing_dag(
    manifest: Manifest,
    settings: PipelineSettings | None = None,
    dag_id: str | None = None,
    schedule: Any = None,
) -> DAG:
    """The DAG of one algorithm: the segmentation DAG's selection and steps around its container."""
    s = settings or PipelineSettings()
    form = {**input_params(), "retrieve_method": retrieve_method_param(section="PACS")}
    modalities = manifest.inputs.get("modality") or []
    if len(modalities) == 1:  # the algorithm takes one modality: the search filters by it by default
        form["modality"] = Param(modalities[0], **{**form["modality"].schema, "title": "Modality filter"})
    form.update(algorithm_params(manifest, set(form)))
    with pipeline_dag(
        dag_id or manifest.dag_id,
        s,
        tags=["algorithm", manifest.name],
        description=f"{manifest.title} {manifest.version} (algorithm container): results to the PACS and the index"[
            :200
        ],
        doc_md=_doc(manifest),
        schedule=schedule,
        max_active_runs=4,
        params=form,
    ) as dag:
        select = select_series(s)

        @task_group(group_id="per_series")
        def per_series(series: dict[str, str]) -> None:
            received = receive_from_pacs(series, s)
            upstream: Any = received
            if manifest.input_format == "nifti":
                upstream = NiftiConvertOperator(
                    task_id="nifti", series=received.output, workspace_base=s.workspace_base
                )
            process = ContainerProcessingOperator(
                task_id="process",
                manifest=manifest,
                series=upstream.output,
                source=received.output,
                params_values={name: "{{ params." + name + " }}" for name in manifest.parameters},
                mode=s.predict_mode,
                workspace_base=s.workspace_base,
                # an algorithm that asks for a GPU runs on the GPU queue and pool (scale-out settings)
                **(s.gpu_task_kwargs() if manifest.resources.get("gpus") else {}),
                **s.predict_kwargs,
            )
            if manifest.output("segmentation"):
                seg_send_index(
                    process.output,
                    received.output,
                    s,
                    model_id=manifest.name,
                    configuration=manifest.version,
                    algorithm_name=manifest.title,
                    algorithm_version=manifest.version,
                    algorithm_family="ArtificialIntelligence",
                )
            if manifest.output("measurements"):
                MeasurementsIndexOperator(
                    task_id="measurements_index",
                    processing=process.output,
                    source=received.output,
                    index=s.index,
                    search_conn_id=s.search_conn_id,
                )
            if manifest.output("dicom"):
                dicom_dir = process.output["dicom_dir"]
                DicomSendOperator(task_id="send_dicom", paths=dicom_dir, pacs_conn_id=s.pacs_conn_id)
                ElasticIndexOperator(
                    task_id="index_dicom",
                    series_dirs=dicom_dir,
                    index=s.index,
                    search_conn_id=s.search_conn_id,
                )

        per_series.expand(series=select.output)
    return dag


def configured_algorithms_dir() -> str | None:
    """``[kaapana] algorithms_dir`` of the Airflow config (read from memory: no I/O), if set."""
    from airflow.configuration import conf

    return conf.get("kaapana", "algorithms_dir", fallback=None) or None


def algorithm_dag(
    name: str, settings: PipelineSettings | None = None, algorithms_dir: str | None = None
) -> DAG:
    """The DAG of the installed algorithm ``name`` (what a generated DAG file calls).

    The folder: ``algorithms_dir`` when the file names one, else ``[kaapana] algorithms_dir``, else
    ``$KAAPANA_ALGORITHMS_DIR``, else ``/algorithms``.
    """
    manifest = load_manifest(resolve_algorithms_dir(algorithms_dir or configured_algorithms_dir()) / name)
    return create_processing_dag(manifest, settings)
