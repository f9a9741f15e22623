"""Re-index series from the PACS (date range or all)."""

from airflow_provider_kaapana.dag_factories.reindex import create_reindex_dag

dag = create_reindex_dag()
