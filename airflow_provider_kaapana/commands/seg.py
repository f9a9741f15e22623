"""``kaapana seg``: a NIfTI label map -> DICOM SEG referencing its source series (same core as the operator)."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "seg"
HELP = "export a NIfTI label map as a DICOM SEG aligned to its source series"

# exit status when the label map holds no finding (nothing written): distinct from errors (1)
EXIT_NO_FINDINGS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, help="NIfTI label map (.nii / .nii.gz)")
    parser.add_argument("--source", required=True, help="folder with the source series' DICOM files")
    parser.add_argument("--config", required=True, help="nnU-Net dataset.json or rich label config (JSON)")
    parser.add_argument("-o", "--output", required=True, help="SEG file to write")
    parser.add_argument(
        "--sidecar",
        default=None,
        help="NiftiConvert sidecar JSON to cross-check (default: <labels stem>.json)",
    )
    parser.add_argument("--type", default="BINARY", choices=["BINARY", "FRACTIONAL", "LABELMAP"])
    parser.add_argument("--empty-labels", default="describe", choices=["describe", "omit"])
    parser.add_argument("--model-id", default="nnunet", help="model identity (fixes the SEG UIDs)")
    parser.add_argument("--configuration", default="default", help="model configuration (fixes the SEG UIDs)")
    parser.add_argument("--algorithm-name", default=None, help="default: the config's, else nnU-Net")
    parser.add_argument("--algorithm-version", default="2")
    parser.add_argument(
        "--algorithm-family", default="ArtificialIntelligence", help="a DICOM CID 7162 keyword"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.seg.export import AlgorithmInfo, export_seg
    from airflow_provider_kaapana.exceptions import KaapanaError, NoFindingsError

    algorithm = (
        AlgorithmInfo(args.algorithm_name, args.algorithm_version, args.algorithm_family)
        if args.algorithm_name
        else None
    )
    try:
        result = export_seg(
            args.labels,
            args.source,
            args.config,
            args.output,
            segmentation_type=args.type,
            algorithm=algorithm,
            empty_label_policy=args.empty_labels,
            model_id=args.model_id,
            configuration=args.configuration,
            sidecar_path=args.sidecar,
        )
    except NoFindingsError as exc:
        print(f"kaapana seg: no findings, nothing written: {exc}", file=sys.stderr)
        return EXIT_NO_FINDINGS
    except (KaapanaError, ValueError) as exc:
        print(f"kaapana seg: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        labels = ", ".join(f"{s.segment_number}={s.label}" for s in result.segments)
        print(f"{result.seg_path}: {result.number_of_frames} frames, segments {labels}")
        print(
            f"SeriesInstanceUID {result.seg_series_instance_uid} SOPInstanceUID {result.seg_sop_instance_uid}"
        )
    return 0
