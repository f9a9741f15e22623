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

    parser.add_argument(
        "in_dir", metavar="IN_DIR", nargs="?", help="folder (searched recursively) or one DICOM file"
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", nargs="?", help="output: <SeriesInstanceUID>/<SOPInstanceUID>.dcm"
    )
    parser.add_argument(
        "--key-file",
        help="file holding the site key (at least 32 bytes; never printed); in production the key lives "
        "in an Airflow connection (the operator's key_conn_id)",
    )
    parser.add_argument(
        "--reid-map",
        metavar="DIR",
        help="also write a re-identification map (what was replaced) into DIR, sealed to --reid-public-key",
    )
    parser.add_argument(
        "--reid-public-key", metavar="FILE", help="X25519 public key (base64 or PEM) of who may re-identify"
    )
    parser.add_argument(
        "--reidentify",
        metavar="DIR",
        help="instead of de-identifying: open the maps in DIR with --private-key-file and print what each "
        "--pseudonym stands for (authorised users only; the output holds PHI)",
    )
    parser.add_argument("--private-key-file", metavar="FILE", help="the private key that opens the maps")
    parser.add_argument(
        "--pseudonym",
        action="append",
        default=[],
        help="a patient pseudonym or pseudonymous UID to look up (repeatable; none: every patient)",
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
        "--safe-private",
        metavar="FILE",
        help="with --option retain-safe-private: JSON list of the private attributes to keep, "
        '[{"creator": "GEMS_ACQU_01", "group": "0019", "element": "23"}, ...] '
        "(default: PS3.15 Table E.3.10-1)",
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


def _reidentify(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.deid.reidentify import read_maps, reidentify
    from airflow_provider_kaapana.exceptions import DeidentificationError

    if not args.private_key_file:
        print("kaapana deid: --reidentify needs --private-key-file", file=sys.stderr)
        return 2
    try:
        entries = read_maps(args.reidentify, Path(args.private_key_file).read_text())
    except (OSError, DeidentificationError) as exc:
        print(f"kaapana deid: {exc}", file=sys.stderr)
        return 1
    found = reidentify(entries, args.pseudonym) if args.pseudonym else entries.patients
    print(json.dumps(found, indent=2, sort_keys=True))
    return 1 if args.pseudonym and any(v is None for v in found.values()) else 0


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.deid.files import deidentify_folder
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
    from airflow_provider_kaapana.core.deid.safe_private import read_safe_private

    if args.reidentify:
        return _reidentify(args)
    if not (args.in_dir and args.out_dir and args.key_file):
        print("kaapana deid: IN_DIR, OUT_DIR and --key-file are required", file=sys.stderr)
        return 2
    try:
        key = Path(args.key_file).read_bytes().strip()
        public = Path(args.reid_public_key).read_text() if args.reid_public_key else None
        profile = DeidentificationProfile.from_names(
            args.option,
            allow_burned_in_annotation=args.allow_burned_in_annotation,
            safe_private=read_safe_private(args.safe_private) if args.safe_private else frozenset(),
        )
        result = deidentify_folder(
            args.in_dir,
            args.out_dir,
            profile,
            key,
            quarantine_dir=args.quarantine,
            reid_map_dir=args.reid_map,
            reid_public_key=public,
        )
    except (OSError, ValueError) as exc:
        print(f"kaapana deid: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(
            f"{len(result.written)} written to {args.out_dir}, {len(result.quarantined)} quarantined, "
            f"{len(result.failed)} unreadable"
            + (f"; re-identification map {result.reid_map}" if result.reid_map else "")
        )
        for source, reason in {**result.quarantined, **result.failed}.items():
            print(f"  {source}: {reason}", file=sys.stderr)
    return EXIT_INCOMPLETE if result.quarantined or result.failed else 0
