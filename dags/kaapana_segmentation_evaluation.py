"""Evaluate test segmentations against reference segmentations (pairs of SEG series in the PACS)."""

from airflow_provider_kaapana.dag_factories.evaluation import create_segmentation_evaluation_dag

dag = create_segmentation_evaluation_dag()
