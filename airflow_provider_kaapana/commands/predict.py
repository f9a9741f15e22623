"""``kaapana predict``: nnU-Net inference on a folder of NIfTI files (the command the GPU pod runs)."""

from __future__ import annotations

import argparse
import json
import sys

from airflow_provider_kaapana.core.nnunet.models import DEFAULT_CHECKPOINT
from airflow_provider_kaapana.core.nnunet.predict import DEVICES
from airflow_provider_kaapana.exceptions import KaapanaError

NAME = "predict"
HELP = "run an nnU-Net model on a folder of nnU-Net-named NIfTI files and write label maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a trainer folder (Trainer__Plans__configuration), a dataset folder, or an installed "
        "dataset name/id (looked up in --models-dir)",
    )
    parser.add_argument("-i", "--input", dest="input_dir", required=True, help="folder of <case>_0000.nii.gz")
    parser.add_argument("-o", "--output", dest="output_dir", required=True, help="folder for the label maps")
    parser.add_argument("--models-dir", default=None, help="model store (default: $KAAPANA_MODELS_DIR)")
    parser.add_argument("--configuration", default=None, help="e.g. 3d_fullres (default: the model's)")
    parser.add_argument("--folds", nargs="+", default=None, help="folds to use (default: all available)")
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint file name")
    parser.add_argument("--device", default="cuda", choices=list(DEVICES))
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time mirroring")
    parser.add_argument("--step-size", type=float, default=0.5, help="sliding-window tile step (0, 1]")
    parser.add_argument(
        "--not-on-device",
        dest="on_device",
        action="store_false",
        help="keep the sliding-window result in host memory (large images on small GPUs)",
    )
    parser.add_argument("--npp", type=int, default=3, help="preprocessing worker processes")
    parser.add_argument("--nps", type=int, default=3, help="export worker processes (0 and --npp 0: none)")
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads (default as nnU-Net)")


def run(args: argparse.Namespace) -> int:
    from airflow_provider_kaapana.core.nnunet.models import resolve_model
    from airflow_provider_kaapana.core.nnunet.predict import LABELS_FILE, predict

    try:
        model_dir = resolve_model(args.model, args.models_dir, args.configuration)
        label_maps = predict(
            model_dir,
            args.input_dir,
            args.output_dir,
            configuration=args.configuration,
            folds=args.folds,
            checkpoint=args.checkpoint,
            device=args.device,
            tta=args.tta,
            step_size=args.step_size,
            perform_everything_on_device=args.on_device,
            num_processes_preprocessing=args.npp,
            num_processes_export=args.nps,
            num_threads=args.num_threads,
        )
    except KaapanaError as exc:
        print(f"kaapana predict: error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "model": str(model_dir),
        "label_maps": [str(p) for p in label_maps],
        "labels_path": str(label_maps[0].parent / LABELS_FILE),
    }
    print(json.dumps(summary))
    return 0
