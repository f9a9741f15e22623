"""At the coordinator: from the sites' HITL answers to one report (JSON + HTML) in the run workspace."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.federation.aggregate import SiteResult, aggregate_results, record_result
from airflow_provider_kaapana.core.federation.exchange import Receipt, result_from_answer
from airflow_provider_kaapana.core.federation.jobs import FederatedJob
from airflow_provider_kaapana.core.federation.report import build_report, render_html, report_json

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def aggregate_answers(
    job: FederatedJob,
    sites: Sequence[str],
    answers: Sequence[Mapping[str, Any] | None],
    private_key: str,
    *,
    task_states: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """The report of ``job``: each site's answer (index-aligned with ``sites``) read, opened, checked,
    pooled. Each site row also carries who answered and the SHA-256 of the payload and of the sealed
    bytes, so it can be matched to the site's audit log line.
    """
    states = list(task_states) if task_states is not None else [None] * len(sites)
    results: dict[str, SiteResult] = {}
    receipts: dict[str, Receipt] = {}
    for site, answer, state in zip(sites, answers, states, strict=True):
        result, receipt = result_from_answer(site, job, answer, private_key, task_state=state)
        record_result(results, result)
        receipts[site] = receipt
    report = build_report(aggregate_results(job, results, expected_sites=sites))
    for row in report["sites"]:
        receipt = receipts.get(row["name"])
        if receipt is not None:
            extra = asdict(receipt)
            extra.pop("site")
            row.update(extra)
    return report


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: Mapping[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.html`` in ``folder``, each replaced atomically (a re-run overwrites)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / REPORT_JSON, folder / REPORT_HTML
    _write_atomically(json_path, report_json(report))
    _write_atomically(html_path, render_html(report))
    return json_path, html_path


def summary_of(report: Mapping[str, Any], json_path: Path, html_path: Path) -> dict[str, Any]:
    """The aggregate task's small XCom: statuses, partial, where the report is."""
    return {
        "job_id": report["job"]["job_id"],
        "statuses": {row["name"]: row["status"] for row in report["sites"]},
        "partial": report["partial"],
        "report_json": str(json_path),
        "report_html": str(html_path),
    }


__all__ = ["REPORT_HTML", "REPORT_JSON", "aggregate_answers", "summary_of", "write_report"]
