"""The nnU-Net model store: install export zips, list installed models, validate a model folder.

Layout (what ``nnUNetv2_export_model_to_zip`` writes, below one models directory)::

    <models_dir>/<DatasetXXX_Name>/<Trainer>__<Plans>__<configuration>/
        dataset.json  plans.json  fold_<N>/checkpoint_final.pth ...

Listing reads JSON files and directory entries only (no torch import); :func:`installed_datasets`, what
the DAG library lists when DAG files are parsed, reads directory entries alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.paths import path_component, path_under
from airflow_provider_kaapana.exceptions import ModelError, UnsafePathError

DEFAULT_CHECKPOINT = "checkpoint_final.pth"
DEFAULT_MODELS_DIR = "~/.local/share/kaapana/models"  # the CLI's model store on a workstation
# The model store of a deployment: where the DAG library's workers and the nnU-Net pods mount it
# (PipelineSettings.models_dir, NnUNetPredictOperator's models_dir); not a default of the CLI.
POD_MODELS_DIR = "/models"
MODELS_DIR_ENV = "KAAPANA_MODELS_DIR"
_DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)$")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


def default_models_dir() -> Path:
    """``$KAAPANA_MODELS_DIR``, else ``~/.local/share/kaapana/models`` (read when called, never at import)."""
    return Path(os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR).expanduser()


@dataclass(frozen=True)
class ModelInfo:
    """One trained nnU-Net model folder (one trainer, plans and configuration of one dataset)."""

    path: Path
    dataset: str  # "Dataset901_TinySphere"
    trainer: str
    plans: str
    configuration: str
    labels: dict[str, Any]  # dataset.json "labels": name -> value (int, or list of ints for regions)
    folds: tuple[int | str, ...]  # folds holding the checkpoint asked for, numeric first, then "all"
    channel_names: dict[str, str] = field(default_factory=dict)
    file_ending: str = ".nii.gz"

    @property
    def dataset_id(self) -> int | None:
        match = _DATASET_RE.match(self.dataset)
        return int(match.group(1)) if match else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "trainer": self.trainer,
            "plans": self.plans,
            "configuration": self.configuration,
            "labels": self.labels,
            "folds": list(self.folds),
            "channel_names": self.channel_names,
            "file_ending": self.file_ending,
        }


def _fold_key(fold: int | str) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def parse_fold(value: int | str) -> int | str:
    """``"3"`` -> 3, ``"all"`` -> ``"all"``; anything else is a :class:`ModelError`."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    if str(value) == "all":
        return "all"
    raise ModelError(f"fold {value!r} is neither a fold number nor 'all'")


