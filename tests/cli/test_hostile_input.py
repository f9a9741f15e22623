"""Hostile values from files never become paths: every subcommand and operator that writes files.

Issue 19 item 1: a SeriesInstanceUID such as ``../../../X`` or an absolute path made ``kaapana nifti``
write outside ``-o`` with exit code 0. Each case here runs on files carrying a hostile UID and checks
that nothing was written outside the output folder and that the refusal names the value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_provider_kaapana.core.dicom.uids import is_valid_uid, uid_path, validate_uid
from airflow_provider_kaapana.core.paths import path_component, path_under
from airflow_provider_kaapana.exceptions import KaapanaError, UnsafePathError
from airflow_provider_kaapana.testing.synthetic import generate_series
from tests.core.test_seg import DATASET_JSON, save_label_map

HOSTILE = {
    "parent": "../../../escaped",
    "absolute": "ABSOLUTE",  # replaced by a path under tmp_path (so an escape is seen, and cleaned up)
    "bulk": "1.2.3/../../_bulk",
    "long": "1." + "2" * 600,
    "backslash": "..\\..\\escaped",
}


def kaapana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args], capture_output=True, text=True, timeout=180
    )


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request, tmp_path: Path):
    """(hostile uid, series folder, label map of the same geometry, config, work root)."""
    uid = HOSTILE[request.param]
    if uid == "ABSOLUTE":
        uid = str(tmp_path / "abs-escaped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the over-long / odd UI value it writes
        series = generate_series(tmp_path / "in" / "series", series_instance_uid=uid, slices=6)
    label_map = save_label_map(series, tmp_path / "in" / "labels.nii.gz")
    config = tmp_path / "in" / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    out = tmp_path / "w" / "x" / "out"  # "../../../escaped" from here lands in tmp_path
    return SimpleNamespace(uid=uid, series=series, labels=label_map, config=config, root=tmp_path, out=out)


def _assert_contained(h: SimpleNamespace, before: set[Path]) -> None:
    new = _files(h.root) - before
    outside = sorted(str(p) for p in new if not p.is_relative_to(h.out))
    assert not outside, f"written outside {h.out}: {outside}"
    assert not (h.root / "abs-escaped").exists() and not list(h.root.glob("abs-escaped*"))
    assert not list(h.root.glob("escaped*")) and not list(h.root.glob("_bulk*"))


def _assert_refused(proc: subprocess.CompletedProcess, h: SimpleNamespace) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "not a valid DICOM UID" in proc.stderr, proc.stderr[-3000:]
    # the refusal names the value (a backslash is DICOM's value separator: three values then)
    assert h.uid[:40] in proc.stderr or "'..', '..', 'escaped'" in proc.stderr


def test_nifti_cli_refuses_hostile_series_uid(hostile):
    h = hostile
    before = _files(h.root)
    proc = kaapana("nifti", str(h.series.series_dir), "-o", str(h.out))
    _assert_refused(proc, h)
    assert "SeriesInstanceUID of" in proc.stderr and str(h.series.files[0].parent) in proc.stderr
    _assert_contained(h, before)


@pytest.mark.parametrize("name", ["../../../escaped", "/abs/escaped", "a\x01b", "x" * 300])
def test_nifti_cli_refuses_a_hostile_name(name, ct_series, tmp_path):
    before = _files(tmp_path)
    out = tmp_path / "w" / "x" / "out"
    proc = kaapana("nifti", str(ct_series.series_dir), "-o", str(out), "--name", name)
    assert proc.returncode == 1 and "refusing to use it as a file name" in proc.stderr, proc.stderr
    assert not (_files(tmp_path) - before)


@pytest.mark.parametrize(
    "command",
    [
        [
            "seg",
            "--labels",
            "{labels}",
            "--source",
            "{series}",
            "--config",
            "{config}",
            "-o",
            "{out}/seg.dcm",
        ],
        ["stats", "--source", "{series}", "--seg", "{labels}", "--config", "{config}", "-o", "{out}/s.json"],
        ["evaluate", "--reference", "{labels}", "--test", "{labels}", "--source", "{series}"]
        + ["--config", "{config}", "-o", "{out}/e.json"],
    ],
    ids=["seg", "stats", "evaluate"],
)
def test_seg_stats_evaluate_cli_refuse_hostile_source_uids(command, hostile):
    h = hostile
    h.out.mkdir(parents=True)
    before = _files(h.root)
    args = [
        a.format(labels=h.labels, series=h.series.series_dir, config=h.config, out=h.out) for a in command
    ]
    proc = kaapana(*args)
    _assert_refused(proc, h)
    _assert_contained(h, before)
    assert not _files(h.out)


def test_deid_cli_with_retained_uids_refuses_and_writes_nothing_outside(hostile):
    """De-identification replaces UIDs (hostile ones too); with retain-uids the original must be refused."""
    h = hostile
    key = h.root / "key"
    key.write_bytes(b"k" * 40)
    before = _files(h.root)
    proc = kaapana("deid", str(h.series.series_dir), str(h.out), "--key-file", str(key))
    # a backslash splits the value into three: pseudonymised or refused, never a path
    multi_valued = "\\" in h.uid
    assert proc.returncode in ((0, 3) if multi_valued else (0,)), proc.stderr
    _assert_contained(h, before)
    written = _files(h.out)
    assert len(written) in ((0, 6) if multi_valued else (6,))
    assert all(is_valid_uid(p.parent.name, strict=True) for p in written)

    retained = h.root / "w" / "x" / "out" / "retained"
    proc = kaapana(
        "deid", str(h.series.series_dir), str(retained), "--key-file", str(key), "--option", "retain-uids"
    )
    assert proc.returncode == 3  # nothing written, every file named as unreadable
    for source in h.series.files:
        assert f"{source}: no valid SOPInstanceUID/SeriesInstanceUID" in proc.stderr
    _assert_contained(h, before)
    assert not _files(retained)


def _model_zip(path: Path, *, member_prefix: str = "", dataset_name: str = "Dataset001_Tiny") -> Path:
    trainer = f"{member_prefix}Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            f"{trainer}/dataset.json",
            json.dumps({**DATASET_JSON, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}),
        )
        archive.writestr(
            f"{trainer}/plans.json",
            json.dumps({"dataset_name": dataset_name, "configurations": {"3d_fullres": {}}}),
        )
        archive.writestr(f"{trainer}/fold_0/checkpoint_final.pth", b"not really a checkpoint")
    return path


@pytest.mark.parametrize(
    "zip_kwargs, refusal",
    [
        ({"member_prefix": "../../"}, "relative directory reference"),
        ({"member_prefix": "/abs/"}, "an absolute path"),
        ({"member_prefix": "a\\..\\"}, "path separator"),
        ({"dataset_name": "../../escaped"}, "dataset_name in"),
        ({"dataset_name": "/abs-escaped"}, "dataset_name in"),
    ],
    ids=["dotdot-member", "absolute-member", "backslash-member", "dotdot-dataset", "absolute-dataset"],
)
def test_models_install_refuses_zip_slip(zip_kwargs, refusal, tmp_path):
    archive = _model_zip(tmp_path / "model.zip", **zip_kwargs)
    store = tmp_path / "w" / "store"
    before = _files(tmp_path)
    proc = kaapana("models", "install", str(archive), "--models-dir", str(store))
    assert proc.returncode == 1 and refusal in proc.stderr, proc.stderr
    assert not (_files(tmp_path) - before)
    assert not [p for p in store.rglob("*") if not p.name.startswith(".install-")]
    ok = kaapana("models", "install", str(_model_zip(tmp_path / "ok.zip")), "--models-dir", str(store))
    assert ok.returncode == 0, ok.stderr  # the check refuses the hostile, not the ordinary


# --- operators: the same refusal, before anything is written into the run workspace ------------------


def _context():
    return {"dag_run": SimpleNamespace(dag_id="hostile"), "run_id": "manual__1"}


def _operators(h: SimpleNamespace, ws: Path) -> dict[str, object]:
    from airflow_provider_kaapana.operators.dicom_deidentify import DicomDeidentifyOperator
    from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator
    from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator
    from airflow_provider_kaapana.operators.segment_statistics import SegmentStatisticsOperator
    from airflow_provider_kaapana.operators.segmentation_evaluation import SegmentationEvaluationOperator

    series_dir = str(h.series.series_dir)
    received = {"series_dir": series_dir, "series_instance_uid": h.uid}
    return {
        "nifti": NiftiConvertOperator(task_id="nifti", series=series_dir, workspace_base=str(ws)),
        "nifti-conf": NiftiConvertOperator(task_id="nifti2", series=received, workspace_base=str(ws)),
        "seg": DicomSegExportOperator(
            task_id="seg",
            label_map=str(h.labels),
            label_config=str(h.config),
            source_dir=series_dir,
            workspace_base=str(ws),
        ),
        "stats": SegmentStatisticsOperator(
            task_id="stats",
            seg=str(h.labels),
            source_dir=series_dir,
            label_config=str(h.config),
            workspace_base=str(ws),
        ),
        "evaluate": SegmentationEvaluationOperator(
            task_id="evaluate",
            reference=str(h.labels),
            test=str(h.labels),
            source_dir=series_dir,
            label_config=str(h.config),
            workspace_base=str(ws),
        ),
        "deid": DicomDeidentifyOperator(
            task_id="deid", input_dir=received, key_conn_id="unused", workspace_base=str(ws)
        ),
    }


@pytest.mark.parametrize("which", ["nifti", "nifti-conf", "seg", "stats", "evaluate", "deid"])
def test_operators_refuse_hostile_uids_before_writing(which, hostile, monkeypatch):
    h = hostile
    ws = h.out / "workspace"
    operator = _operators(h, ws)[which]
    monkeypatch.setattr(type(operator), "site_key", lambda self: b"k" * 40, raising=False)
    before = _files(h.root)
    with pytest.raises(KaapanaError, match="not a valid DICOM UID"):
        operator.execute(_context())
    _assert_contained(h, before)
    assert not _files(h.out)


# --- the functions themselves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, problem",
    [
        ("", "is empty"),
        ("..", "relative directory reference"),
        (".", "relative directory reference"),
        ("a/b", "path separator"),
        ("/etc", "path separator"),
        ("a\\b", "path separator"),
        ("a\x00b", "NUL"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
        (None, "is not a name"),
    ],
)
def test_path_component_refusals_name_value_and_source(value, problem):
    with pytest.raises(UnsafePathError, match=problem) as err:
        path_component(value, "SeriesInstanceUID of /in/x.dcm")
    assert str(err.value).startswith("SeriesInstanceUID of /in/x.dcm: ")


def test_path_under_and_uid_path_accept_ordinary_and_legacy_values(tmp_path):
    assert path_under(tmp_path, "a", "b.json", source="t") == tmp_path / "a" / "b.json"
    assert path_component("x" * 255, "t") == "x" * 255
    legacy = "1.2.840.0113654.2.70.1.01"  # leading zeros: legacy data, stored and indexed as it is
    assert validate_uid(legacy) == legacy and uid_path(tmp_path, legacy) == tmp_path / legacy
    with pytest.raises(KaapanaError, match="no leading zeros"):
        validate_uid(legacy, strict=True)
