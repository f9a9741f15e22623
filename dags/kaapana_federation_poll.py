"""Site: poll the coordinator for jobs; refuse by policy or start the local analysis run."""

from airflow_provider_kaapana.dag_factories.federation import federation_poll_dag

dag = federation_poll_dag()
