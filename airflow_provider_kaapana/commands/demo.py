"""``kaapana demo``: the whole pipeline on a synthetic CT study with local services; ``--federated``:
a federated cohort-statistics job between a local coordinator and three local sites."""

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
    parser.add_argument(
        "--federated",
        action="store_true",
        help="instead: a coordinator Airflow and three site Airflows answer one cohort-statistics job",
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="with --federated: write the JSON report here (+ .html)",
    )


def run(args: argparse.Namespace) -> int:
    if args.federated:
        return _federated(args)
    if args.report:
        print("kaapana demo: --report needs --federated", file=sys.stderr)
        return 2
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


def _federated(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.testing.federated_sandbox import run_federated_demo

    if args.keep:
        print("kaapana demo: --keep is not supported with --federated", file=sys.stderr)
        return 2
    print(
        "kaapana demo --federated: coordinator -> 3 sites (own Airflow + search index each) -> "
        "policy, analysis, egress guard, sealed answers -> pooled report",
        flush=True,
    )
    try:
        run_federated_demo(args.workdir, out=sys.stdout, report_path=args.report)
    except Exception as exc:
        print(f"kaapana demo --federated failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
