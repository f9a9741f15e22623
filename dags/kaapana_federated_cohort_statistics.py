"""Coordinator: ask sites for their cohort statistics and pool them (a federated analysis job)."""

from airflow_provider_kaapana.dag_factories.federation import federated_analysis_dag

dag = federated_analysis_dag("cohort_statistics")
