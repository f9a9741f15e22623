"""Federation overhead: one cohort-statistics job between a local coordinator and three local sites.

Starts the federated sandbox (4 real Airflows, LocalExecutor on PostgreSQL when it answers, else SQLite;
one osmem-server per site), triggers one job and reads every timestamp over REST afterwards:

    overhead = (trigger -> report written) - (slowest site's local analysis time)

where a site's local analysis time is its ``analyse`` task's own duration (index query, statistics,
egress guard). Goal: overhead <= 20 s on this machine. The parts show where the rest goes: planning,
the poll interval, starting the site's run, its tasks, the coordinator resuming and aggregating.

    python benchmarks/bench_federated.py [--poll-interval 3] [--poll-window 60] [--runs 3] [--sqlite]

A warm-up job runs first and is shown but not counted: right after start-up each Airflow's first
task processes are slow (seconds of imports on a machine busy starting three more Airflows).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import tempfile
import time
from pathlib import Path


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure(sandbox, run_id: str, triggered: float) -> dict[str, float]:
    from airflow_provider_kaapana.testing.federated_sandbox import COORDINATOR_DAG, SITE_DAG

    coordinator = sandbox.coordinator
    tis = coordinator.task_instances(COORDINATOR_DAG, run_id)
    report_written = (sandbox.report_dir(run_id) / "report.json").stat().st_mtime
    details = coordinator.api(
        "GET", "dags/~/dagRuns/~/hitlDetails", params={"dag_id_pattern": COORDINATOR_DAG, "limit": 100}
    ).json()["hitl_details"]
    details = [d for d in details if d["task_instance"]["dag_run_id"] == run_id]
    created = min(_ts(d["created_at"]) for d in details)
    responded = max(_ts(d["responded_at"]) for d in details if d.get("responded_at"))
    site_parts: dict[str, dict[str, float]] = {}
    for name, site in sandbox.sites.items():
        if site.airflow is None:
            continue
        local = sandbox.local_run(name, run_id, timeout=5)
        run = site.airflow.api("GET", f"dags/{SITE_DAG}/dagRuns/{local}").json()
        site_tis = site.airflow.task_instances(SITE_DAG, local)
        site_parts[name] = {
            "local_run_start": _ts(run["start_date"]) or 0.0,
            "local_run_end": _ts(run["end_date"]) or 0.0,
            "analyse": float(site_tis["analyse"]["duration"] or 0.0),
            "respond_end": _ts(site_tis["respond"]["end_date"]) or 0.0,
        }
    slowest = max(p["analyse"] for p in site_parts.values())
    total = report_written - triggered
    return {
        "total (trigger -> report written)": total,
        "slowest site's analyse task": slowest,
        "overhead": total - slowest,
        "  trigger -> plan done": _ts(tis["plan"]["end_date"]) - triggered,
        "  plan done -> requests parked (first)": created - _ts(tis["plan"]["end_date"]),
        "  parked -> first site run started (poll)": min(p["local_run_start"] for p in site_parts.values())
        - created,
        "  parked -> last site run started (poll)": max(p["local_run_start"] for p in site_parts.values())
        - created,
        "  site run (approval branch, analyse, respond), slowest": max(
            p["respond_end"] - p["local_run_start"] for p in site_parts.values()
        ),
        "  last answer -> aggregate started": _ts(tis["aggregate"]["start_date"]) - responded,
        "  aggregate task": float(tis["aggregate"]["duration"] or 0.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll-interval", type=float, default=3.0, help="seconds between a site's poll runs")
    parser.add_argument(
        "--poll-window", type=float, default=60.0, help="seconds one poll run keeps looking (0: one look)"
    )
    parser.add_argument("--poll-look", type=float, default=1.5, help="seconds between looks within a run")
    parser.add_argument("--runs", type=int, default=3, help="measured jobs, one after the other")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    args = parser.parse_args()

    from airflow_provider_kaapana.testing.benchresult import print_result
    from airflow_provider_kaapana.testing.federated_sandbox import DEMO_SITES, FederatedSandbox

    with tempfile.TemporaryDirectory(prefix="kaapana-bench-federated-") as tmp:
        sandbox = FederatedSandbox(
            Path(tmp) / "sandbox",
            DEMO_SITES,
            poll_interval=args.poll_interval,
            poll_window=args.poll_window,
            poll_look=args.poll_look,
            postgres=False if args.sqlite else None,
        )
        print("starting the sandbox (coordinator + 3 sites) ...", flush=True)
        with sandbox:
            for name, seconds in sandbox.steps:
                print(f"  {seconds:7.1f} s  {name}")
            config = (
                f"poll runs every {args.poll_interval:g} s, each looking every {args.poll_look:g} s for "
                f"{args.poll_window:g} s"
                if args.poll_window
                else f"one look per poll run, every {args.poll_interval:g} s"
            )
            results = []
            for i in range(args.runs + 1):
                triggered = time.time()
                run_id = sandbox.trigger(site_timeout_seconds=300)
                state = sandbox.wait(run_id, timeout=600)
                if state != "success":
                    raise SystemExit(f"job {run_id} ended {state}")
                parts = measure(sandbox, run_id, triggered)
                # the first job after start-up pays each Airflow's cold start (first task processes)
                label = "warm-up job (cold start, not counted)" if i == 0 else f"job {i}"
                if i:
                    results.append(parts)
                print(f"\n{label}: {run_id}; {config}")
                for name, seconds in parts.items():
                    print(f"  {name:<58} {seconds:6.1f} s")
    overheads = [r["overhead"] for r in results]
    median = statistics.median(overheads)
    print(
        f"\nfederation overhead over {len(results)} jobs: median {median:.1f} s, max {max(overheads):.1f} s "
        f"(goal <= 20 s: {'met' if median <= 20 else 'NOT met'})"
    )
    print_result("federated", "overhead s, median", median, None, None, "<= 20 s", median <= 20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
