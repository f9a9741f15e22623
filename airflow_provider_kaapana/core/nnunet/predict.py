"""nnU-Net inference on a folder of nnU-Net-named NIfTI files, with every parameter applied.

:func:`predict` drives nnU-Net's own ``nnUNetPredictor`` (no re-implementation): test-time mirroring,
tile step size, folds, checkpoint, device and worker counts go straight into it. Beside the label maps it
writes ``labels.json`` (the model's label map, for the SEG export) and ``prediction.json`` (what was
actually applied, including how many times the network was evaluated).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.nnunet.models import (
    DEFAULT_CHECKPOINT,
    ModelInfo,
    parse_fold,
    validate_model_dir,
)
from airflow_provider_kaapana.exceptions import KaapanaError, ModelError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
PROVENANCE_FILE = "prediction.json"
DEVICES = ("cuda", "cpu", "mps", "auto")


def _nnunet_version() -> str:
    # importlib.metadata on use: the `kaapana` command imports this module to build its parser, and
    # importlib.metadata was the largest part of that (tens of ms) for every subcommand
    from importlib import metadata

    return metadata.version("nnunetv2")


@dataclass(frozen=True)
class InputCase:
    case_id: str
    channel_files: tuple[Path, ...]


def find_input_cases(input_dir: str | Path, info: ModelInfo) -> list[InputCase]:
    """Cases in ``input_dir`` named ``<case_id>_<0000..>`` + the model's file ending, all channels present.

    Files that do not follow the naming are ignored (a NIfTI step may leave sidecars beside its output).
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise KaapanaError(f"input folder {folder} does not exist")
    ending = info.file_ending
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    channels_by_case: dict[str, dict[int, Path]] = {}
    for entry in sorted(folder.iterdir()):
        match = pattern.match(entry.name)
        if match and entry.is_file():
            channels_by_case.setdefault(match["case"], {})[int(match["channel"])] = entry
    if not channels_by_case:
        raise KaapanaError(f"input folder {folder} has no <case>_0000{ending} file")
    expected = len(info.channel_names) or 1
    cases: list[InputCase] = []
    for case_id, channels in sorted(channels_by_case.items()):
        if sorted(channels) != list(range(expected)):
            raise KaapanaError(
                f"case {case_id!r} in {folder} has channels {sorted(channels)}, the model "
                f"{info.dataset} needs {list(range(expected))} ({info.channel_names})"
            )
        cases.append(InputCase(case_id, tuple(channels[i] for i in range(expected))))
    return cases


def select_folds(info: ModelInfo, folds: Sequence[int | str] | None) -> list[int | str]:
    """The folds to use: all available when None, else each asked fold, which must exist."""
    if folds is None:
        numeric = [f for f in info.folds if f != "all"]
        return numeric or list(info.folds)
    chosen = [parse_fold(f) for f in folds]
    if not chosen:
        raise ModelError("an empty list of folds was given")
    absent = [f for f in chosen if f not in info.folds]
    if absent:
        raise ModelError(
            f"model {info.path} has no fold {', '.join(map(str, absent))} with its checkpoint "
            f"(available folds: {', '.join(map(str, info.folds))})"
        )
    return chosen


def _torch_device(device: str):
    import torch

    if device not in DEVICES:
        raise KaapanaError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KaapanaError("device 'cuda' was asked for but torch sees no CUDA GPU (use --device cpu)")
    return torch.device(device)


def predict(
    model_dir: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    configuration: str | None = None,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
    device: str = "cuda",
    tta: bool = True,
    step_size: float = 0.5,
    perform_everything_on_device: bool = True,
    num_processes_preprocessing: int = 3,
    num_processes_export: int = 3,
    num_threads: int | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Predict every case in ``input_dir`` with the model in ``model_dir``; returns the label map paths.

    ``model_dir`` is a trainer folder (``Trainer__Plans__configuration``); ``configuration``, when given,
    must be that folder's. ``folds`` None uses all folds holding ``checkpoint``. ``tta`` is nnU-Net's
    mirroring, ``step_size`` its sliding-window tile step (0 < x <= 1). ``device`` is ``cuda``, ``cpu``,
    ``mps`` or ``auto``. ``num_threads`` None follows ``nnUNetv2_predict`` (all cores on CPU, 1 on GPU).
    Worker counts of 0 and 0 predict without extra processes. Label maps are ``<case_id><file_ending>``
    in ``output_dir``, beside ``labels.json`` and ``prediction.json``.
    """
    info = validate_model_dir(model_dir, checkpoint=checkpoint)
    if configuration is not None and configuration != info.configuration:
        raise ModelError(
            f"model folder {info.path} holds configuration {info.configuration!r}, not {configuration!r}"
        )
    use_folds = select_folds(info, folds)
    if not 0 < step_size <= 1:
        raise KaapanaError(f"step size {step_size} is outside (0, 1]")
    cases = find_input_cases(input_dir, info)
    torch_device = _torch_device(device)

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if num_threads is None:
        num_threads = (os.cpu_count() or 1) if torch_device.type == "cpu" else 1
    torch.set_num_threads(max(1, num_threads))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictor = nnUNetPredictor(
        tile_step_size=step_size,
        use_gaussian=True,
        use_mirroring=tta,
        perform_everything_on_device=perform_everything_on_device,
        device=torch_device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(info.path), use_folds, checkpoint_name=checkpoint)
    evaluations = [0]

    def _count(_module, _inputs, _output) -> None:
        evaluations[0] += 1

    handle = predictor.network.register_forward_hook(_count)
    inputs = [[str(p) for p in case.channel_files] for case in cases]
    targets = [str(out / case.case_id) for case in cases]
    try:
        if num_processes_preprocessing == 0 and num_processes_export == 0:
            predictor.predict_from_files_sequential(
                inputs, targets, save_probabilities=False, overwrite=overwrite
            )
        else:
            predictor.predict_from_files(
                inputs,
                targets,
                save_probabilities=False,
                overwrite=overwrite,
                num_processes_preprocessing=max(1, num_processes_preprocessing),
                num_processes_segmentation_export=max(1, num_processes_export),
            )
    finally:
        handle.remove()
    label_maps = [out / f"{case.case_id}{info.file_ending}" for case in cases]
    absent = [str(p) for p in label_maps if not p.is_file()]
    if absent:
        raise KaapanaError(f"nnU-Net wrote no label map {', '.join(absent)}")
    (out / LABELS_FILE).write_text(json.dumps(info.labels, indent=2))
    provenance: dict[str, Any] = {
        "model": info.to_dict(),
        "folds": use_folds,
        "checkpoint": checkpoint,
        "device": str(torch_device),
        "tta": tta,
        "mirror_axes": list(predictor.allowed_mirroring_axes or []) if tta else [],
        "step_size": step_size,
        "perform_everything_on_device": predictor.perform_everything_on_device,
        "num_threads": num_threads,
        "network_evaluations": evaluations[0],
        "cases": {case.case_id: str(path) for case, path in zip(cases, label_maps)},
        "seconds": round(time.perf_counter() - started, 3),
        "nnunetv2": _nnunet_version(),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    log.info("predicted %d case(s) with %s into %s", len(cases), info.path, out)
    return label_maps
