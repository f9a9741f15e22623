"""``kaapana evaluate``: Dice, Jaccard, volume difference and surface distances of a test against a reference."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "evaluate"
HELP = "compare a test segmentation with a reference (Dice, Hausdorff, HD95, ASSD, surface Dice)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", required=True, help="reference DICOM SEG or NIfTI label map")
    parser.add_argument("--test", required=True, help="test DICOM SEG or NIfTI label map")
    parser.add_argument("--source", default=None, help="source series folder (required for SEGs)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm")
    parser.add_argument(
        "--config", default=None, help="nnU-Net dataset.json or rich label config (label maps)"
    )
    parser.add_argument("-o", "--output", required=True, help="JSON file to write")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_provider_kaapana.core.quant.evaluation import segmentation_evaluation
    from airflow_provider_kaapana.exceptions import KaapanaError

    try:
        document = segmentation_evaluation(
            args.reference,
            args.test,
            series_dir=args.source,
            tolerance_mm=args.tolerance,
            label_config=args.config,
        )
    except (KaapanaError, ValueError) as exc:
        print(f"kaapana evaluate: {exc}", file=sys.stderr)
        return 1
    Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
    for s in document["segments"]:
        print(f"{s['segment_number']} {s['label']}: Dice {s['dice']:.4f}, HD95 {s['hd95_mm']} mm")
    return 0
