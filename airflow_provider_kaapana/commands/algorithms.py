"""``kaapana algorithms``: validate algorithm manifests, install them into the algorithms folder, list them."""

from __future__ import annotations

import argparse
import json
import sys

from airflow_provider_kaapana.exceptions import KaapanaError

NAME = "algorithms"
HELP = "validate, install and list bring-your-own-algorithm manifests"
DIR_HELP = "algorithms folder (default: $KAAPANA_ALGORITHMS_DIR, else /algorithms)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    validate = actions.add_parser("validate", help="check a manifest; every problem names its field")
    validate.add_argument("path", help="manifest file, or a folder holding manifest.yaml|yml|json")
    install = actions.add_parser(
        "install", help="validate and copy an algorithm folder into the algorithms folder"
    )
    install.add_argument("path", help="manifest file, or a folder holding manifest.yaml|yml|json")
    install.add_argument("--algorithms-dir", default=None, help=DIR_HELP)
    install.add_argument(
        "--dags-folder",
        default=None,
        help="also write the algorithm's one-line DAG file here (kaapana_algorithm_<name>.py)",
    )
    install.add_argument(
        "--settings",
        default=None,
        help="with --dags-folder: JSON object of DAG settings (pacs_conn_id, workspace_base, predict_mode...)",
    )
    listing = actions.add_parser("list", help="installed algorithms (and the ones whose manifest is refused)")
    listing.add_argument("--algorithms-dir", default=None, help=DIR_HELP)
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.algorithms.manifest import (
        ManifestError,
        install_algorithm,
        list_algorithms,
        load_manifest,
        write_dag_file,
    )

    try:
        if args.action == "validate":
            manifest = load_manifest(args.path)
            print(f"{manifest.name} {manifest.version}: valid (DAG {manifest.dag_id})")
            return 0
        if args.action == "install":
            manifest = install_algorithm(args.path, args.algorithms_dir)
            print(
                f"installed {manifest.name} {manifest.version} -> {manifest.folder} (DAG {manifest.dag_id})"
            )
            if args.dags_folder:
                settings = json.loads(args.settings) if args.settings else {}
                if not isinstance(settings, dict):
                    raise KaapanaError("--settings must be a JSON object")
                path = write_dag_file(manifest, args.dags_folder, settings, args.algorithms_dir)
                print(f"DAG file {path}")
            return 0
    except ManifestError as exc:
        print(f"kaapana algorithms: {exc.source}: invalid manifest", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except (KaapanaError, OSError, ValueError) as exc:
        print(f"kaapana algorithms: error: {exc}", file=sys.stderr)
        return 1
    found = list_algorithms(args.algorithms_dir)
    rows = [
        {"name": m.source, "error": m.problems}
        if isinstance(m, ManifestError)
        else {"name": m.name, "version": m.version, "image": m.image, "dag_id": m.dag_id}
        for m in found
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no algorithms installed")
    for row in rows:
        if "error" in row:
            print(f"{row['name']}\tREFUSED\t{'; '.join(row['error'])}")
        else:
            print(f"{row['name']}\t{row['version']}\t{row['image']}\t{row['dag_id']}")
    return 0 if all("error" not in r for r in rows) else 1
