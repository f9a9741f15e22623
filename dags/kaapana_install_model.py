"""Install an nnU-Net model zip into the model store."""

from airflow_provider_kaapana.dag_factories.install_model import create_install_model_dag

dag = create_install_model_dag()
