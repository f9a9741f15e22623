"""Daily clean-up of old run workspaces (see airflow_provider_kaapana.dag_factories.cleanup)."""

from airflow_provider_kaapana.dag_factories.cleanup import create_cleanup_dag

dag = create_cleanup_dag()
