"""SegmentStatisticsOperator and SegmentationEvaluationOperator in a real DAG run (dag.test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from airflow_provider_kaapana.core.quant.sr import read_measurement_report
from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.operators.dicom_send import _paths_of
from airflow_provider_kaapana.operators.elastic_index import series_inputs
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, save_label_map


def test_statistics_and_evaluation_operators(airflow_db, synthetic_series, tmp_path: Path, monkeypatch):
    from tests.dags.quant import dag

    viewer = {
        "viewer_url": "https://ohif.test/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAAPANA_TEST_VIEWER", json.dumps({"conn_type": "kaapana_pacs", "extra": viewer})
    )
    series = synthetic_series("a", shapes=THREE_SHAPES, seed=1)
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    label_map = save_label_map(series, tmp_path / "l.nii.gz")
    seg_path = tmp_path / "seg.dcm"
    export_seg(label_map, series.series_dir, config, seg_path)
    base = tmp_path / "ws"
    base.mkdir()
    conf = {
        "exported": {"seg_path": str(seg_path), "series_instance_uid": series.series_instance_uid},
        "received": {"series_dir": str(series.series_dir), "series_instance_uid": series.series_instance_uid},
        "reference": str(label_map),
        "workspace_base": str(base),
    }
    dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "success"
    collected = json.loads((base / "collected.json").read_text())
    workspace = RunWorkspace(base, dag.dag_id, dag_run.run_id)

    stats = collected["stats"]
    expected_path = workspace.step_dir(series.series_instance_uid, "stats", create=False) / "statistics.json"
    assert stats["statistics_path"] == str(expected_path)
    document = json.loads(expected_path.read_text())
    assert document["schema"] == "kaapana.segment-statistics/v1"
    assert [s["label"] for s in stats["segments"]] == ["liver", "tumor", "kidney_left"]
    assert document["segments"][0]["voxel_count"] == int(np.count_nonzero(series.truth == 1))
    # the measurement report lands in the series' own "sr" folder, ready for the send step
    sr_path = workspace.step_dir(series.series_instance_uid, "sr", create=False) / "measurements.dcm"
    assert stats["sr_path"] == str(sr_path) and stats["seg_path"] == str(seg_path)
    assert sorted(read_measurement_report(sr_path)) == [1, 2, 3]
    assert _paths_of(stats) == [str(sr_path)]
    # the Viewer link opens the SR's series, in the study of the image
    (stats_ti,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "stats"]
    assert stats_ti.xcom_pull(task_ids="stats", key="_link_ViewerLink") == (
        f"https://ohif.test/viewer?StudyInstanceUIDs={series.study_instance_uid}"
        f"&SeriesInstanceUIDs={stats['sr_series_instance_uid']}"
    )
    # ...and the index step indexes the SEG with the statistics (kaapana.segments)
    assert series_inputs([stats]) == [
        (str(seg_path), {"received_at": None, "statistics": stats["statistics_path"]})
    ]

    evaluation = collected["evaluation"]
    assert [s["dice"] for s in evaluation["segments"]] == [1.0, 1.0, 1.0]
    assert Path(evaluation["evaluation_path"]).parent.name == "evaluation"
