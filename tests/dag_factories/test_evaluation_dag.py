"""The kaapana_segmentation_evaluation DAG by ``dag.test()``: two pairs of SEGs in a real Orthanc, the
source series found from the reference SEG, per-case CSV and per-label summary equal to direct calls."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from airflow_provider_kaapana.core.net.send import send
from airflow_provider_kaapana.core.quant.evaluation import segmentation_evaluation
from airflow_provider_kaapana.core.seg.export import export_seg
from tests.core.test_pacs import peer_of
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, save_label_map
from tests.dag_factories.test_dag_library import lib, new_series, xcom  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def _seg(series, labels: np.ndarray, config, path, model_id: str):
    label_map = save_label_map(series, path.with_suffix(".nii.gz"))
    if labels is not series.truth:  # the same geometry, other labels
        import nibabel as nib

        img = nib.load(label_map)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)), img.affine), label_map)
    return export_seg(label_map, series.series_dir, config, path, model_id=model_id)


def test_evaluation_dag_writes_cases_and_summary(lib, new_series, tmp_path):  # noqa: F811
    series = new_series(shapes=THREE_SHAPES, slices=16)
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    shifted = np.roll(series.truth, 1, axis=0)  # one slice off
    reference = _seg(series, series.truth, config, tmp_path / "ref.dcm", "reference")
    same = _seg(series, series.truth, config, tmp_path / "same.dcm", "same")
    off = _seg(series, shifted, config, tmp_path / "off.dcm", "shifted")
    send([series.series_dir, reference.seg_path, same.seg_path, off.seg_path], peer=peer_of(lib.pacs))

    pairs = [
        {"reference": reference.seg_series_instance_uid, "test": same.seg_series_instance_uid},
        {"reference": reference.seg_series_instance_uid, "test": off.seg_series_instance_uid},
    ]
    dag_run = lib.module.evaluation.test(run_conf={"pairs": pairs, "tolerance_mm": 2.0})
    assert dag_run.state == "success"
    state, summary = xcom(dag_run, "summary")
    assert state == "success" and summary["cases"] == 2

    with open(summary["cases_path"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["label"]) for r in rows] == [
        (c, label) for c in ("1", "2") for label in ("liver", "tumor", "kidney_left")
    ]
    assert {r["source_series_instance_uid"] for r in rows} == {series.series_instance_uid}
    assert [r["test_series_instance_uid"] for r in rows[::3]] == [p["test"] for p in pairs]
    direct = segmentation_evaluation(
        reference.seg_path, off.seg_path, series_dir=series.series_dir, tolerance_mm=2.0
    )
    for row, segment in zip(rows[3:], direct["segments"], strict=True):
        assert float(row["dice"]) == pytest.approx(segment["dice"])
        assert float(row["hd95_mm"]) == pytest.approx(segment["hd95_mm"])
    assert all(float(r["dice"]) == 1.0 for r in rows[:3])

    document = json.loads(open(summary["summary_path"]).read())
    liver = next(s for s in document["segments"] if s["label"] == "liver")
    assert liver["cases"] == 2 and liver["dice"]["n"] == 2
    assert liver["dice"]["max"] == 1.0
    assert liver["dice"]["mean"] == pytest.approx((1.0 + direct["segments"][0]["dice"]) / 2)
    assert "<svg" in open(summary["report_path"]).read()
    client = lib.search_client()
    client.refresh(summary["evaluations_index"])
    indexed = client.get(summary["evaluations_index"], f"{dag_run.dag_id}/{dag_run.run_id}")
    assert indexed["cases"] == 2
    assert next(s for s in indexed["segments"] if s["label"] == "liver")["dice_n"] == 2
    # each test's evaluation sits in the test series' own folder: two tests of one source never collide
    for map_index in (0, 1):
        _, result = xcom(dag_run, "per_pair.evaluate", map_index)
        assert f"/{pairs[map_index]['test']}/evaluation/" in result["evaluation_path"]
