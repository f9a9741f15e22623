"""Airflow-free core: DICOM metadata, networking, NIfTI, SEG and the nnU-Net runner. Never imports Airflow."""