def _load_json(path: Path, missing: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        missing.append(path.name)
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        missing.append(f"{path.name} (unreadable: {exc})")
        return None
    if not isinstance(data, dict):
        missing.append(f"{path.name} (not a JSON object)")
        return None
    return data


def available_folds(model_dir: str | Path, checkpoint: str = DEFAULT_CHECKPOINT) -> tuple[int | str, ...]:
    """Folds of a model folder that hold ``checkpoint``."""
    folds: list[int | str] = []
    for entry in Path(model_dir).iterdir() if Path(model_dir).is_dir() else ():
        match = _FOLD_RE.match(entry.name)
        if match and (entry / checkpoint).is_file():
            folds.append(parse_fold(match.group(1)))
    return tuple(sorted(folds, key=_fold_key))


def validate_model_dir(path: str | Path, *, checkpoint: str = DEFAULT_CHECKPOINT) -> ModelInfo:
    """Check that ``path`` is a usable trainer folder; :class:`ModelError` names everything missing."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    missing: list[str] = []
    dataset_json = _load_json(model_dir / "dataset.json", missing)
    plans_json = _load_json(model_dir / "plans.json", missing)
    parts = model_dir.name.split("__")
    if len(parts) != 3:
        missing.append(f"a folder name of the form Trainer__Plans__configuration (got {model_dir.name!r})")
        parts = ["?", "?", "?"]
    trainer, plans, configuration = parts
    if dataset_json is not None:
        for key in ("labels", "channel_names", "file_ending"):
            if key not in dataset_json:
                missing.append(f"dataset.json key {key!r}")
    if plans_json is not None:
        configurations = plans_json.get("configurations") or {}
        if configuration != "?" and configuration not in configurations:
            missing.append(
                f"plans.json configuration {configuration!r} (it has {sorted(configurations) or 'none'})"
            )
    folds = available_folds(model_dir, checkpoint)
    if not folds:
        missing.append(f"any fold_<N>/{checkpoint}")
    if missing:
        raise ModelError(f"model folder {model_dir} is missing: " + "; ".join(missing))
    assert dataset_json is not None and plans_json is not None
    dataset = str(plans_json.get("dataset_name") or model_dir.parent.name)
    return ModelInfo(
        path=model_dir,
        dataset=dataset,
        trainer=trainer,
        plans=plans,
        configuration=configuration,
        labels=dict(dataset_json["labels"]),
        folds=folds,
        channel_names={str(k): str(v) for k, v in dataset_json["channel_names"].items()},
        file_ending=str(dataset_json["file_ending"]),
    )


def _is_trainer_dir(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file() and len(path.name.split("__")) == 3


def list_models(models_dir: str | Path | None = None) -> list[ModelInfo]:
    """Every valid model folder under ``models_dir`` (sorted); broken folders are left out."""
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    found: list[ModelInfo] = []
    if not root.is_dir():
        return found
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for trainer_dir in sorted(p for p in dataset_dir.iterdir() if _is_trainer_dir(p)):
            try:
                found.append(validate_model_dir(trainer_dir))
            except ModelError:
                continue
    return found


def installed_datasets(models_dir: str | Path | None = None) -> list[str]:
    """Names of the dataset folders holding at least one trainer folder (sorted), from directory
    entries alone: no file is opened (cheap enough for DAG parse time; :func:`list_models` validates)."""
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if not root.is_dir():
        return []
    return sorted(
        dataset_dir.name
        for dataset_dir in root.iterdir()
        if dataset_dir.is_dir() and any(_is_trainer_dir(p) for p in dataset_dir.iterdir())
    )


def resolve_model(
    model: str | Path, models_dir: str | Path | None = None, configuration: str | None = None
) -> Path:
    """The trainer folder meant by ``model``: a trainer folder, a dataset folder, or a dataset name/id.

    A dataset name (``Dataset901_TinySphere``), its number (``901``) or its short name (``TinySphere``) is
    looked up in ``models_dir``. Among several configurations, ``configuration`` picks one (default
    ``3d_fullres`` when there, else the only one).
    """
    path = Path(model).expanduser()
    if _is_trainer_dir(path):
        candidates = [path]
    else:
        if path.is_dir():
            dataset_dirs = [path]
        else:
            root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
            wanted = str(model)
            dataset_dirs = []
            for entry in sorted(root.iterdir()) if root.is_dir() else ():
                match = _DATASET_RE.match(entry.name)
                if entry.is_dir() and (
                    entry.name == wanted
                    or (match and wanted.isdigit() and int(match.group(1)) == int(wanted))
                    or (match and match.group(2) == wanted)
                ):
                    dataset_dirs.append(entry)
            if not dataset_dirs:
                raise ModelError(f"no model {wanted!r}: not a folder, and not a dataset installed in {root}")
        candidates = [p for d in dataset_dirs for p in sorted(d.iterdir()) if _is_trainer_dir(p)]
        if not candidates:
            raise ModelError(f"no trained model folder (Trainer__Plans__configuration) in {dataset_dirs[0]}")
    if configuration is not None:
        chosen = [p for p in candidates if p.name.split("__")[2] == configuration]
        if not chosen:
            have = sorted({p.name.split("__")[2] for p in candidates})
            raise ModelError(f"model {model} has no configuration {configuration!r} (it has {have})")
        candidates = chosen
    elif len(candidates) > 1:
        fullres = [p for p in candidates if p.name.split("__")[2] == "3d_fullres"]
        if len(fullres) == 1:
            candidates = fullres
    if len(candidates) > 1:
        raise ModelError(
            f"model {model} is ambiguous; choose one of {[p.name for p in candidates]} with a configuration"
        )
    return candidates[0]


def _check_member(zip_path: Path, member: str) -> None:
    """Refuse a zip member whose path could land outside the staging folder (zip-slip)."""
    if member.startswith("/") or (member[:1].isalpha() and member[1:2] == ":"):
        raise ModelError(f"{zip_path}: refusing unsafe member path {member!r}: an absolute path")
    for part in member.rstrip("/").split("/"):
        try:
            path_component(part, f"{zip_path}: unsafe member path {member!r}")
        except UnsafePathError as exc:
            raise ModelError(str(exc)) from None


def install_model(zip_path: str | Path, models_dir: str | Path | None = None) -> list[ModelInfo]:
    """Install an nnU-Net export zip into ``models_dir``; returns the installed model folders.

    Every trainer folder in the zip is validated before anything is replaced; installing the same zip
    again replaces its folders (idempotent). Members with absolute or ``..`` paths are refused.
    """
    zip_path = Path(zip_path)
    root = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    if not zipfile.is_zipfile(zip_path):
        raise ModelError(f"{zip_path} is not a zip file")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                _check_member(zip_path, member)
            archive.extractall(staging)
        trainer_dirs = sorted(
            {p.parent for p in staging.rglob("plans.json") if _is_trainer_dir(p.parent)}, key=str
        )
        if not trainer_dirs:
            raise ModelError(
                f"{zip_path} holds no model folder (DatasetXXX_Name/Trainer__Plans__configuration/plans.json)"
            )
        infos = [validate_model_dir(p) for p in trainer_dirs]
        # the dataset name comes from the zip's plans.json: checked like any name from a file, and
        # for every model before anything is replaced
        targets = [
            path_under(root, info.dataset, info.path.name, source=f"dataset_name in {zip_path}'s plans.json")
            for info in infos
        ]
        installed: list[ModelInfo] = []
        for info, target in zip(infos, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(info.path), str(target))
            installed.append(validate_model_dir(target))
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_model_zip(model_dir: str | Path, zip_path: str | Path) -> Path:
    """Zip a trainer folder in the layout of ``nnUNetv2_export_model_to_zip`` (``Dataset/Trainer__Plans__Config/...``).

    The inverse of :func:`install_model`: what this writes, ``install_model`` installs.
    """
    import zipfile

    model_dir = Path(model_dir)
    validate_model_dir(model_dir)
    base = model_dir.parent.parent
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(base).as_posix())
    return zip_path
