"""The coordinator's report: JSON keys, determinism, and a self-contained HTML page with one chart per statistic."""

from __future__ import annotations

import json
import re

from airflow_provider_kaapana.core.federation.aggregate import aggregate_results, record_result
from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1, cohort_statistics
from airflow_provider_kaapana.core.federation.guard import guard_egress
from airflow_provider_kaapana.core.federation.hitl import result_from_hitl, site_answer, timed_out
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.report import build_report, render_html, report_for

JOB = FederatedJob.for_run(
    COHORT_STATISTICS_V1, "manual__2026-11-26T10:00:00+00:00", created="2026-11-26T10:00:00Z"
)


def site_docs(n: int, offset: int) -> list[dict]:
    return [
        {
            "PatientID": f"S{offset}-{i}",
            "PatientSex": "MF"[i % 2],
            "StudyInstanceUID": f"1.2.3.{offset}.{i}",
            "SeriesInstanceUID": f"1.2.4.{offset}.{i}",
            "StudyDate": f"{2020 + i % 3}-01-01",
            "Modality": ("CT", "MR", "PT")[i % 3] if i < n - 2 else "US",
            "BodyPartExamined": "CHEST",
            "Manufacturer": "Vendor <b>&</b>" if i % 2 else "SIEMENS",
            "SliceThickness": 0.5 + (i % 9),
            "kaapana": {"patient_age_years": 20.0 + (i * 13) % 70, "instance_count": 5},
        }
        for i in range(n)
    ]


def answers(order: list[str]) -> dict:
    results: dict = {}
    sizes = {"alpha": 90, "beta": 45}
    for name in order:
        if name == "gamma":
            record_result(results, timed_out("gamma"))
            continue
        policy = SitePolicy(site=name, allowed_analyses={"cohort_statistics": "*"})
        doc = cohort_statistics(site_docs(sizes[name], len(name)), job_id=JOB.job_id, site=name)
        payload = guard_egress(doc, job=JOB, policy=policy).payload
        record_result(results, result_from_hitl(name, *site_answer("ok", payload=payload)))
    return results


def test_report_json_has_the_agreed_top_level_keys():
    report = build_report(aggregate_results(JOB, answers(["alpha", "beta", "gamma"])))
    assert set(report) == {"job", "sites", "aggregate", "partial"}
    assert report["partial"] is True
    assert [(s["name"], s["status"]) for s in report["sites"]] == [
        ("alpha", "ok"),
        ("beta", "ok"),
        ("gamma", "timed_out"),
    ]
    assert all(isinstance(s["suppressed_cells"], int) for s in report["sites"])
    assert set(report["aggregate"]) == set(COHORT_STATISTICS_V1.by_name)
    assert report["job"] == JOB.to_dict()
    json.dumps(report, allow_nan=False)


def test_report_is_deterministic_for_the_same_inputs():
    first = report_for(aggregate_results(JOB, answers(["alpha", "beta", "gamma"])))
    again = report_for(aggregate_results(JOB, answers(["gamma", "beta", "alpha"])))
    assert first == again


def test_html_has_one_chart_per_statistic_and_the_status_table():
    html = render_html(build_report(aggregate_results(JOB, answers(["alpha", "beta", "gamma"]))))
    charts = re.findall(r'<svg class="chart" data-statistic="([a-z_]+)"', html)
    assert sorted(charts) == sorted(COHORT_STATISTICS_V1.by_name)
    assert len(charts) == len(set(charts))
    table = re.search(r'<table class="sites">(.*?)</table>', html, re.S)
    assert table is not None
    rows = re.findall(r"<tr><td>([a-z]+)</td><td class=\"status-([a-z_]+)\">", table.group(1))
    assert rows == [("alpha", "ok"), ("beta", "ok"), ("gamma", "timed_out")]
    assert "Partial result" in html


def test_html_is_self_contained_and_escaped():
    results = answers(["alpha", "beta"])
    record_result(results, result_from_hitl("delta", ["refused"], {"reason": "<script>alert(1)</script>"}))
    html = render_html(build_report(aggregate_results(JOB, results)))
    assert "<script" not in html and "<link" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"(src|href)\s*=", html)
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # a label with markup never gets that far: the builders fold it into OTHER
    assert (
        "OTHER"
        in build_report(aggregate_results(JOB, results))["aggregate"]["series_by_manufacturer"]["cells"]
    )
