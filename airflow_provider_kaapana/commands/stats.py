"""``kaapana stats``: per-segment statistics of a SEG or label map on its source series (same core as the operator)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "stats"
HELP = "per-segment volume, shape and intensity statistics as kaapana.segment-statistics/v1 JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="folder with the source series' DICOM files")
    parser.add_argument("--seg", required=True, help="DICOM SEG or NIfTI label map")
    parser.add_argument(
        "--config", default=None, help="nnU-Net dataset.json or rich label config (label maps)"
    )
    parser.add_argument("-o", "--output", required=True, help="JSON file to write")
    parser.add_argument(
        "--sr",
        default=None,
        metavar="SR.dcm",
        help="also write the statistics as a DICOM TID 1500 Measurement Report (needs --seg to be a SEG)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from airflow_provider_kaapana.core.quant.sr import measurement_report
    from airflow_provider_kaapana.core.quant.statistics import segment_statistics
    from airflow_provider_kaapana.exceptions import KaapanaError

    try:
        document = segment_statistics(args.source, args.seg, label_config=args.config)
        Path(args.output).write_text(json.dumps(document, indent=2) + "\n")
        report = measurement_report(document, args.seg, args.source, args.sr) if args.sr else None
    except (KaapanaError, ValueError) as exc:
        print(f"kaapana stats: {exc}", file=sys.stderr)
        return 1
    if report is not None:
        print(f"{report.sr_path}: SR {report.sr_sop_instance_uid}, {report.measurements} measurements")
    for s in document["segments"]:
        print(f"{s['segment_number']} {s['label']}: {s['volume_ml']:.3f} ml, mean {s['mean']}")
    return 0
