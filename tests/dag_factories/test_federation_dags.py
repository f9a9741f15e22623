"""The federation DAG factories wire the record-level analysis: the site's key connection reaches the
analysis task, and the coordinator's form offers only the quasi-identifiers the analysis releases."""

from __future__ import annotations

from airflow_provider_kaapana.core.federation.measurements import SEGMENT_MEASUREMENTS_V1
from airflow_provider_kaapana.core.federation.statistics import ColumnRole
from airflow_provider_kaapana.dag_factories.federation import (
    FederationSettings,
    federated_analysis_dag,
    federated_site_dag,
)


def test_the_site_dag_hands_its_own_key_connection_to_the_analysis():
    dag = federated_site_dag("segment_measurements", FederationSettings(deid_key_conn_id="site_key"))
    assert dag.dag_id == "kaapana_federated_site_segment_measurements"
    assert dag.get_task("analyse").key_conn_id == "site_key"
    assert federated_site_dag("segment_measurements").get_task("analyse").key_conn_id == "kaapana_deid_key"
    assert "key" not in " ".join(dag.params)  # nothing in the run's conf chooses a key


def test_the_coordinator_form_offers_the_analysis_quasi_identifiers_only():
    dag = federated_analysis_dag("segment_measurements")
    schema = dag.params.get_param("quasi_identifiers").schema
    offered = {c.name for c in SEGMENT_MEASUREMENTS_V1.columns if c.role is ColumnRole.QUASI}
    assert set(schema["items"]["enum"]) == offered
    assert set(dag.params) - {"sites", "k", "site_timeout_seconds"} == set(SEGMENT_MEASUREMENTS_V1.parameters)
