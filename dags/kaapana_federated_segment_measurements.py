"""Coordinator: ask sites for de-identified per-case segment measurements and pool their rows (a federated job)."""

from airflow_provider_kaapana.dag_factories.federation import federated_analysis_dag

dag = federated_analysis_dag("segment_measurements")
