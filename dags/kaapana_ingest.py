"""Incoming DICOM -> PACS + search index (triggered by `kaapana listen`)."""

from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag

dag = create_ingest_dag()
