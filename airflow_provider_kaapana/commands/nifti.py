"""``kaapana nifti SERIES_DIR -o OUT_DIR``: convert one DICOM series directory to NIfTI volume(s) + sidecars."""

from __future__ import annotations

import argparse
import sys

NAME = "nifti"
HELP = "convert a DICOM series directory to NIfTI (geometry as dcm2niix) with a slice-to-SOP-instance sidecar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("series_dir", metavar="SERIES_DIR", help="directory holding the series' DICOM files")
    parser.add_argument(
        "-o", "--out-dir", required=True, metavar="OUT_DIR", help="where to write the volumes"
    )
    parser.add_argument("--name", default=None, help="file stem (default: the SeriesInstanceUID)")
    parser.add_argument("--suffix", default="", help="appended to the stem, e.g. _0000 for nnU-Net")
    parser.add_argument("--no-compress", action="store_true", help="write .nii instead of .nii.gz")
    parser.add_argument(
        "--spacing-rtol",
        type=float,
        default=0.01,
        help="allowed relative deviation of any slice gap from the typical spacing (default 0.01)",
    )


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.nifti.convert import convert_series
    from airflow_provider_kaapana.exceptions import KaapanaError

    try:
        volumes = convert_series(
            args.series_dir,
            args.out_dir,
            name=args.name,
            suffix=args.suffix,
            compress=not args.no_compress,
            spacing_rtol=args.spacing_rtol,
        )
    except KaapanaError as exc:
        print(f"kaapana nifti: {exc}", file=sys.stderr)
        return 1
    for volume in volumes:
        print(volume.nifti_path)
        print(volume.sidecar_path)
    return 0
