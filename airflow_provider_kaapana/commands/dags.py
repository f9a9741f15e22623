"""``kaapana dags``: put the shipped DAG files into a DAGs folder, or show where they are."""

from __future__ import annotations

import argparse
import sys

from airflow_provider_kaapana.exceptions import KaapanaError

NAME = "dags"
HELP = "install the shipped DAG files into a DAGs folder (no git checkout needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="copy the shipped DAG files into DIR (created if missing)")
    install.add_argument("dir", help="the DAGs folder, e.g. $AIRFLOW_HOME/dags")
    install.add_argument("--force", action="store_true", help="replace files that differ (local edits)")
    install.add_argument("--dry-run", action="store_true", help="say what would be copied, copy nothing")
    actions.add_parser("path", help="print the folder of the shipped DAG files (a DAG bundle's path)")
    actions.add_parser("list", help="list the shipped DAG files")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.dag_files import install_dags, shipped_dag_files, shipped_dags_dir

    try:
        if args.action == "path":
            print(shipped_dags_dir())
            return 0
        if args.action == "list":
            for path in shipped_dag_files():
                print(path.name)
            return 0
        report = install_dags(args.dir, force=args.force, dry_run=args.dry_run)
    except (KaapanaError, OSError) as exc:
        print(f"kaapana dags: error: {exc}", file=sys.stderr)
        return 1
    verb = "would install" if args.dry_run else "installed"
    for name in report.installed:
        print(f"{verb} {name}")
    for name in report.kept:
        print(f"kept {name}: it differs from the shipped file (--force replaces it)", file=sys.stderr)
    print(
        f"{len(report.installed)} {verb}, {len(report.unchanged)} unchanged, {len(report.kept)} kept "
        f"in {args.dir}"
    )
    return 0
