"""Site: compute, guard, record and answer one segment-measurements request of the coordinator."""

from airflow_provider_kaapana.dag_factories.federation import federated_site_dag

dag = federated_site_dag("segment_measurements")
