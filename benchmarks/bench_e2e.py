"""End to end: one synthetic CT series from C-STORE to an indexed DICOM SEG, per-step times and overhead.

Runs the demo pipeline (local Orthanc, osmem, Airflow with the LocalExecutor, the listener, the tiny
nnU-Net model on CPU) and prints each step, each task's own run time, and the overhead:
``overhead = total - predict``, where total runs from the first C-STORE to the SEG being found in the PACS
and the index, and predict is the nnU-Net task's own duration. Goal: overhead <= 30 s on this machine.

    python benchmarks/bench_e2e.py [--postgres]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

PIPELINE_STEPS = ("C-STORE", "ingest DAG", "segmentation DAG", "locate the SEG")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="Airflow on a fresh PostgreSQL database")
    args = parser.parse_args()

    from airflow_provider_kaapana.testing.benchresult import print_result
    from airflow_provider_kaapana.testing.demo import SEGMENTATION_DAG, run_demo
    from airflow_provider_kaapana.testing.local_airflow import (
        create_postgres_database,
        drop_postgres_database,
    )

    db_url = create_postgres_database() if args.postgres else None
    try:
        with tempfile.TemporaryDirectory(prefix="kaapana-bench-e2e-") as tmp:
            result = run_demo(Path(tmp) / "demo", db_url=db_url)
    finally:
        if db_url:
            drop_postgres_database(db_url)

    print("\nsteps:")
    for name, seconds in result.steps:
        print(f"  {seconds:7.1f} s  {name}")
    print("\ntask run times (s):")
    for dag_id, tasks in result.task_durations.items():
        for task_id, seconds in sorted(tasks.items()):
            print(f"  {seconds:7.1f} s  {dag_id}.{task_id}")
    total = sum(s for name, s in result.steps if name.startswith(PIPELINE_STEPS))
    predict = result.task_durations[SEGMENTATION_DAG].get("per_series.predict[0]", 0.0)
    task_sum = sum(sum(t.values()) for t in result.task_durations.values())
    print(f"\ntotal (C-STORE -> SEG located) {total:.1f} s")
    print(f"predict (nnU-Net task)          {predict:.1f} s")
    print(f"overhead = total - predict      {total - predict:.1f} s  (goal <= 30 s)")
    print_result(
        "e2e", "overhead s (total - predict)", total - predict, None, None, "<= 30 s", total - predict <= 30
    )
    print(
        f"  of which other tasks' own run time {task_sum - predict:.1f} s; scheduling/process start the rest"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
