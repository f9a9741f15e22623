"""Benchmark: de-identification of a 512x512 CT series, ours (``deidentify_folder``) against dicognito.

Both read every file, de-identify it and write one output file per instance, in the same process and
run, on the same series (generated once with ``testing.synthetic``); each figure is the best of
``--repeat`` runs. dicognito (``pip install dicognito``) keeps its UID map only while one Anonymizer
lives, so one Anonymizer serves the whole series.

    /work/main/.venv/bin/python benchmarks/bench_deid.py [--rows 512 --slices 100 --repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
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


def best_of(fn, files: list[Path], series_dir: Path, work: Path, repeat: int) -> float:
    best = float("inf")
    for i in range(repeat):
        out = work / f"{fn.__name__}{i}"
        t0 = time.perf_counter()
        fn(files, series_dir, out)
        best = min(best, time.perf_counter() - t0)
        shutil.rmtree(out)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        work = Path(tmp)
        series = generate_series(
            work / "ct", rows=args.rows, columns=args.rows, slices=args.slices, noise_sd=0
        )
        files = series.files
        # warm both (imports, the table, pydicom's dictionaries) outside the timing
        ours(files[:1], series.files[0], work / "warm-ours")
        dicognito(files[:1], series.series_dir, work / "warm-dicognito")
        t_ours = best_of(ours, files, series.series_dir, work, args.repeat)
        t_peer = best_of(dicognito, files, series.series_dir, work, args.repeat)
    n = len(files)
    print(f"{n} instances of {args.rows}x{args.rows} CT, best of {args.repeat}")
    print(f"ours (deidentify_folder): {t_ours:.3f} s = {n / t_ours:,.0f} instances/s")
    print(f"dicognito {_version()}: {t_peer:.3f} s = {n / t_peer:,.0f} instances/s")
    print(f"ratio ours/dicognito: {t_peer / t_ours:.1f}x")
    print_result(
        "deid",
        "instances/s",
        n / t_ours,
        n / t_peer,
        f"dicognito {_version()}",
        ">= 1000/s",
        n / t_ours >= 1000,
    )
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("dicognito")


if __name__ == "__main__":
    sys.exit(main())
