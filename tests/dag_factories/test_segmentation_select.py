"""The segmentation DAG's ``select_series`` is CohortSelectOperator: the form's fields, rendered as the
DAG renders them, select by UIDs, else the raw query, else the filters (a fake search client)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_kaapana.core.index.cohort import NOTHING_SELECTED
from airflow_provider_kaapana.dag_factories.common import PipelineSettings, check_run_conf
from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag
from airflow_provider_kaapana.operators.cohort import CohortSelectOperator
from tests.core.test_cohort import FakeClient

FORM = {
    "identifiers": [],
    "modality": None,
    "body_part": None,
    "description_pattern": None,
    "date_from": None,
    "date_to": None,
    "query": None,
    "limit": 10,
}


@pytest.fixture
def select(tmp_path, monkeypatch):
    dag = create_segmentation_dag("test_seg_select", PipelineSettings(models_dir=str(tmp_path / "models")))
    task = dag.get_task("select_series")
    assert isinstance(task, CohortSelectOperator)
    client = FakeClient({"1.2.1": "1.1", "1.2.2": "1.1"})
    looked_up: list[list[str]] = []

    def find_series_in_pacs(uids, pacs_conn_id, also_looked_in=""):
        looked_up.append(uids)
        return [{"series_instance_uid": u, "study_instance_uid": "9.9"} for u in uids]

    monkeypatch.setattr("airflow_provider_kaapana.operators.cohort.find_series_in_pacs", find_series_in_pacs)

    def run(**form):
        op = dag.get_task("select_series").prepare_for_execution()

        def get_conn(hook):
            run.connected += 1
            return client

        op.__dict__["hook"] = type("Hook", (), {"get_conn": get_conn})()
        context = {"params": {**FORM, **form}}
        op.render_template_fields(context)
        return op.execute(context)

    run.client, run.looked_up, run.connected = client, looked_up, 0
    return run


def test_uids_win_in_their_order_and_unknown_ones_are_found_in_the_pacs(select):
    got = select(identifiers=["1.2.2", "1.2.7", "1.2.1"], modality="CT", limit=2)
    assert got == [
        {"series_instance_uid": "1.2.2", "study_instance_uid": "1.1"},
        {"series_instance_uid": "1.2.7", "study_instance_uid": "9.9"},
    ]
    assert select.looked_up == [["1.2.7"]]


def test_query_then_filters_and_the_empty_form(select):
    assert len(select(query={"match_all": {}}, modality="CT")) == 2
    assert select.client.bodies[-1]["query"] == {"match_all": {}}
    select(modality="ct", date_from="2025-01-01", body_part="")
    clauses = select.client.bodies[-1]["query"]["bool"]["filter"]
    assert {"terms": {"kaapana.modality": ["CT"]}} in clauses
    assert {"range": {"StudyDate": {"gte": "2025-01-01"}}} in clauses
    assert not any("BodyPartExamined" in str(c) for c in clauses)  # an empty field is no filter
    connected = select.connected
    with pytest.raises(AirflowFailException, match=NOTHING_SELECTED) as refused:
        select(identifiers=None, modality="")
    assert "identifiers=None" in str(refused.value) and "modality=''" in str(refused.value)
    assert select.connected == connected, "an empty form is refused before connecting to the search server"


def test_nothing_matching_skips(select):
    select.client.series.clear()
    with pytest.raises(AirflowSkipException, match="no series matched"):
        select(modality="MR")


def test_unknown_conf_keys_fail_the_first_task_without_retry():
    dag = create_segmentation_dag("test_seg_conf", PipelineSettings(models_dir="/nonexistent"))
    first = dag.get_task("select_series")
    check = first._pre_execute_hook
    assert check is check_run_conf
    run = type("Run", (), {"conf": {"identifiers": ["1.2.3"], "modle": "x", "lmit": 3}})()
    with pytest.raises(AirflowFailException, match=r"unknown conf key\(s\) 'lmit', 'modle'.*accepts .*model"):
        check({"dag_run": run, "dag": dag})
    check({"dag_run": type("Run", (), {"conf": {"identifiers": ["1.2.3"], "model": "x"}})(), "dag": dag})


def test_optional_inputs_are_nullable_so_the_form_marks_no_star(tmp_path):
    """The Airflow 3 form marks a field required (*) when its type does not allow null."""
    dag = create_segmentation_dag("test_seg_form", PipelineSettings(models_dir=str(tmp_path)))
    schema = {name: param.schema for name, param in dag.params.items()}
    for optional in ("identifiers", "modality", "query", "configuration", "folds", "date_from"):
        assert "null" in schema[optional]["type"], optional
    assert "null" not in schema["model"]["type"]  # required: there is no default model
    assert "No model is installed in" in dag.params.get_param("model").description


def test_model_field_lists_installed_models_without_opening_a_file(tmp_path, monkeypatch):
    for dataset in ("Dataset902_Liver", "Dataset901_TinySphere"):
        trainer = tmp_path / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        trainer.mkdir(parents=True)
        (trainer / "plans.json").write_text("{}")
    (tmp_path / "Dataset903_Empty").mkdir()  # no trainer folder: not a model
    import builtins
    import io

    def no_open(*args, **kwargs):
        raise AssertionError(f"file opened while building the DAG: {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr(io, "open", no_open)
    dag = create_segmentation_dag("test_seg_models", PipelineSettings(models_dir=str(tmp_path)))
    monkeypatch.undo()
    model = dag.params.get_param("model")
    assert model.schema["enum"] == ["Dataset901_TinySphere", "Dataset902_Liver"]
    assert model.value == "Dataset901_TinySphere"
