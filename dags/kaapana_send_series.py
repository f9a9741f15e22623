"""Send series from the platform's PACS to another PACS."""

from airflow_provider_kaapana.dag_factories.send import create_send_dag

dag = create_send_dag()
