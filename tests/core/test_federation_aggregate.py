"""Aggregation at the coordinator, end to end over three synthetic sites built from real DICOM.

Site -> cohort statistics -> egress guard -> audit log -> HITL answer -> coordinator check -> pooled
statistics, compared with numpy/Counter on the union of what the generator wrote (its truth), not with
the code under test.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from airflow_provider_kaapana.core.federation.aggregate import (
    SiteResult,
    SiteStatus,
    aggregate_results,
    pooled_moments,
    record_result,
)
from airflow_provider_kaapana.core.federation.audit import read_audit_log, record_egress
from airflow_provider_kaapana.core.federation.cohort import (
    AGE_EDGES,
    COHORT_STATISTICS_V1,
    SLICE_THICKNESS_EDGES,
    cohort_statistics,
)
from airflow_provider_kaapana.core.federation.guard import collect_known_identifiers, guard_egress
from airflow_provider_kaapana.core.federation.hitl import result_from_hitl, site_answer, timed_out
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.statistics import normalise_label
from airflow_provider_kaapana.testing.federation import SeriesTruth, synthetic_site

JOB = FederatedJob.for_run(
    COHORT_STATISTICS_V1, "manual__2026-11-26T10:00:00+00:00", created="2026-11-26T10:00:00Z"
)
SITES = {"alpha": (90, 11), "beta": (80, 12), "gamma": (40, 13)}  # name: (patients, seed)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three sites that ran the job; returns (sites, site-stage documents, answers, audit dir)."""
    root: Path = tmp_path_factory.mktemp("federation")
    sites = {
        name: synthetic_site(root / "dicom", name, n_patients=n, seed=seed)
        for name, (n, seed) in SITES.items()
    }
    raw, answers = {}, {}
    for name, site in sites.items():
        policy = SitePolicy.from_dict({"site": name, "allowed_analyses": {"cohort_statistics": ["1"]}})
        assert policy.decide(JOB).accepted
        raw[name] = cohort_statistics(site.documents, job_id=JOB.job_id, site=name)
        result = guard_egress(
            raw[name], job=JOB, policy=policy, known_identifiers=collect_known_identifiers(site.documents)
        )
        payload = record_egress(root / f"{name}.jsonl", result, recipient="https://coordinator/api/v2")
        answers[name] = site_answer("ok", payload=payload)
    return sites, raw, answers, root


def results_of(answers) -> dict[str, SiteResult]:
    results: dict[str, SiteResult] = {}
    for name, (option, params) in answers.items():
        record_result(results, result_from_hitl(name, [option], params))
    return results


def union_truth(sites) -> dict[str, object]:
    """Expected statistics on the union of all sites, from what the generator wrote."""
    series: list[SeriesTruth] = [t for site in sites.values() for t in site.truth]
    patients: dict[str, SeriesTruth] = {}
    for t in sorted(series, key=lambda t: t.study_date):
        patients.setdefault(t.patient_id, t)  # the earliest study of each patient
    studies = {t.study_instance_uid: t for t in series}
    return {
        "patients_by_sex": Counter(t.sex or "UNKNOWN" for t in patients.values()),
        "studies_by_year": Counter(t.study_date[:4] for t in studies.values()),
        "series_by_modality": Counter(t.modality for t in series),
        "series_by_body_part": Counter(t.body_part for t in series),
        "series_by_manufacturer": Counter(normalise_label(t.manufacturer) for t in series),
        "series_by_acquisition_year": Counter(t.study_date[:4] for t in series),
        "instances_by_modality": Counter(
            {m: sum(t.instances for t in series if t.modality == m) for m in "CT MR PT".split()}
        ),
        "ages": np.array([t.age_years for t in patients.values()], float),
        "thickness": np.array([t.slice_thickness for t in series], float),
    }


def suppressed_contributions(raw, released, name) -> Counter:
    """Per cell, the sum of the values the sites suppressed (read from their pre-guard documents)."""
    missing: Counter = Counter()
    for site, doc in raw.items():
        published = released[site]["statistics"][name]
        cells = (
            doc["statistics"][name]["cells"]
            if "cells" in doc["statistics"][name]
            else dict(enumerate(doc["statistics"][name]["counts"]))
        )
        shown = published["cells"] if "cells" in published else dict(enumerate(published["counts"]))
        for key, value in cells.items():
            if published["withheld"] or shown.get(key) is None:
                missing[key] += value
    return missing


