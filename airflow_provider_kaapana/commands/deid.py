"""``kaapana deid``: de-identify DICOM files under PS3.15 Table E.1-1 with a site key (same core as the operator)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "deid"
HELP = "de-identify DICOM files (PS3.15 Basic Application Level Confidentiality Profile + options)"

# exit status when some inputs were quarantined or unreadable (the rest was written): distinct from 1
EXIT_INCOMPLETE = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from airflow_provider_kaapana.core.deid.profile import Option

    parser.add_argument("in_dir", metavar="IN_DIR", help="folder (searched recursively) or one DICOM file")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output: <SeriesInstanceUID>/<SOPInstanceUID>.dcm")
    parser.add_argument(
        "--key-file", required=True, help="file holding the site key (at least 32 bytes; never printed)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        choices=[o.value for o in Option],
        metavar="NAME",
        help="a Table E.1-1 option, repeatable: " + ", ".join(o.value for o in Option),
    )
    parser.add_argument(
        "--quarantine",
        default=None,
        help="folder for refused originals and quarantine.json (they hold PHI: keep it on the site)",
    )
    parser.add_argument(
        "--allow-burned-in-annotation",
        action="store_true",
        help="write images that may show burned-in text (their pixels are not cleaned)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.deid.files import deidentify_folder
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile

    try:
        key = Path(args.key_file).read_bytes().strip()
        profile = DeidentificationProfile.from_names(
            args.option, allow_burned_in_annotation=args.allow_burned_in_annotation
        )
        result = deidentify_folder(args.in_dir, args.out_dir, profile, key, quarantine_dir=args.quarantine)
    except (OSError, ValueError) as exc:
        print(f"kaapana deid: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(
            f"{len(result.written)} written to {args.out_dir}, {len(result.quarantined)} quarantined, "
            f"{len(result.failed)} unreadable"
        )
        for source, reason in {**result.quarantined, **result.failed}.items():
            print(f"  {source}: {reason}", file=sys.stderr)
    return EXIT_INCOMPLETE if result.quarantined or result.failed else 0
