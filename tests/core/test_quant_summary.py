"""evaluation_summary: per-case rows and per-label distributions; undefined distances are not counted."""

from __future__ import annotations

import csv
import json

import pytest

from airflow_provider_kaapana.core.quant.evaluation import SCHEMA
from airflow_provider_kaapana.core.quant.summary import (
    COLUMNS,
    evaluation_index_document,
    write_evaluation_summary,
)
from airflow_provider_kaapana.exceptions import QuantificationError


def _evaluation(dice: float, hd95: float | None, test_empty: bool = False) -> dict:
    segment = {"segment_number": 1, "label": "liver", "dice": dice, "hd95_mm": hd95, "test_empty": test_empty}
    return {"schema": SCHEMA, "segments": [segment]}


def test_rows_and_distributions(tmp_path):
    path = tmp_path / "e1.json"
    path.write_text(json.dumps(_evaluation(0.9, 2.0)))
    cases = [
        {"evaluation_path": str(path), "test_series_instance_uid": "1.2.1"},
        {"evaluation": _evaluation(0.5, 4.0), "test_series_instance_uid": "1.2.2"},
        {"evaluation": _evaluation(0.0, None, test_empty=True), "test_series_instance_uid": "1.2.3"},
    ]
    written = write_evaluation_summary(cases, tmp_path / "out")
    with open(written["cases_path"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["case"], r["test_series_instance_uid"], r["hd95_mm"]) for r in rows] == [
        ("1", "1.2.1", "2.0"), ("2", "1.2.2", "4.0"), ("3", "1.2.3", ""),
    ]  # fmt: skip
    [liver] = json.loads(open(written["summary_path"]).read())["segments"]
    assert liver["cases"] == 3
    assert liver["dice"] == pytest.approx(
        {
            "n": 3,
            "mean": 1.4 / 3,
            "sd": pytest.approx(0.368178, abs=1e-6),
            "median": 0.5,
            "min": 0.0,
            "max": 0.9,
        }
    )
    assert liver["hd95_mm"]["n"] == 2 and liver["hd95_mm"]["mean"] == pytest.approx(3.0)
    # the page a researcher opens: the table and two box plots, self-contained, the same on a re-run
    page = open(written["report_path"]).read()
    assert "<table>" in page and "Dice per label" in page and "<script" not in page
    assert page.count("<svg") == 1  # these evaluations carry no volumes: no volume plot
    assert "0.467 ± 0.368" in page and "(n=3)" in page  # liver's Dice mean ± SD over the 3 cases
    assert write_evaluation_summary(cases, tmp_path / "again")["report_path"] != written["report_path"]
    assert open(tmp_path / "again" / "evaluation_report.html").read() == page
    doc_id, document = evaluation_index_document(
        json.loads(open(written["summary_path"]).read()), dag_id="d", run_id="r1", created="2026-12-01"
    )
    assert doc_id == "d/r1" and document["cases"] == 3
    assert document["segments"][0]["label"] == "liver"
    assert document["segments"][0]["dice_median"] == 0.5 and document["segments"][0]["hd95_mm_n"] == 2


def test_a_foreign_document_is_refused_by_name(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"schema": "kaapana.segment-statistics/v1"}))
    with pytest.raises(QuantificationError, match="stats.json: not a kaapana.segmentation-evaluation/v1"):
        write_evaluation_summary([{"evaluation_path": str(path)}], tmp_path)
