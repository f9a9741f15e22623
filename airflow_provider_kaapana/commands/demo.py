"""``kaapana demo``: the whole pipeline on a synthetic CT study with local services."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "run the pipeline end to end on a synthetic CT study (local Orthanc, osmem, Airflow, tiny nnU-Net)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default=None, help="where services and outputs live (default: a temp dir, removed)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the services running until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.testing.demo import run_demo

    print(
        "kaapana demo: incoming CT -> PACS + index -> nnU-Net segmentation -> DICOM SEG -> PACS + index",
        flush=True,
    )
    try:
        run_demo(args.workdir, out=sys.stdout, keep=args.keep)
    except Exception as exc:
        print(f"kaapana demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
