"""``evaluation_summary``: many segmentation evaluations as one per-case table (CSV) and a per-label summary (JSON)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from airflow_provider_kaapana.core.files import write_atomic
from airflow_provider_kaapana.core.quant.evaluation import SCHEMA as EVALUATION_SCHEMA
from airflow_provider_kaapana.exceptions import QuantificationError

SUMMARY_SCHEMA = "kaapana.segmentation-evaluation-summary/v1"
CASES_FILE_NAME = "evaluation_cases.csv"
SUMMARY_FILE_NAME = "evaluation_summary.json"
METRICS = (
    "dice", "jaccard", "surface_dice", "hd95_mm", "hausdorff_mm", "assd_mm",
    "reference_volume_ml", "test_volume_ml", "volume_difference_ml",
)  # fmt: skip
CASE_KEYS = ("reference_series_instance_uid", "test_series_instance_uid", "source_series_instance_uid")
COLUMNS = ("case", *CASE_KEYS, "segment_number", "label", *METRICS, "reference_empty", "test_empty")


def _load(case: Mapping[str, Any]) -> dict[str, Any]:
    path = case.get("evaluation_path")
    document = case.get("evaluation")
    if document is None:
        try:
            document = json.loads(Path(str(path)).read_text())
        except (OSError, ValueError) as exc:
            raise QuantificationError(f"{path}: cannot read the evaluation: {exc}") from exc
    if not isinstance(document, Mapping) or document.get("schema") != EVALUATION_SCHEMA:
        raise QuantificationError(f"{path or 'evaluation'}: not a {EVALUATION_SCHEMA} document")
    return dict(document)


def _describe(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "mean": None, "sd": None, "median": None, "min": None, "max": None}
    v = np.asarray(values, dtype=float)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def evaluation_summary(cases: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, summary)`` of evaluated cases.

    ``cases``: the evaluate step's results, each with ``evaluation_path`` (or the document itself as
    ``evaluation``) and the three series UIDs. ``rows``: one per case and segment (``COLUMNS``).
    ``summary``: per segment (number and label) the distribution over cases of every metric in
    ``METRICS`` (``n``, mean, SD with 1/N, median, min, max); a ``null`` metric (a distance with an
    empty mask) is not counted, so ``n`` says how many cases had a value.
    """
    rows: list[dict[str, Any]] = []
    for number, case in enumerate(cases, start=1):
        document = _load(case)
        for segment in document.get("segments") or []:
            row: dict[str, Any] = {"case": number, **{k: case.get(k) for k in CASE_KEYS}}
            row.update({k: segment.get(k) for k in ("segment_number", "label", *METRICS)})
            row["reference_empty"] = bool(segment.get("reference_empty"))
            row["test_empty"] = bool(segment.get("test_empty"))
            rows.append(row)
    labels: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        labels.setdefault((int(row["segment_number"]), str(row["label"])), []).append(row)
    segments = []
    for (number, label), members in sorted(labels.items()):
        entry: dict[str, Any] = {"segment_number": number, "label": label, "cases": len(members)}
        for metric in METRICS:
            values = [float(r[metric]) for r in members if r[metric] is not None and math.isfinite(r[metric])]
            entry[metric] = _describe(values)
        segments.append(entry)
    return rows, {"schema": SUMMARY_SCHEMA, "cases": len(cases), "segments": segments}


def evaluation_index_document(
    summary: Mapping[str, Any], *, dag_id: str, run_id: str, created: str
) -> tuple[str, dict[str, Any]]:
    """``(doc_id, document)`` of a run's summary for the evaluations index: one entry per label with
    each metric's mean, median and n (flat, so a Dashboards table can list them by label)."""
    segments = []
    for segment in summary.get("segments", []):
        entry: dict[str, Any] = {
            "segment_number": segment["segment_number"],
            "label": segment["label"],
            "cases": segment["cases"],
        }
        for metric in METRICS:
            described = segment.get(metric) or {}
            entry[f"{metric}_mean"] = described.get("mean")
            entry[f"{metric}_median"] = described.get("median")
            entry[f"{metric}_n"] = described.get("n", 0)
        segments.append(entry)
    document = {
        "schema": SUMMARY_SCHEMA,
        "dag_id": dag_id,
        "run_id": run_id,
        "created": created,
        "cases": summary.get("cases", 0),
        "segments": segments,
    }
    return f"{dag_id}/{run_id}", document


def write_evaluation_summary(
    cases: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str = "Segmentation evaluation"
) -> dict[str, Any]:
    """Write ``evaluation_cases.csv``, ``evaluation_summary.json`` and ``evaluation_report.html`` (the
    table and box plots of Dice and volumes per label) into ``out_dir`` (atomically)."""
    from airflow_provider_kaapana.core.quant.report import REPORT_FILE_NAME, evaluation_report_html

    rows, summary = evaluation_summary(cases)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    csv_path = write_atomic(out_dir / CASES_FILE_NAME, [text.getvalue().encode()])
    json_path = write_atomic(out_dir / SUMMARY_FILE_NAME, [json.dumps(summary, indent=2).encode()])
    page = evaluation_report_html(rows, summary, title)
    report_path = write_atomic(out_dir / REPORT_FILE_NAME, [page.encode("utf-8")])
    return {
        "cases_path": str(csv_path),
        "summary_path": str(json_path),
        "report_path": str(report_path),
        "summary": summary,
    }
