"""Load: S series x I instances from K concurrent ``storescu`` senders -> listener -> ingest -> PACS + index.

Runs :func:`airflow_provider_kaapana.testing.load.run_load` once per executor (LocalExecutor, and the
CeleryExecutor with two workers on Redis), each on its own fresh PostgreSQL database, and measures
until every series is in the PACS and the index: drain time (first C-STORE -> all there), p50/p95 from
a series' last instance to its document being searchable, instances lost and documents or PACS
instances duplicated (both must be 0). Goal on the 2-core CI machine: 200 series x 32 instances from 4
senders drained in <= 5 minutes with 0 lost and 0 duplicated.

    python benchmarks/bench_load.py [--executor local,celery] [--series 20] [--instances 4] [--senders 3]

Prints per executor a detail line (``detail: executor=... instances=... senders=... runs=...``), the goal
line (``goal: ... met`` / ``NOT met`` at ``--series 200 --instances 32 --senders 4``; at another size it
says so instead of judging) and the ``RESULT`` lines, and ends with exactly one line per executor:
``executor=<name> series=<S> lost=<N> duplicated=<M> drain_s=<x> p95_s=<y>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

GOAL_SERIES, GOAL_INSTANCES, GOAL_SENDERS, GOAL_DRAIN_S = 200, 32, 4, 300.0


def goal_line(result) -> str:
    """Issue 16's goal, judged on ``result`` (a LoadResult) when it ran at the goal's size."""
    goal = (
        f"goal: {GOAL_SERIES} series x {GOAL_INSTANCES} instances from {GOAL_SENDERS} senders drained in "
        f"<= {GOAL_DRAIN_S:.0f} s, 0 lost, 0 duplicated"
    )
    if (result.series, result.instances, result.senders) != (GOAL_SERIES, GOAL_INSTANCES, GOAL_SENDERS):
        return f"{goal}: not judged ({result.executor} ran {result.series}x{result.instances}, {result.senders} senders)"
    met = result.drain_s <= GOAL_DRAIN_S and result.lost == 0 and result.duplicated == 0
    return (
        f"{goal}: {'met' if met else 'NOT met'} ({result.executor}: drain {result.drain_s:.1f} s, "
        f"p95 {result.percentile(95):.1f} s, lost {result.lost}, duplicated {result.duplicated})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--executor", default="local,celery", help="local, celery or both comma-separated (default both)"
    )
    parser.add_argument("--series", type=int, default=20, help="series S (default 20)")
    parser.add_argument("--instances", type=int, default=4, help="instances per series I (default 4)")
    parser.add_argument("--senders", type=int, default=3, help="concurrent storescu senders K (default 3)")
    parser.add_argument("--pixels", type=int, default=8, help="rows = columns of each slice (default 8)")
    parser.add_argument(
        "--max-series-per-run",
        type=int,
        default=32,
        help="the listener's burst batching: series per ingest run (default 32; 1: one run per series)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the drain")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the work folders here")
    args = parser.parse_args()
    executors = [e.strip() for e in args.executor.split(",") if e.strip()]
    if not executors or any(e not in ("local", "celery") for e in executors):
        parser.error("--executor takes local, celery or local,celery")

    from airflow_provider_kaapana.testing.benchresult import print_result
    from airflow_provider_kaapana.testing.load import run_load

    lines, details, goals, results = [], [], [], []
    failed = False
    with tempfile.TemporaryDirectory(prefix="kaapana-bench-load-") as tmp:
        root = args.workdir or Path(tmp)
        for executor in executors:
            result = run_load(
                root / executor,
                executor=executor,
                series=args.series,
                instances=args.instances,
                senders=args.senders,
                pixels=args.pixels,
                timeout=args.timeout,
                max_series_per_run=args.max_series_per_run,
                out=sys.stdout,
            )
            for problem in result.problems[:20]:
                print(f"  problem: {problem}")
            if result.failed_runs:
                print(f"  failed ingest runs: {result.failed_runs[:10]}")
            failed |= bool(result.lost or result.duplicated or result.failed_runs)
            lines.append(result.line())
            details.append(result.detail_line())
            goals.append(goal_line(result))
            ok = not (result.lost or result.duplicated or result.failed_runs)
            met = ok and result.drain_s <= GOAL_DRAIN_S
            results.append(
                (
                    f"drain s, {executor}, {args.series}x{args.instances} from {args.senders}",
                    result.drain_s,
                    met,
                )
            )
    print()
    for line in details + goals:
        print(line)
    for measure, drain_s, met in results:
        print_result("load", measure, drain_s, None, None, f"<= {GOAL_DRAIN_S:.0f} s, 0 lost/duplicated", met)
    # the format, last: one line per executor
    for line in lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
