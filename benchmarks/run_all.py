"""Run every benchmark at a small or the full size and write one Markdown table of ratios.

Each ``bench_*.py`` runs as its own process with the arguments of the chosen size (``BENCHMARKS``
below: small is minutes each on an idle 2-core machine, full is each script's documented size) and ends with
``RESULT`` lines (:mod:`airflow_provider_kaapana.testing.benchresult`); their values become the rows of
one table (benchmark, measure, ours, peer, ratio, goal, met). A benchmark whose prerequisites are
missing, or that fails or times out, gets a row saying so. Goals are stated for the full size; at the
small size "met" only says how the small run compares with them.

    python benchmarks/run_all.py [--size small|full] [--only listener,deid] [--out FILE] [--format md|rst]
    python benchmarks/run_all.py --from-logs DIR [DIR ...]   # the table of earlier runs' --logs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))

from airflow_provider_kaapana.testing.benchresult import (  # noqa: E402
    BenchResult,
    markdown_table,
    parse_results,
    rst_table,
)


@dataclass(frozen=True)
class Benchmark:
    """One ``bench_<name>.py``: its arguments per size (full: none, the script's defaults; ``{work}``
    becomes a scratch folder next to the logs) and what it needs (dcmtk and other programs on
    ``PATH`` or in the venv, Python modules)."""

    name: str
    small: tuple[str, ...]
    full: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()

    @property
    def script(self) -> Path:
        return HERE / f"bench_{self.name}.py"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("deid", ("--slices", "20", "--repeat", "1"), modules=("dicognito",)),
    Benchmark("e2e", (), tools=("storescu", "Orthanc", "osmem-server"), modules=("nnunetv2",)),
    Benchmark("federated", ("--runs", "1", "--sqlite"), tools=("osmem-server",)),
    Benchmark(
        "index",
        ("--instances", "500", "--peer-files", "50", "--data", "{work}"),
        ("--data", "{work}"),
        tools=("dcm2json", "osmem-server"),
    ),
    Benchmark(
        "listener",
        ("--count", "200", "--skip-orthanc"),
        ("--count", "1000", "--skip-orthanc"),
        tools=("storescu", "storescp"),
    ),
    Benchmark(
        "load",
        ("--executor", "local", "--series", "4", "--instances", "2", "--senders", "2"),
        ("--series", "200", "--instances", "32", "--senders", "4"),
        tools=("storescu", "Orthanc", "osmem-server"),
    ),
    Benchmark("nifti", ("--slices", "60", "--repeat", "1"), tools=("dcm2niix",)),
    Benchmark("parse", ("--repeat", "1")),
    Benchmark("predict", ("--repeats", "1"), modules=("nnunetv2",)),
    Benchmark("seg", ("--slices", "40"), modules=("highdicom",)),
    Benchmark("stats", ("--slices", "40"), modules=("SimpleITK",)),
)


# programs that also come as a Python package bundling them (the harness looks there first)
TOOL_MODULES = {"osmem-server": "osmem_server"}


def missing_prerequisites(bench: Benchmark) -> list[str]:
    """What ``bench`` needs and this machine lacks (programs, Python modules)."""
    from airflow_provider_kaapana.testing.local_services import ServiceError, find_tool

    missing = []
    for tool in bench.tools:
        module = TOOL_MODULES.get(tool)
        if module and importlib.util.find_spec(module) is not None:
            continue
        try:
            find_tool(tool)
        except ServiceError:
            missing.append(tool)
    missing += [m for m in bench.modules if importlib.util.find_spec(m) is None]
    return missing


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    # "package.module.SomeError: message" -> "SomeError: message"
    return re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", lines[-1])[:100]


def run_benchmark(bench: Benchmark, size: str, timeout: float, logs: Path) -> tuple[list[BenchResult], float]:
    """Run one benchmark (its output goes to ``logs/<name>.log``); its RESULT rows, or one row saying
    why there are none; and its seconds."""
    missing = missing_prerequisites(bench)
    if missing:
        return [BenchResult(bench.name, "-", "-", met=f"skipped: {', '.join(missing)} missing")], 0.0
    # "{work}": a scratch folder of this run (not a cache another run may be filling at the same time)
    work = str(logs / f"{bench.name}-work")
    args = [a.replace("{work}", work) for a in (bench.small if size == "small" else bench.full)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    # a session of its own: on a timeout the benchmark and every service it started (Airflow,
    # Orthanc, osmem-server) are stopped together
    proc = subprocess.Popen(
        [sys.executable, str(bench.script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    seconds = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    status = f"timed out after {timeout:.0f} s" if timed_out else f"exit {proc.returncode}"
    (logs / f"{bench.name}.log").write_text(f"{out}\n--- stderr\n{err}\n--- {status}\n")
    return results_of(bench.name, out, err, status), seconds


def results_of(name: str, out: str, err: str, status: str) -> list[BenchResult]:
    """The RESULT rows of one benchmark's output, or one row saying why there are none."""
    results = parse_results(out)
    if results:
        return results
    if status != "exit 0":
        return [BenchResult(name, "-", "-", met=f"{status}: {_tail(err or out)}")]
    return [BenchResult(name, "-", "-", met="no RESULT line")]


def results_from_logs(bench: Benchmark, dirs: list[Path]) -> list[BenchResult]:
    """The rows of ``bench`` from the log a run wrote (the last of ``dirs`` that has one)."""
    for directory in reversed(dirs):
        log = directory / f"{bench.name}.log"
        if log.exists():
            out, _, rest = log.read_text().partition("\n--- stderr\n")
            err, sep, status = rest.rpartition("\n--- ")
            if not sep:  # a log cut short
                err, status = rest, "exit unknown"
            return results_of(bench.name, out, err, status.strip())
    missing = missing_prerequisites(bench)
    if missing:
        return [BenchResult(bench.name, "-", "-", met=f"skipped: {', '.join(missing)} missing")]
    return [BenchResult(bench.name, "-", "-", met="not run")]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--format", choices=("md", "rst"), default="md", help="Markdown (default) or rst")
    parser.add_argument("--logs", type=Path, default=None, help="keep each benchmark's output here")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    parser.add_argument(
        "--from-logs",
        type=Path,
        nargs="+",
        default=None,
        help="run nothing: the table of the logs earlier runs kept (--logs); a later folder wins",
    )
    args = parser.parse_args()
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = names - {b.name for b in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    timeout = args.timeout or (1200 if args.size == "small" else 7200)
    if args.from_logs:
        logs = args.from_logs[-1]
    else:
        logs = args.logs or Path(tempfile.mkdtemp(prefix="kaapana-bench-logs-"))
        logs.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    rows: list[BenchResult] = []
    for bench in BENCHMARKS:
        if names and bench.name not in names:
            continue
        if args.from_logs:
            rows += results_from_logs(bench, args.from_logs)
            continue
        print(f"{bench.name} ({args.size}) ...", file=sys.stderr, flush=True)
        results, seconds = run_benchmark(bench, args.size, timeout, logs)
        print(f"  {seconds:.0f} s: {results[0].met}", file=sys.stderr, flush=True)
        rows += results
    if args.from_logs:
        header = f"Benchmarks from the logs in {', '.join(map(str, args.from_logs))}, {machine()}\n\n"
    else:
        header = (
            f"Benchmarks at size {args.size}, {started:%Y-%m-%d %H:%M} UTC, {machine()}, "
            f"load average {os.getloadavg()[0]:.1f} at the end; logs in {logs}\n\n"
        )
    table = header + (markdown_table(rows) if args.format == "md" else rst_table(rows))
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
