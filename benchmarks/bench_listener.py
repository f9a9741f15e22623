"""Receive throughput: dcmtk ``storescu`` sends N synthetic 512x512 CT instances over one association to
(a) ``kaapana listen`` (fsync before every success), (b) a bare pynetdicom SCP (the handler of
pynetdicom's storage SCP example: write ``event.encoded_dataset()`` to a file; with and without
``fsync``), (c) dcmtk ``storescp`` and (d) Orthanc; and, without any network, a plain Python loop
writing and ``fdatasync``-ing the same files (what the disk allows).

Run: ``python benchmarks/bench_listener.py [--count 1000] [--workdir DIR]``. Prints instances/s and
MB/s of each receiver and the ratios, all measured in the same run on the same files; the last line is
the machine-readable ``RESULT`` line (goal: ``kaapana listen`` with fsync >= 150 MB/s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from airflow_provider_kaapana.testing.benchresult import print_result
from airflow_provider_kaapana.testing.local_services import Orthanc, _wait_port, find_tool, free_port
from airflow_provider_kaapana.testing.synthetic import generate_series

GOAL_MB_S = 150.0


def send(files_dir: Path, port: int, called: str) -> float:
    """Seconds for storescu to send every file in ``files_dir`` over one association."""
    start = time.perf_counter()
    result = subprocess.run(
        [
            find_tool("storescu"),
            "-aet",
            "BENCH",
            "-aec",
            called,
            "+sd",
            "127.0.0.1",
            str(port),
            str(files_dir),
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called} failed: {result.stderr[-2000:]}")
    return elapsed


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def bench_kaapana(files_dir: Path, work: Path, fsync: bool = True) -> float:
    landing = work / ("kaapana" if fsync else "kaapana-nofsync")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "airflow_provider_kaapana",
        "listen",
        "--port",
        str(port),
        "--landing",
        str(landing),
    ]
    cmd += ["--no-trigger", "--quiet-seconds", "600", "--min-free-mb", "1"]
    if not fsync:
        cmd.append("--no-fsync")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, 30)
        return send(files_dir, port, "KAAPANA")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bare_scp(port: int, out: Path, fsync: bool) -> None:
    """The bare pynetdicom SCP (run in a child process): one file per instance, nothing else."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt

    _config.LOG_HANDLER_LEVEL = "none"  # as ``kaapana listen`` (no per-message event logging)

    def handle_store(event: object) -> int:
        path = out / f"{event.request.AffectedSOPInstanceUID}.dcm"  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(event.encoded_dataset())  # type: ignore[attr-defined]
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        return 0x0000

    ae = AE(ae_title="BARE")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, handle_store)])


def bench_bare(files_dir: Path, work: Path, fsync: bool) -> float:
    out = work / ("bare-fsync" if fsync else "bare")
    out.mkdir()
    port = free_port()
    cmd = [sys.executable, __file__, "--bare-scp", str(port), str(out)] + (["--fsync"] if fsync else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, 30)
        return send(files_dir, port, "BARE")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_storescp(files_dir: Path, work: Path) -> float:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [find_tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, 30)
        return send(files_dir, port, "STORESCP")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_disk_floor(files_dir: Path, work: Path) -> float:
    """No network: a plain Python loop writing the same files as the listener does (new hidden
    temporary, ``fdatasync``, rename), read into memory first. What this disk allows a receiver that
    syncs every instance before answering, with nothing else to do."""
    out = work / "disk-floor"
    out.mkdir()
    payloads = [(p.name, p.read_bytes()) for p in sorted(files_dir.iterdir()) if p.is_file()]
    start = time.perf_counter()
    for name, data in payloads:
        tmp = out / f".{name}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out / name)
    return time.perf_counter() - start


def bench_orthanc(files_dir: Path, work: Path) -> float:
    with Orthanc(workdir=work / "orthanc") as pacs:
        return send(files_dir, pacs.dicom_port, pacs.aet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="instances to send (default 1000)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir, removed)")
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument("--skip-storescp", action="store_true")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--fsync", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]), args.fsync)
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-listener-"))
    try:
        t0 = time.perf_counter()
        series = generate_series(work / "input", slices=args.count, rows=512, columns=512, noise_sd=20)
        size_mb = sum(f.stat().st_size for f in series.files) / 1e6
        print(
            f"generated {args.count} CT instances 512x512 ({size_mb:.0f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        results: dict[str, float] = {}
        runs = [
            ("kaapana listen (fsync)", lambda: bench_kaapana(series.series_dir, work)),
            ("kaapana listen (no fsync)", lambda: bench_kaapana(series.series_dir, work, fsync=False)),
            ("pynetdicom bare SCP (fsync)", lambda: bench_bare(series.series_dir, work, fsync=True)),
            ("pynetdicom bare SCP (no fsync)", lambda: bench_bare(series.series_dir, work, fsync=False)),
            ("disk floor: write + fdatasync loop", lambda: bench_disk_floor(series.series_dir, work)),
        ]
        if not args.skip_storescp:
            runs.append(("dcmtk storescp", lambda: bench_storescp(series.series_dir, work)))
        if not args.skip_orthanc:
            runs.append(("Orthanc", lambda: bench_orthanc(series.series_dir, work)))
        for name, run in runs:
            # the generated input and the previous receiver's unsynced files are written back first
            # (not timed): that writeback would otherwise compete with this receiver's syncs
            os.sync()
            results[name] = run()
        received = count_files(work / "kaapana")
        if received != args.count:
            raise RuntimeError(f"kaapana listen stored {received} of {args.count} instances")
        print(f"{'receiver':32s} {'seconds':>8s} {'inst/s':>8s} {'MB/s':>8s} {'ms/inst':>8s}")
        for name, seconds in results.items():
            print(
                f"{name:32s} {seconds:8.2f} {args.count / seconds:8.1f} {size_mb / seconds:8.1f} "
                f"{1000 * seconds / args.count:8.2f}"
            )
        ours = results["kaapana listen (fsync)"]
        for name, seconds in results.items():
            if not name.startswith(("kaapana", "disk floor")):
                print(f"kaapana listen (fsync) vs {name}: {seconds / ours:.2f}x faster")
        peer = results["pynetdicom bare SCP (fsync)"]
        print_result(
            "listener",
            "MB/s, fsync before success",
            size_mb / ours,
            size_mb / peer,
            "pynetdicom bare SCP (fsync)",
            goal=f">= {GOAL_MB_S:.0f} MB/s",
            met=size_mb / ours >= GOAL_MB_S,
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
