"""``kaapana index``: index DICOM folders into Elasticsearch/OpenSearch, outside Airflow."""

from __future__ import annotations

import argparse
import json
import os
import sys

from airflow_provider_kaapana.core.index import DEFAULT_INDEX

NAME = "index"
HELP = "index DICOM series folders into Elasticsearch/OpenSearch (one document per series)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="series folders or DICOM files")
    parser.add_argument("--url", required=True, help="search server URL, e.g. http://localhost:9200")
    parser.add_argument("--index", default=DEFAULT_INDEX, help=f"index name (default {DEFAULT_INDEX})")
    parser.add_argument(
        "--flavor", choices=["auto", "opensearch", "elasticsearch"], default="auto", help="server kind"
    )
    parser.add_argument(
        "--user", default=None, help="basic-auth user (password from $KAAPANA_SEARCH_PASSWORD)"
    )
    parser.add_argument("--no-verify-certs", action="store_true", help="do not verify TLS certificates")
    parser.add_argument("--workers", type=int, default=1, help="processes parsing headers")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge into already indexed series (partial arrivals) instead of replacing",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")


def run(args: argparse.Namespace) -> int:
    # on use: the client brings pydicom and the search clients, which every other subcommand (every
    # `kaapana nifti` included) would otherwise import to build the parser (0.27 s)
    from airflow_provider_kaapana.core.index.client import index_series, make_search_client
    from airflow_provider_kaapana.exceptions import KaapanaError

    auth = (args.user, os.environ.get("KAAPANA_SEARCH_PASSWORD", "")) if args.user else None
    try:
        client = make_search_client(args.url, args.flavor, auth=auth, verify_certs=not args.no_verify_certs)
        report = index_series(
            client,
            args.index,
            args.paths,
            workers=args.workers,
            refresh="wait_for",
            merge_instances=args.merge,
        )
    except KaapanaError as exc:
        print(f"kaapana index: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(
            f"indexed {len(report.indexed)} series ({report.instances} instances) into {args.index} "
            f"on {client.flavor} {client.url}"
        )
        for error in report.file_errors:
            print(f"not indexed: {error}", file=sys.stderr)
        for uid, reason in report.failed.items():
            print(f"rejected: {uid}: {reason}", file=sys.stderr)
    # partial failure (files not indexed, documents refused): exit 1, the rest is indexed all the same
    return 1 if report.failed or report.file_errors else 0
