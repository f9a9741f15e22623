"""Benchmark: de-identification of a 512x512 CT series, ours (``deidentify_folder``) against dicognito.

All read every file and write one output file per instance, in the same process and run, on the same
series (generated once with ``testing.synthetic``):

* the file-copy floor: a bare Python loop that reads each file and writes it unchanged to a new file
  (``os.open`` + one ``write``), and ``cp -r`` of the folder: what the file system costs alone;
* ours: ``deidentify_folder`` (pixel data copied as bytes, never decoded);
* dicognito (``pip install dicognito``): ``dcmread``, ``Anonymizer.anonymize``, ``save_as``; its UID
  map lives only as long as one Anonymizer, so one Anonymizer serves the whole series.

The rounds interleave the four (floor, cp, ours, dicognito, then again), so a load change on a shared
machine hits all of them; each figure is the best of ``--repeat`` rounds. Besides the wall-clock rate
it prints the CPU time per instance (user + system, worker processes included), which a loaded
machine inflates less than the wall clock.

    /work/main/.venv/bin/python benchmarks/bench_deid.py [--rows 512 --slices 400 --repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from airflow_provider_kaapana.core.deid.files import deidentify_folder  # noqa: E402
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option  # noqa: E402
from airflow_provider_kaapana.testing.benchresult import print_result  # noqa: E402
from airflow_provider_kaapana.testing.synthetic import generate_series  # noqa: E402

KEY = b"benchmark-site-key-0123456789abcdef"
GOAL_PER_S = 1000
GOAL_RATIO = 5.0


def floor(files: list[Path], series_dir: Path, out: Path) -> None:
    """Read each file and write it unchanged to a new file: the least any per-file tool can do."""
    out.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for path in files:
        data = path.read_bytes()
        fd = os.open(out / path.name, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def cp(files: list[Path], series_dir: Path, out: Path) -> None:
    subprocess.run(["cp", "-r", str(series_dir), str(out)], check=True)


def ours(files: list[Path], series_dir: Path, out: Path) -> None:
    profile = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))
    result = deidentify_folder(series_dir, out, profile, KEY)
    assert len(result.written) == len(files), result.failed


def dicognito(files: list[Path], series_dir: Path, out: Path) -> None:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name, enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = (floor, cp, ours, dicognito)
    best = {fn.__name__: float("inf") for fn in runs}
    cpu = {fn.__name__: float("inf") for fn in runs}
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        work = Path(tmp)
        series = generate_series(
            work / "ct", rows=args.rows, columns=args.rows, slices=args.slices, noise_sd=0
        )
        files = series.files
        # warm up (imports, the table, pydicom's dictionaries) outside the timing
        ours(files[:1], files[0], work / "warm-ours")
        dicognito(files[:1], series.series_dir, work / "warm-dicognito")
        for round_ in range(args.repeat):
            for fn in runs:
                out = work / f"{fn.__name__}{round_}"
                c0, t0 = _cpu(), time.perf_counter()
                fn(files, series.series_dir, out)
                best[fn.__name__] = min(best[fn.__name__], time.perf_counter() - t0)
                cpu[fn.__name__] = min(cpu[fn.__name__], _cpu() - c0)
                shutil.rmtree(out)
    n = len(files)

    def rate(name: str) -> float:
        return n / best[name]

    print(f"{n} instances of {args.rows}x{args.rows} CT, best of {args.repeat} interleaved rounds")
    for label, name in (
        ("file-copy floor (read + write loop)", "floor"),
        ("cp -r of the folder", "cp"),
        ("ours (deidentify_folder)", "ours"),
        (f"dicognito {_version()}", "dicognito"),
    ):
        print(
            f"{label + ':':37s}{best[name]:6.3f} s = {rate(name):6,.0f} instances/s"
            f"   CPU {cpu[name] / n * 1e3:5.2f} ms/instance"
        )
    ratio = best["dicognito"] / best["ours"]
    print(f"ours / floor: {best['floor'] / best['ours']:.2f}x   ours / dicognito: {ratio:.1f}x")
    print(
        f"goal: >= {GOAL_PER_S:,} instances/s and >= {GOAL_RATIO:.0f}x dicognito: "
        f"{'met' if rate('ours') >= GOAL_PER_S else 'NOT met'} ({rate('ours'):,.0f}/s), "
        f"{'met' if ratio >= GOAL_RATIO else 'NOT met'} ({ratio:.1f}x)"
    )
    print_result(
        "deid",
        "instances/s",
        rate("ours"),
        rate("dicognito"),
        f"dicognito {_version()}",
        f">= {GOAL_PER_S}/s",
        rate("ours") >= GOAL_PER_S,
    )
    return 0


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (worker processes, cp)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _version() -> str:
    from importlib.metadata import version

    return version("dicognito")


if __name__ == "__main__":
    sys.exit(main())
