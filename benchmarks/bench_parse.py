"""What a task process pays to parse its DAG file: each shipped DAG file, parsed as a task's process does.

Like a LocalExecutor worker, this process imports Airflow's task runner once, then forks one child per
parse; the child sets Airflow's parsing context (the DAG and task it runs) and parses the file. Printed:
the best of ``--repeat`` wall times per file, and for the segmentation DAG the parse for a task other
than predict (the pod operator replaced by a stand-in) next to the parse for predict itself (the pod
operator, imports of the Kubernetes clients included: what every task paid before issue 20), as a ratio
measured in the same run.

    python benchmarks/bench_parse.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"


def parse_seconds(path: Path, task_id: str | None) -> float:
    """Wall time of one parse in a forked child (the child's own clock, sent back through a pipe)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if task_id is not None:
            os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = path.stem
            os.environ["_AIRFLOW_PARSING_CONTEXT_TASK_ID"] = task_id
        start = time.perf_counter()
        runpy.run_path(str(path), run_name="dag_file")
        os.write(write, f"{time.perf_counter() - start}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not text:
        raise RuntimeError(f"parsing {path.name} for {task_id} failed (status {status})")
    return float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import airflow.sdk.execution_time.task_runner  # noqa: F401 - what the worker has before it forks

    segmentation = DAGS / "kaapana_nnunet_segmentation.py"
    jobs: list[tuple[str, Path, str | None]] = [
        (f"{p.stem} (a task)", p, "per_series.receive")
        for p in sorted(DAGS.glob("kaapana_*.py"))
        if p != segmentation
    ]
    jobs += [
        ("kaapana_nnunet_segmentation (a task but predict)", segmentation, "per_series.seg"),
        ("kaapana_nnunet_segmentation (predict; before: every task)", segmentation, "per_series.predict"),
    ]
    best = {name: float("inf") for name, _, _ in jobs}
    for _ in range(args.repeat):  # interleaved, so load changes hit every file alike
        for name, path, task_id in jobs:
            best[name] = min(best[name], parse_seconds(path, task_id))
    print(f"DAG file parse in a task process, best of {args.repeat} (load average {os.getloadavg()[0]:.1f}):")
    for name, seconds in best.items():
        print(f"  {seconds:6.2f} s  {name}")
    task, predict = best[jobs[-2][0]], best[jobs[-1][0]]
    ingest = best["kaapana_ingest (a task)"]
    print(f"segmentation task parse / before (pod operator in every task) = {task / predict:.2f}")
    print(f"segmentation task parse / ingest task parse = {task / ingest:.2f}")
    from airflow_provider_kaapana.testing.benchresult import print_result

    print_result(
        "parse",
        "s, segmentation task's DAG parse",
        task,
        predict,
        "the same with the pod operator (every task before)",
        "faster than before",
        task < predict,
        higher_is_better=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
