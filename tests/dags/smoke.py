"""A two-task DAG the foundation test runs with dag.test() against the migrated metadata DB."""

from __future__ import annotations

from airflow.sdk import DAG, task

with DAG("kaapana_foundation_smoke", schedule=None, catchup=False, tags=["kaapana", "test"]) as dag:

    @task
    def produce() -> int:
        return 41

    @task
    def consume(value: int) -> int:
        return value + 1

    consume(produce())
