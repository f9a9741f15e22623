"""``kaapana models``: install nnU-Net export zips into the model store and list what is installed."""

from __future__ import annotations

import argparse
import json
import sys

from airflow_provider_kaapana.exceptions import KaapanaError

NAME = "models"
HELP = "install nnU-Net models from export zips and list the installed ones"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = actions.add_parser(
        "install", help="install an nnU-Net export zip (nnUNetv2_export_model_to_zip)"
    )
    install.add_argument("zip", help="the export zip")
    install.add_argument("--models-dir", default=None, help="model store (default: $KAAPANA_MODELS_DIR)")
    listing = actions.add_parser("list", help="installed models: dataset, configuration, folds, labels")
    listing.add_argument("--models-dir", default=None, help="model store (default: $KAAPANA_MODELS_DIR)")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.nnunet.models import install_model, list_models

    try:
        if args.action == "install":
            for info in install_model(args.zip, args.models_dir):
                print(
                    f"installed {info.dataset} {info.configuration} folds {list(info.folds)} -> {info.path}"
                )
            return 0
        models = list_models(args.models_dir)
    except KaapanaError as exc:
        print(f"kaapana models: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    if not models:
        print("no models installed")
    for m in models:
        labels = ", ".join(f"{name}={value}" for name, value in m.labels.items())
        folds = ",".join(map(str, m.folds))
        print(f"{m.dataset}\t{m.configuration}\t{m.trainer}__{m.plans}\tfolds {folds}\tlabels {labels}")
    return 0
