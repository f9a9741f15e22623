"""The segmentation DAG's ``select_series`` is CohortSelectOperator: the form's fields, rendered as the
DAG renders them, select by UIDs, else the raw query, else the filters (a fake search client)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_kaapana.core.index.cohort import NOTHING_SELECTED
from airflow_provider_kaapana.dag_factories.common import PipelineSettings
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
        op.__dict__["hook"] = type("Hook", (), {"get_conn": lambda self: client})()
        context = {"params": {**FORM, **form}}
        op.render_template_fields(context)
        return op.execute(context)

    run.client, run.looked_up = client, looked_up
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
    with pytest.raises(ValueError, match=NOTHING_SELECTED):
        select()


def test_nothing_matching_skips(select):
    select.client.series.clear()
    with pytest.raises(AirflowSkipException, match="no series matched"):
        select(modality="MR")
