"""The nnU-Net runner, the model store and ``kaapana predict``/``kaapana models`` with a real tiny model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import pytest

from airflow_provider_kaapana.core.nnunet.models import (
    export_model_zip,
    install_model,
    list_models,
    resolve_model,
    validate_model_dir,
)
from airflow_provider_kaapana.core.nnunet.predict import predict
from airflow_provider_kaapana.exceptions import KaapanaError, ModelError
from airflow_provider_kaapana.testing.tiny_model import TINY_LABELS, dice_score, write_tiny_case

pytestmark = pytest.mark.slow


def kaapana(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )


def test_cli_predicts_unseen_case_with_dice_and_label_map(tiny_nnunet_model: Path, tmp_path: Path):
    case = write_tiny_case(tmp_path / "in", case_id="unseen", seed=4242)
    (tmp_path / "in" / "notes.json").write_text("{}")  # a sidecar that is not an nnU-Net input
    result = kaapana(
        "predict", "--model", str(tiny_nnunet_model), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
        "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["label_maps"] == [str(tmp_path / "out" / "unseen.nii.gz")]
    prediction = nib.load(summary["label_maps"][0])
    truth = nib.load(case.truth_path)
    assert prediction.shape == truth.shape
    assert (prediction.affine == truth.affine).all()
    assert dice_score(prediction.get_fdata(), case.truth) >= 0.8
    assert json.loads(Path(summary["labels_path"]).read_text()) == TINY_LABELS
    provenance = json.loads((tmp_path / "out" / "prediction.json").read_text())
    # one 32^3 tile, mirrored over all three axes: 8 network evaluations
    assert provenance["tta"] is True and provenance["mirror_axes"] == [0, 1, 2]
    assert provenance["network_evaluations"] == 8
    assert provenance["folds"] == [0]


def test_no_tta_and_step_size_reach_the_predictor(tiny_nnunet_model: Path, tmp_path: Path):
    write_tiny_case(tmp_path / "in", case_id="big", size=64, seed=7)
    counts = {}
    for step_size in (0.5, 1.0):
        out = tmp_path / f"out-{step_size}"
        paths = predict(
            tiny_nnunet_model, tmp_path / "in", out, device="cpu", tta=False, step_size=step_size, folds=["0"],
            num_processes_preprocessing=0, num_processes_export=0, num_threads=2,
        )  # fmt: skip
        assert paths == [out / "big.nii.gz"] and paths[0].is_file()
        provenance = json.loads((out / "prediction.json").read_text())
        assert provenance["tta"] is False and provenance["mirror_axes"] == []
        counts[step_size] = provenance["network_evaluations"]
    # 64^3 with 32^3 tiles: 3 positions per axis at step 0.5, 2 at step 1.0; no mirroring
    assert counts == {0.5: 27, 1.0: 8}


def test_invalid_fold_configuration_and_step_are_refused(tiny_nnunet_model: Path, tmp_path: Path):
    write_tiny_case(tmp_path / "in")
    with pytest.raises(ModelError, match=r"no fold 3 .*available folds: 0"):
        predict(tiny_nnunet_model, tmp_path / "in", tmp_path / "out", device="cpu", folds=[3])
    with pytest.raises(ModelError, match="not '2d'"):
        predict(tiny_nnunet_model, tmp_path / "in", tmp_path / "out", device="cpu", configuration="2d")
    with pytest.raises(KaapanaError, match="step size 1.5"):
        predict(tiny_nnunet_model, tmp_path / "in", tmp_path / "out", device="cpu", step_size=1.5)
    with pytest.raises(KaapanaError, match="no <case>_0000.nii.gz"):
        predict(tiny_nnunet_model, tmp_path, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    result = kaapana(
        "predict", "--model", str(tiny_nnunet_model), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
        "--device", "cpu", "--folds", "3",
    )  # fmt: skip
    assert result.returncode == 1
    assert "no fold 3" in result.stderr and "Traceback" not in result.stderr


def test_broken_model_folder_names_what_is_missing(tiny_nnunet_model: Path, tmp_path: Path):
    broken = tmp_path / "Dataset901_TinySphere" / tiny_nnunet_model.name
    shutil.copytree(tiny_nnunet_model, broken)
    (broken / "plans.json").unlink()
    (broken / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelError) as excinfo:
        validate_model_dir(broken)
    message = str(excinfo.value)
    assert str(broken) in message and "plans.json" in message and "fold_<N>/checkpoint_final.pth" in message
    write_tiny_case(tmp_path / "in")
    with pytest.raises(ModelError, match="plans.json"):
        predict(broken, tmp_path / "in", tmp_path / "out", device="cpu")
    # a folder that is not a trainer folder at all
    with pytest.raises(ModelError, match="Trainer__Plans__configuration"):
        validate_model_dir(tmp_path / "in")
    # broken models are left out of the listing instead of breaking it
    assert list_models(tmp_path) == []


def test_install_from_zip_round_trips(tiny_nnunet_model: Path, tmp_path: Path):
    zip_path = export_model_zip(tiny_nnunet_model, tmp_path / "tiny.zip")
    models_dir = tmp_path / "models"
    result = kaapana("models", "install", str(zip_path), "--models-dir", str(models_dir))
    assert result.returncode == 0, result.stderr
    installed = models_dir / "Dataset901_TinySphere" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (installed / "fold_0" / "checkpoint_final.pth").read_bytes() == (
        tiny_nnunet_model / "fold_0" / "checkpoint_final.pth"
    ).read_bytes()
    # installing again replaces, it does not nest or fail
    assert [i.path for i in install_model(zip_path, models_dir)] == [installed]
    assert sorted(p.name for p in models_dir.iterdir()) == ["Dataset901_TinySphere"]

    listing = kaapana("models", "list", "--models-dir", str(models_dir), "--json")
    assert listing.returncode == 0, listing.stderr
    (model,) = json.loads(listing.stdout)
    assert model["dataset"] == "Dataset901_TinySphere" and model["dataset_id"] == 901
    assert model["configuration"] == "3d_fullres" and model["folds"] == [0]
    assert model["labels"] == TINY_LABELS
    table = kaapana("models", "list", "--models-dir", str(models_dir))
    assert "Dataset901_TinySphere\t3d_fullres" in table.stdout and "sphere=1" in table.stdout

    for name in ("Dataset901_TinySphere", "901", "TinySphere", str(installed.parent), str(installed)):
        assert resolve_model(name, models_dir) == installed
    with pytest.raises(ModelError, match="no configuration '2d'"):
        resolve_model("901", models_dir, configuration="2d")
    with pytest.raises(ModelError, match="no model '902'"):
        resolve_model("902", models_dir)


def test_install_refuses_unsafe_or_empty_zips(tmp_path: Path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(ModelError, match="unsafe member path"):
        install_model(evil, tmp_path / "models")
    assert not (tmp_path / "outside.txt").exists()
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("Dataset001_X/readme.txt", "x")
    with pytest.raises(ModelError, match="holds no model folder"):
        install_model(empty, tmp_path / "models")
    (tmp_path / "notzip.zip").write_text("nope")
    result = kaapana("models", "install", str(tmp_path / "notzip.zip"), "--models-dir", str(tmp_path / "m"))
    assert result.returncode == 1 and "is not a zip file" in result.stderr


def test_tiny_model_is_cached_by_its_parameters(tiny_nnunet_model: Path):
    from airflow_provider_kaapana.testing.tiny_model import tiny_model_key, train_tiny_model

    again = train_tiny_model(cache_dir=os.environ.get("KAAPANA_TINY_MODEL_CACHE"))  # no training: cached
    assert again == tiny_nnunet_model
    assert tiny_nnunet_model.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert tiny_nnunet_model.parent.name == "Dataset901_TinySphere"
    assert tiny_nnunet_model.parent.parent.name == tiny_model_key(
        cases=8, size=32, epochs=3, iterations_per_epoch=15, seed=0
    )
    assert tiny_model_key(cases=8, size=32, epochs=3, iterations_per_epoch=15, seed=1) != (
        tiny_nnunet_model.parent.parent.name
    )
    with pytest.raises(ValueError, match="at least 6"):
        train_tiny_model(cases=5)
