"""The DICOM listener (C-STORE SCP): atomic landing zone, series batches, triggering the ingest DAG."""
