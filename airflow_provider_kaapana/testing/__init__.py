"""The harness for tests, the demo and the benchmarks: local services, a local Airflow, synthetic series,
a tiny nnU-Net model, the demo. Production code (core, hooks, operators) never imports it."""
