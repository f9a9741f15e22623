"""Coordinator: ask sites for per-label segment volumes and intensities and pool them (a federated job)."""

from airflow_provider_kaapana.dag_factories.federation import federated_analysis_dag

dag = federated_analysis_dag("segmentation_statistics")