def test_aggregate_equals_statistics_on_the_union(federation):
    sites, raw, answers, _ = federation
    results = results_of(answers)
    agg = aggregate_results(JOB, results)
    assert not agg.partial and [s.status for s in agg.sites] == [SiteStatus.OK] * 3
    truth = union_truth(sites)
    released = {name: r.document for name, r in results.items()}

    incomplete_seen = complete_seen = 0
    for name in (
        "patients_by_sex",
        "studies_by_year",
        "series_by_modality",
        "series_by_body_part",
        "series_by_manufacturer",
        "series_by_acquisition_year",
        "instances_by_modality",
    ):
        stat, expected = agg.statistics[name], truth[name]
        missing = suppressed_contributions(raw, released, name)
        assert set(stat["cells"]) <= set(expected), name
        for label, true_count in expected.items():
            got = stat["cells"].get(label, 0)
            if label in stat["incomplete"]:
                incomplete_seen += 1
                assert got + missing[label] == true_count, (name, label)
                assert missing[label] > 0
            else:
                complete_seen += 1
                assert got == true_count, (name, label)
        assert stat["total"] == sum(expected.values()) and not stat["total_incomplete"], name
    assert incomplete_seen > 0 and complete_seen >= 10  # both paths exercised

    # moments: pooled mean and sample variance equal numpy on the union
    for name, values in (
        ("patient_age_moments", truth["ages"]),
        ("slice_thickness_moments", truth["thickness"]),
    ):
        stat = agg.statistics[name]
        assert not stat["incomplete"] and stat["n"] == len(values)
        assert math.isclose(stat["mean"], float(np.mean(values)), rel_tol=1e-12)
        assert math.isclose(stat["variance"], float(np.var(values, ddof=1)), rel_tol=1e-9)
        assert math.isclose(stat["sd"], float(np.std(values, ddof=1)), rel_tol=1e-9)

    # histograms: complete bins equal numpy's histogram of the union
    for name, values, edges in (
        ("patient_age_histogram", truth["ages"], AGE_EDGES),
        ("slice_thickness_histogram", truth["thickness"], SLICE_THICKNESS_EDGES),
    ):
        stat = agg.statistics[name]
        expected_bins, _ = np.histogram(values, bins=edges)
        missing = suppressed_contributions(raw, released, name)
        for i, true_count in enumerate(expected_bins.tolist()):
            assert stat["counts"][i] + (missing[i] if i in stat["incomplete"] else 0) == true_count, (name, i)
    # gamma (40 patients) may not publish 8 age bins: FLARE's bin cap withholds its histogram
    assert agg.statistics["patient_age_histogram"]["withheld_by"] == ["gamma"]


def test_a_repeated_answer_replaces_and_never_adds(federation):
    _, _, answers, _ = federation
    results = results_of(answers)
    once = aggregate_results(JOB, results)
    option, params = answers["beta"]
    record_result(results, result_from_hitl("beta", [option], params))
    record_result(results, result_from_hitl("beta", [option], params))
    twice = aggregate_results(JOB, results)
    assert twice.statistics == once.statistics
    assert len(results) == 3


def test_a_document_failing_the_coordinators_check_is_dropped(federation):
    _, _, answers, _ = federation
    results = results_of(answers)
    tampered = copy.deepcopy(results["gamma"].document)
    stat = tampered["statistics"]["series_by_modality"]
    small = next(label for label, v in stat["cells"].items() if v is not None)
    stat["cells"][small] = 3  # a published cell below k
    stat["total"] = None
    record_result(results, SiteResult("gamma", SiteStatus.OK, tampered))
    agg = aggregate_results(JOB, results)
    gamma = next(s for s in agg.sites if s.name == "gamma")
    assert gamma.status is SiteStatus.FAILED and "coordinator's check" in gamma.reason
    assert agg.partial
    without = aggregate_results(JOB, {k: v for k, v in results.items() if k != "gamma"})
    assert agg.statistics == without.statistics


def test_status_table_covers_refused_failed_and_timed_out_sites(federation):
    _, _, answers, _ = federation
    results = results_of({"alpha": answers["alpha"]})
    record_result(results, result_from_hitl("beta", ["refused"], {"reason": "not on the allow-list"}))
    option, params = answers["gamma"]
    record_result(results, result_from_hitl("gamma", [option], {**params, "sha256": "0" * 64}))
    record_result(results, timed_out("delta"))
    agg = aggregate_results(JOB, results, expected_sites=["alpha", "beta", "gamma", "delta", "epsilon"])
    table = {s.name: (s.status.value, s.reason) for s in agg.sites}
    assert table["alpha"][0] == "ok"
    assert table["beta"] == ("refused", "not on the allow-list")
    assert table["gamma"] == ("failed", "payload does not match its SHA-256")
    assert table["delta"][0] == "timed_out" and table["epsilon"] == ("timed_out", "no answer")
    assert agg.partial
    alpha_only = aggregate_results(JOB, results_of({"alpha": answers["alpha"]}))
    assert agg.statistics == alpha_only.statistics


def test_suppressed_cell_counts_in_the_status_table(federation):
    _, _, answers, _ = federation
    agg = aggregate_results(JOB, results_of(answers))
    for summary in agg.sites:
        document = results_of(answers)[summary.name].document
        expected = sum(
            len(s.get("suppressed", [])) for s in document["statistics"].values() if not s["withheld"]
        )
        assert summary.suppressed_cells == expected
    assert next(s for s in agg.sites if s.name == "gamma").withheld == ("patient_age_histogram",)


def test_audit_logs_hold_what_the_coordinator_received(federation):
    _, _, answers, root = federation
    for name, (_, params) in answers.items():
        (record,) = read_audit_log(root / f"{name}.jsonl")
        assert record.payload.decode("ascii") == params["payload"] and record.sha256 == params["sha256"]


def test_pooled_moments_match_numpy_for_any_split():
    rng = np.random.default_rng(5)
    values = rng.normal(50, 12, 1000)
    parts = np.split(values, [10, 250, 600])
    pooled = pooled_moments((len(p), float(p.sum()), float((p * p).sum())) for p in parts)
    assert pooled["n"] == 1000
    assert math.isclose(pooled["mean"], values.mean(), rel_tol=1e-12)
    assert math.isclose(pooled["variance"], values.var(ddof=1), rel_tol=1e-9)
    assert pooled_moments([(1, 3.0, 9.0)]) == {"n": 1, "mean": 3.0, "variance": None, "sd": None}
    assert pooled_moments([]) == {"n": 0, "mean": None, "variance": None, "sd": None}
