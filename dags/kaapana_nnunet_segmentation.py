"""Segment a cohort with nnU-Net; DICOM SEG back to the PACS and into the index."""

from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag

dag = create_segmentation_dag()
