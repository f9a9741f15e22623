"""Scale-out settings in the DAG factories: predict on the gpu queue and pool, PACS sends in their pool."""

from __future__ import annotations

import dataclasses

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag
from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag


def _scale_out(**more: str) -> PipelineSettings:
    return PipelineSettings(gpu_queue="gpu", gpu_pool="kaapana_gpu", pacs_pool="kaapana_pacs", **more)


def test_segmentation_predict_on_gpu_queue_and_pool(tmp_path):
    dag = create_segmentation_dag(settings=_scale_out(models_dir=str(tmp_path)))
    predict = dag.get_task("per_series.predict")
    assert (predict.queue, predict.pool) == ("gpu", "kaapana_gpu")
    for task_id in ("per_series.send", "per_series.send_sr"):
        assert dag.get_task(task_id).pool == "kaapana_pacs"
    # I/O tasks stay on the default queue and pool
    nifti = dag.get_task("per_series.nifti")
    assert nifti.queue != "gpu" and nifti.pool == "default_pool"


def test_ingest_store_in_pacs_pool():
    dag = create_ingest_dag(settings=_scale_out())
    assert dag.get_task("store").pool == "kaapana_pacs"
    assert dag.get_task("index").pool == "default_pool"


def test_defaults_leave_queue_and_pool_alone(tmp_path):
    settings = PipelineSettings(models_dir=str(tmp_path))
    assert {f.name for f in dataclasses.fields(settings)} >= {"gpu_queue", "gpu_pool", "pacs_pool"}
    predict = create_segmentation_dag(settings=settings).get_task("per_series.predict")
    assert predict.pool == "default_pool" and predict.queue != "gpu"
