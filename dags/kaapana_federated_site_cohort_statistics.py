"""Site: compute, guard, record and answer one cohort-statistics request of the coordinator."""

from airflow_provider_kaapana.dag_factories.federation import federated_site_dag

dag = federated_site_dag("cohort_statistics")
