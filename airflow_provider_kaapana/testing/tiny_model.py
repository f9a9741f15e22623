"""A real, tiny nnU-Net model trained on synthetic spheres, for tests, the demo and the benchmarks.

Nothing is downloaded: :func:`train_tiny_model` writes synthetic NIfTI cases (a bright sphere in noise),
plans and preprocesses them with nnU-Net, trains fold 0 for a few dozen iterations under the default
``nnUNetTrainer`` name and caches the trained model folder, keyed by the parameters and the nnU-Net version.
Training runs in a child process so that nnU-Net's path variables (``nnUNet_raw`` ...) are set only there.
:func:`write_tiny_case` writes an unseen case and its truth, :func:`dice_score` compares label maps.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

TINY_DATASET_ID = 901
TINY_DATASET_NAME = f"Dataset{TINY_DATASET_ID:03d}_TinySphere"
TINY_TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
TINY_LABELS: dict[str, int] = {"background": 0, "sphere": 1}
DEFAULT_CACHE_DIR = Path("~/.cache/kaapana/tiny-model")
# bump when the synthetic data or the training recipe changes, so old caches are not reused
_RECIPE_VERSION = 1
# files of a trained model folder that inference needs (plus the training log picture)
_KEEP = ("dataset.json", "plans.json", "dataset_fingerprint.json")


@dataclass(frozen=True)
class TinyCase:
    """An unseen synthetic case: ``image_path`` (``<case_id>_0000.nii.gz``) and its truth label map."""

    case_id: str
    image_path: Path
    truth_path: Path
    truth: np.ndarray


def _sphere_volume(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy background with one bright sphere; returns (image float32, label uint8), both (size,)*3."""
    radius = rng.uniform(0.18, 0.28) * size
    margin = radius + 1
    center = rng.uniform(margin, size - 1 - margin, size=3)
    grid = np.indices((size, size, size), dtype=np.float32).transpose(1, 2, 3, 0)
    inside = np.sum((grid - center) ** 2, axis=-1) <= radius**2
    image = rng.normal(100.0, 20.0, size=(size,) * 3).astype(np.float32)
    image[inside] += 400.0
    return image, inside.astype(np.uint8)


def _write_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


def write_tiny_case(
    image_dir: str | Path,
    *,
    case_id: str = "tiny_unseen",
    size: int = 32,
    seed: int = 1000,
    truth_dir: str | Path | None = None,
) -> TinyCase:
    """Write one unseen case as ``<image_dir>/<case_id>_0000.nii.gz`` and its truth.

    The truth goes to ``<truth_dir>/<case_id>.nii.gz`` (default: a ``<image_dir>_truth`` sibling folder), so
    ``image_dir`` holds only nnU-Net inputs. Voxel spacing is 1 mm, identity affine, as in training.
    """
    image_dir = Path(image_dir)
    truth_dir = Path(truth_dir) if truth_dir is not None else image_dir.parent / f"{image_dir.name}_truth"
    image, label = _sphere_volume(size, np.random.default_rng(seed))
    image_path = image_dir / f"{case_id}_0000.nii.gz"
    truth_path = truth_dir / f"{case_id}.nii.gz"
    _write_nifti(image_path, image)
    _write_nifti(truth_path, label)
    return TinyCase(case_id, image_path, truth_path, label)


def dice_score(prediction: np.ndarray, truth: np.ndarray, label: int = 1) -> float:
    """Dice coefficient of one label; 1.0 when the label is absent from both."""
    a = np.asarray(prediction) == label
    b = np.asarray(truth) == label
    denominator = int(a.sum() + b.sum())
    return 1.0 if denominator == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denominator


def _nnunet_version() -> str:
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return "missing"


