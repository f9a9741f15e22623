"""The ``kaapana`` command: one subcommand per pipeline step, each calling the same core as the operators.

Subcommands live in :mod:`airflow_provider_kaapana.commands`, one module each. A module defines
``NAME``, ``HELP`` and ``add_arguments(parser)`` plus ``run(args) -> int``; it is discovered here, so
adding a step never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from airflow_provider_kaapana import __version__, commands

QUIET_LIBRARY_LOGGERS = ("opensearch", "elasticsearch", "elastic_transport")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaapana",
        description="Medical-imaging pipeline steps (DICOM, index, NIfTI, nnU-Net, SEG) outside or inside Airflow.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # the search clients log every failed request with its traceback; our own error names the
        # server and the cause in one line (-v shows theirs again)
        for name in QUIET_LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
