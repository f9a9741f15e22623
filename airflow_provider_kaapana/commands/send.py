"""``kaapana send``: send DICOM files to a PACS by C-STORE or STOW-RS."""

from __future__ import annotations

import argparse
import os
import sys

NAME = "send"
HELP = "send DICOM files or directories to a PACS (C-STORE or STOW-RS), checking every instance"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="DICOM files, directories (DICOM files below, any name) or DICOMDIR media",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dimse", metavar="AET@HOST:PORT", help="C-STORE to this DICOM node")
    target.add_argument("--dicomweb", metavar="URL", help="STOW-RS to this DICOMweb base URL")
    parser.add_argument("--calling-ae", default="KAAPANA", help="our AE title for C-STORE (default KAAPANA)")
    parser.add_argument("--user", default=None, help="HTTP basic auth user (password from --password-env)")
    parser.add_argument(
        "--password-env", default="KAAPANA_PACS_PASSWORD", help="variable holding the HTTP password"
    )
    parser.add_argument(
        "--token-env", default="KAAPANA_PACS_TOKEN", help="variable holding a bearer token (used if set)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="check afterwards that the PACS lists every instance"
    )
    parser.add_argument("--retries", type=int, default=3, help="retries with exponential backoff (default 3)")
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="seconds before the first retry (default 1)"
    )
    for name, what in (
        ("acse", "for the PACS to answer an association request"),
        ("dimse", "for the answer to each C-STORE"),
        ("network", "without any byte from the PACS before the association is aborted"),
    ):
        parser.add_argument(
            f"--{name}-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help=f"C-STORE: seconds to wait {what} (default 30)",
        )


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
    from airflow_provider_kaapana.core.net.dimse import DimsePeer
    from airflow_provider_kaapana.core.net.send import send
    from airflow_provider_kaapana.exceptions import KaapanaError

    try:
        if args.dimse:
            peer = DimsePeer.parse(
                args.dimse,
                calling_ae=args.calling_ae,
                retries=args.retries,
                backoff=args.backoff,
                **{
                    name: getattr(args, name)
                    for name in ("acse_timeout", "dimse_timeout", "network_timeout")
                    if getattr(args, name) is not None
                },
            )
            report = send(args.paths, peer=peer, verify=args.verify)
            where = str(peer)
        else:
            token = os.environ.get(args.token_env)
            auth: tuple[str, str] | str | None = token or None
            if not auth and args.user:
                auth = (args.user, os.environ.get(args.password_env, ""))
            client = DicomWebClient(args.dicomweb, auth=auth, retries=args.retries, backoff=args.backoff)
            report = send(args.paths, dicomweb=client, verify=args.verify)
            where = client.base_url
    except (KaapanaError, ValueError, FileNotFoundError) as exc:
        print(f"kaapana send: {exc}", file=sys.stderr)
        return 1
    print(
        f"kaapana send: {len(report.results)} instances stored at {where}"
        + (" and verified" if report.verified_at else "")
    )
    return 0