def tiny_model_key(*, cases: int, size: int, epochs: int, iterations_per_epoch: int, seed: int) -> str:
    """The cache key: a hash of the training parameters, the recipe and the nnU-Net version."""
    spec = {
        "cases": cases,
        "size": size,
        "epochs": epochs,
        "iterations_per_epoch": iterations_per_epoch,
        "seed": seed,
        "recipe": _RECIPE_VERSION,
        "nnunetv2": _nnunet_version(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def train_tiny_model(
    work_dir: str | Path | None = None,
    *,
    cases: int = 8,
    size: int = 32,
    epochs: int = 3,
    iterations_per_epoch: int = 15,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    timeout: float = 1800,
) -> Path:
    """Train (or reuse from the cache) a tiny nnU-Net model; returns its trainer folder.

    The folder is ``<cache_dir>/<key>/Dataset901_TinySphere/nnUNetTrainer__nnUNetPlans__3d_fullres`` with
    ``dataset.json`` (labels ``{"background": 0, "sphere": 1}``), ``plans.json`` and
    ``fold_0/checkpoint_final.pth``: the layout ``kaapana predict --model`` and nnU-Net's own predictor read.
    ``work_dir`` holds the raw/preprocessed/results trees while training (a temporary folder when None);
    ``cache_dir`` defaults to ``~/.cache/kaapana/tiny-model``. Training needs the ``nnunet`` extra.
    """
    if cases < 6:
        raise ValueError("nnU-Net's default 5-fold split needs at least 6 training cases")
    cache_root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser()
    key = tiny_model_key(
        cases=cases, size=size, epochs=epochs, iterations_per_epoch=iterations_per_epoch, seed=seed
    )
    entry = cache_root / key
    model_dir = entry / TINY_DATASET_NAME / TINY_TRAINER_FOLDER
    if (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
        return model_dir
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{key}.lock", "w") as lock:
        # a second process asking for the same model waits for the first one's result
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
            return model_dir
        with contextlib.ExitStack() as stack:
            if work_dir is None:
                work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kaapana-tiny-model-"))
            work = Path(work_dir) / key
            shutil.rmtree(work, ignore_errors=True)
            spec = {
                "work": str(work),
                "cases": cases,
                "size": size,
                "epochs": epochs,
                "iterations_per_epoch": iterations_per_epoch,
                "seed": seed,
            }
            env = dict(os.environ)
            env.update(
                nnUNet_raw=str(work / "nnUNet_raw"),
                nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
                nnUNet_results=str(work / "nnUNet_results"),
                nnUNet_n_proc_DA="1",  # planning sets torch threads from this; training switches to 0
                nnUNet_compile="false",
            )
            result = subprocess.run(
                [sys.executable, "-m", __name__, json.dumps(spec)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if result.returncode != 0:
                raise RuntimeError(
                    f"tiny nnU-Net training failed (exit {result.returncode}):\n"
                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
                )
            trained = work / "nnUNet_results" / TINY_DATASET_NAME / TINY_TRAINER_FOLDER
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_root))
            target = staging / TINY_DATASET_NAME / TINY_TRAINER_FOLDER
            (target / "fold_0").mkdir(parents=True)
            for name in _KEEP:
                shutil.copy2(trained / name, target / name)
            for name in ("checkpoint_final.pth", "progress.png"):
                if (trained / "fold_0" / name).is_file():
                    shutil.copy2(trained / "fold_0" / name, target / "fold_0" / name)
            shutil.rmtree(entry, ignore_errors=True)
            staging.rename(entry)
    return model_dir


def _train(spec: dict) -> None:
    """Child-process body: write the dataset, plan, preprocess and train fold 0 (env already set)."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    work = Path(spec["work"])
    raw = work / "nnUNet_raw" / TINY_DATASET_NAME
    rng = np.random.default_rng(spec["seed"])
    for i in range(spec["cases"]):
        image, label = _sphere_volume(spec["size"], rng)
        _write_nifti(raw / "imagesTr" / f"sphere_{i:03d}_0000.nii.gz", image)
        _write_nifti(raw / "labelsTr" / f"sphere_{i:03d}.nii.gz", label)
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "name": "TinySphere",
                "description": "synthetic bright spheres in noise (airflow-provider-kaapana tests)",
                "channel_names": {"0": "MR"},
                "labels": TINY_LABELS,
                "numTraining": spec["cases"],
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    extract_fingerprints([TINY_DATASET_ID], num_processes=1, check_dataset_integrity=True)
    plan_experiments([TINY_DATASET_ID])
    preprocess([TINY_DATASET_ID], configurations=("3d_fullres",), num_processes=(1,))

    # single-threaded augmentation while training: no worker processes on small machines
    os.environ["nnUNet_n_proc_DA"] = "0"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    preprocessed = work / "nnUNet_preprocessed" / TINY_DATASET_NAME
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainer(
        plans=plans,
        configuration="3d_fullres",
        fold=0,
        dataset_json=load_json(str(preprocessed / "dataset.json")),
        device=torch.device("cpu"),
    )
    trainer.num_epochs = spec["epochs"]
    trainer.num_iterations_per_epoch = spec["iterations_per_epoch"]
    trainer.num_val_iterations_per_epoch = 2
    trainer.run_training()


if __name__ == "__main__":
    _train(json.loads(sys.argv[1]))
