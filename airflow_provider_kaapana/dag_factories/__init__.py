"""DAG factories; the files in the top-level ``dags/`` folder call these with defaults."""
