"""DicomSegExportOperator in a real DAG run (dag.test), plain and dynamically mapped, and `kaapana seg`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.testing.synthetic import Shape
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, decode, save_label_map


def _prediction(series, tmp_path: Path, name: str, config: Path) -> dict:
    label_map = save_label_map(series, tmp_path / f"{name}.nii.gz", variant="canonical")
    return {
        "series_instance_uid": series.series_instance_uid,
        "label_map_path": str(label_map),
        "labels_path": str(config),
    }


def test_operator_plain_and_mapped_with_no_findings(airflow_db, synthetic_series, tmp_path, monkeypatch):
    from tests.dags.seg_export import dag

    viewer = {"viewer": "stone", "viewer_url": "http://orthanc.test:8042/"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAAPANA_TEST_VIEWER", json.dumps({"conn_type": "kaapana_pacs", "extra": viewer})
    )
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    first = synthetic_series("a", shapes=THREE_SHAPES, seed=1)
    second = synthetic_series(
        "b", orientation="oblique", shapes=[Shape(2, (0.0, 0.0, 0.0), radius=5.0)], seed=2
    )
    empty = synthetic_series("c", shapes=[], seed=3)
    series = [first, second, empty]
    predictions = [_prediction(s, tmp_path, f"case{i}", config) for i, s in enumerate(series)]
    received = [
        {"series_instance_uid": s.series_instance_uid, "series_dir": str(s.series_dir)} for s in series
    ]
    base = tmp_path / "ws"
    base.mkdir()

    dag_run = dag.test(
        run_conf={"predictions": predictions, "received": received, "workspace_base": str(base)}
    )
    assert dag_run.state == "success"
    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert states[("seg_single", -1)] == "success"
    assert [states[("seg_mapped", i)] for i in range(3)] == ["success", "success", "skipped"]

    collected = json.loads((base / "collected.json").read_text())
    single = collected["single"]
    workspace = RunWorkspace(base, dag.dag_id, dag_run.run_id)
    assert single["seg_path"] == str(
        workspace.step_dir(first.series_instance_uid, "seg", create=False) / "seg.dcm"
    )
    assert single["series_instance_uid"] == first.series_instance_uid
    assert [s["label"] for s in single["segments"]] == ["liver", "tumor", "kidney_left"]
    np.testing.assert_array_equal(decode(Path(single["seg_path"]), first.sop_instance_uids), first.truth)
    # the Viewer link opens the SEG's series within the source's study (Stone addresses both by UID)
    (single_ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "seg_single"]
    assert single_ti.xcom_pull(task_ids="seg_single", key="_link_ViewerLink") == (
        "http://orthanc.test:8042/stone-webviewer/index.html"
        f"?study={first.study_instance_uid}&series={single['seg_series_instance_uid']}"
    )

    mapped = sorted(collected["mapped"], key=lambda r: r["series_instance_uid"])
    assert {r["series_instance_uid"] for r in mapped} == {
        first.series_instance_uid,
        second.series_instance_uid,
    }
    by_uid = {r["series_instance_uid"]: r for r in mapped}
    # same source, model and configuration -> the same SEG UIDs as the plain task (a re-run replaces)
    assert by_uid[first.series_instance_uid]["seg_sop_instance_uid"] == single["seg_sop_instance_uid"]
    oblique = by_uid[second.series_instance_uid]
    ds = pydicom.dcmread(oblique["seg_path"])
    assert ds.SeriesInstanceUID == oblique["seg_series_instance_uid"]
    assert [s["frames"] > 0 for s in oblique["segments"]] == [False, True, False]
    np.testing.assert_array_equal(decode(Path(oblique["seg_path"]), second.sop_instance_uids), second.truth)
    assert not workspace.step_dir(empty.series_instance_uid, "seg", create=False).joinpath("seg.dcm").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "seg", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_seg(synthetic_series, tmp_path):
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "labels.nii.gz", variant="flipped")
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    out = tmp_path / "out" / "seg.dcm"
    args = ["--labels", str(label_map), "--source", str(series.series_dir), "--config", str(config)]
    result = _cli(*args, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["seg_path"] == str(out)
    assert pydicom.dcmread(out).SOPInstanceUID == info["seg_sop_instance_uid"]
    np.testing.assert_array_equal(decode(out, series.sop_instance_uids), series.truth)

    empty = synthetic_series(shapes=[], seed=5)
    empty_map = save_label_map(empty, tmp_path / "empty.nii.gz")
    result = _cli(
        "--labels",
        str(empty_map),
        "--source",
        str(empty.series_dir),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "e.dcm"),
    )
    assert result.returncode == 3
    assert "no findings" in result.stderr
    assert not (tmp_path / "e.dcm").exists()

    result = _cli(
        "--labels",
        str(tmp_path / "missing.nii.gz"),
        "--source",
        str(series.series_dir),
        "--config",
        str(config),
        "-o",
        str(tmp_path / "m.dcm"),
    )
    assert result.returncode == 1
    assert "missing.nii.gz" in result.stderr


def test_operator_refuses_mismatched_or_missing_inputs(synthetic_series, tmp_path):
    import pytest
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_provider_kaapana.exceptions import InvalidDicomError
    from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator

    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    series = synthetic_series("a", shapes=THREE_SHAPES, seed=1)
    other = synthetic_series("b", shapes=THREE_SHAPES, seed=2)
    prediction = _prediction(series, tmp_path, "case", config)

    wrong = DicomSegExportOperator(
        task_id="wrong",
        prediction=prediction,
        source={"series_dir": str(other.series_dir)},
        output_dir=str(tmp_path),
    )
    with pytest.raises(InvalidDicomError, match=series.series_instance_uid):
        wrong.execute(context={})
    assert not (tmp_path / "seg.dcm").exists()

    with pytest.raises(ValueError, match="source_dir"):
        DicomSegExportOperator(task_id="nosource", prediction=prediction, output_dir=str(tmp_path)).execute(
            {}
        )

    empty = synthetic_series("c", shapes=[], seed=3)
    skipped = DicomSegExportOperator(
        task_id="empty",
        prediction=_prediction(empty, tmp_path, "empty", config),
        source_dir=str(empty.series_dir),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(AirflowSkipException, match="no findings"):
        skipped.execute({})
