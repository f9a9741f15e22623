"""Benchmark: DICOM → NIfTI of a 512x512x300 CT series, ours (``convert_series``) against dcm2niix.

Both run as subprocesses in the same run, for ``.nii.gz`` and for ``.nii``, interleaved (ours, dcm2niix,
dcm2niix, ours, ...) so that both see the same load; each measurement is the best of ``--repeat`` runs of
wall time (the median is printed too), with the peak resident memory of that child (``ru_maxrss`` of a
wrapper's only child). The series is generated once and cached under ``--cache`` (default: the temp dir).

    /work/main/.venv/bin/python benchmarks/bench_nifti.py [--rows 512 --slices 300 --repeat 3 --format nii]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from airflow_provider_kaapana.testing.benchresult import print_result  # noqa: E402
from airflow_provider_kaapana.testing.synthetic import Shape, generate_series  # noqa: E402

# Runs one command, prints its wall time, CPU time (user + system, all threads) and peak RSS (the wrapper
# has no other child).
_WRAPPER = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t0
if proc.returncode:
    sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
    sys.exit(proc.returncode)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
                  "stdout": proc.stdout[-500:]}))
"""

_OURS = """
import sys, time
t0 = time.perf_counter()
from airflow_provider_kaapana.core.nifti.convert import convert_series
t1 = time.perf_counter()
convert_series(sys.argv[1], sys.argv[2], name="ours", compress=sys.argv[3] == "gz")
t2 = time.perf_counter()
print(f"import {t1 - t0:.3f} s, convert {t2 - t1:.3f} s")
"""


def series_dir(cache: Path, rows: int, slices: int) -> Path:
    """The cached benchmark series (generated on first use: a few minutes for 512x512x300)."""
    target = cache / f"ct_{rows}x{rows}x{slices}"
    done = target / ".complete"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        print(f"generating {rows}x{rows}x{slices} CT series in {target} ...", flush=True)
        generate_series(
            target,
            rows=rows,
            columns=rows,
            slices=slices,
            pixel_spacing=(0.7, 0.7),
            slice_spacing=1.0,
            origin=(-180.0, -180.0, -150.0),
            shapes=[Shape(1, (0.0, 0.0, 0.0), radius=60.0), Shape(2, (60.0, 40.0, 20.0), radius=25.0)],
        )
        done.write_text("ok")
        print(f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return target


def run_once(cmd: list[str], out_dir: Path) -> dict:
    """One run of ``cmd`` in the wrapper: wall time, peak RSS and the end of its stdout."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_interleaved(commands: list[tuple[list[str], Path]], repeat: int) -> list[dict]:
    """Best-of-``repeat`` run of each command, run in turns (ABBA order) so that each sees the same load.

    Each result also carries ``median_s``, the median wall time of its runs, and ``min_cpu_s``, the least
    CPU time (user + system) of its runs, which waiting for a busy machine's cores does not inflate.
    """
    runs: list[list[dict]] = [[] for _ in commands]
    for round_ in range(repeat):
        order = range(len(commands)) if round_ % 2 == 0 else reversed(range(len(commands)))
        for i in order:
            runs[i].append(run_once(*commands[i]))
    best = []
    for results in runs:
        chosen = dict(min(results, key=lambda r: r["wall_s"]))
        chosen["median_s"] = statistics.median(r["wall_s"] for r in results)
        chosen["min_cpu_s"] = min(r["cpu_s"] for r in results)
        best.append(chosen)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", choices=["gz", "nii", "both"], default="both", help="output format(s)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kaapana-bench-nifti")
    args = parser.parse_args()
    dcm2niix = shutil.which("dcm2niix")
    if not dcm2niix:
        raise SystemExit("dcm2niix not found (Debian: apt-get install dcm2niix)")
    src = series_dir(args.cache, args.rows, args.slices)
    work = Path(tempfile.mkdtemp(prefix="kaapana-bench-nifti-out-"))
    print(f"series: {src} ({args.rows}x{args.rows}x{args.slices}), best of {args.repeat}, interleaved")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'format':8} {'tool':9} {'wall s':>8} {'median s':>9} {'cpu s':>7} {'peak MiB':>9}")
    try:
        for fmt in ("gz", "nii") if args.format == "both" else (args.format,):
            ext = ".nii.gz" if fmt == "gz" else ".nii"
            ours_dir, theirs_dir = work / f"ours_{fmt}", work / f"dcm2niix_{fmt}"
            ours, theirs = measure_interleaved(
                [
                    ([sys.executable, "-c", _OURS, str(src), str(ours_dir), fmt], ours_dir),
                    (
                        [dcm2niix, "-z", "y" if fmt == "gz" else "n", "-b", "n", "-f", "ref", "-o"]
                        + [str(theirs_dir), str(src)],
                        theirs_dir,
                    ),
                ],
                args.repeat,
            )
            a, b = nib.load(ours_dir / f"ours{ext}"), nib.load(theirs_dir / f"ref{ext}")
            same = np.allclose(a.affine, b.affine, atol=1e-3) and np.array_equal(
                np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
            )
            size_ours = (ours_dir / f"ours{ext}").stat().st_size / 2**20
            size_theirs = (theirs_dir / f"ref{ext}").stat().st_size / 2**20
            print(
                f"{ext:8} {'ours':9} {ours['wall_s']:8.3f} {ours['median_s']:9.3f} {ours['min_cpu_s']:7.3f} "
                f"{ours['peak_mib']:9.0f}"
                f"  ({ours['stdout'].strip()}; {size_ours:.0f} MiB)"
            )
            print(
                f"{ext:8} {'dcm2niix':9} {theirs['wall_s']:8.3f} {theirs['median_s']:9.3f} {theirs['min_cpu_s']:7.3f} "
                f"{theirs['peak_mib']:9.0f}"
                f"  ({size_theirs:.0f} MiB)"
            )
            print(
                f"{ext:8} ratio ours/dcm2niix: time {ours['wall_s'] / theirs['wall_s']:.2f}x "
                f"(median {ours['median_s'] / theirs['median_s']:.2f}x, cpu {ours['min_cpu_s'] / theirs['min_cpu_s']:.2f}x), "
                f"memory {ours['peak_mib'] / theirs['peak_mib']:.2f}x; identical volume+affine: {same}"
            )
            # goals: faster than dcm2niix on .nii.gz; at most as long as dcm2niix on .nii (issue 20)
            print_result(
                "nifti",
                f"{ext} wall s",
                ours["wall_s"],
                theirs["wall_s"],
                "dcm2niix",
                "< dcm2niix" if fmt == "gz" else "<= 1.0x dcm2niix",
                same and ours["wall_s"] <= theirs["wall_s"],
                higher_is_better=False,
            )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
