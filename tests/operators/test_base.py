"""The operators' shared base: the run workspace from any context shape, and the hook resolved once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator, run_ids
from airflow_provider_kaapana.operators.cohort import CohortSelectOperator
from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator
from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator
from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator
from airflow_provider_kaapana.operators.nnunet_predict import NnUNetPredictOperator


def test_run_ids_read_the_dag_from_ti_dag_run_or_dag():
    dag = SimpleNamespace(dag_id="d")
    for holder in ("ti", "dag_run", "dag"):
        assert run_ids({holder: dag, "run_id": "manual__1"}) == ("d", "manual__1")
    with pytest.raises(KaapanaError, match="names no DAG"):
        run_ids({"run_id": "manual__1"})


def test_every_operator_shares_the_workspace_and_the_service_ones_the_hook(tmp_path):
    ops = [
        DicomReceiveOperator(task_id="r", series={"study_instance_uid": "1.2"}, workspace_base=str(tmp_path)),
        NiftiConvertOperator(task_id="n", series=str(tmp_path), workspace_base=str(tmp_path)),
        DicomSegExportOperator(task_id="s", workspace_base=str(tmp_path)),
        NnUNetPredictOperator(task_id="p", model="m", mode="local", workspace_base=str(tmp_path)),
    ]
    context = {"dag_run": SimpleNamespace(dag_id="d"), "run_id": "manual__1"}
    for op in ops:
        assert op.run_workspace(context).root == tmp_path / "d" / "manual__1"
    for cls in (DicomReceiveOperator, DicomSendOperator, ElasticIndexOperator, CohortSelectOperator):
        assert issubclass(cls, KaapanaBaseOperator)
        assert cls.get_hook is not KaapanaBaseOperator.get_hook


def test_hook_is_built_once_through_get_hook():
    built = []

    class Probe(KaapanaBaseOperator):
        def get_hook(self):
            built.append(object())
            return built[-1]

    op = Probe(task_id="probe")
    assert op.hook is op.hook is built[0] and len(built) == 1
    with pytest.raises(NotImplementedError, match="no connection"):
        _ = KaapanaBaseOperator(task_id="plain").hook


def test_garbage_booleans_fail_instead_of_meaning_false():
    send = DicomSendOperator(task_id="send", paths=[], verify="none")
    with pytest.raises(ValueError, match="verify"):
        send.execute({})
    predict = NnUNetPredictOperator(task_id="p", model="m", mode="local", tta="maybe")
    with pytest.raises(ValueError, match="tta"):
        predict.predict_arguments("/in", "/out")
    assert "--no-tta" in NnUNetPredictOperator(task_id="q", model="m", tta="off").predict_arguments(
        "/i", "/o"
    )


def test_operators_on_the_base_map_like_any_operator():
    """.partial() takes Airflow's own defaults (inlets=[] ...), not those of BaseOperator's signature."""
    from datetime import datetime

    from airflow.sdk import DAG

    with DAG("kaapana_test_base_mapping", schedule=None, start_date=datetime(2026, 1, 1)):
        seg = DicomSegExportOperator.partial(task_id="seg").expand_kwargs([{"prediction": {}}])
        send = DicomSendOperator.partial(task_id="send").expand(paths=[["/x"]])
    for mapped in (seg, send):
        assert mapped.partial_kwargs["inlets"] == [] and mapped.partial_kwargs["outlets"] == []
