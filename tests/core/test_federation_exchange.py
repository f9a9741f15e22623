"""The site <-> coordinator wire without Airflow: requests, sealed answers, audit line, the report."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json

import pytest

from airflow_provider_kaapana.core.federation.audit import read_audit_log
from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1
from airflow_provider_kaapana.core.federation.coordinator import aggregate_answers, write_report
from airflow_provider_kaapana.core.federation.crypto import generate_keypair
from airflow_provider_kaapana.core.federation.exchange import (
    OPTIONS,
    HitlRequest,
    plain_answer,
    plan_requests,
    record_sealed_egress,
    result_from_answer,
    sealed_answer,
    site_token,
)
from airflow_provider_kaapana.core.federation.guard import GuardResult
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.site import analyse, cohort_selection
from airflow_provider_kaapana.exceptions import InvalidJobError
from airflow_provider_kaapana.testing.federation import synthetic_site

RUN_ID = "manual__2026-11-26T10:00:00+00:00"
JOB = FederatedJob.for_run(COHORT_STATISTICS_V1, RUN_ID, created="2026-11-26T10:00:00Z")


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for name, n, seed in (("alpha", 40, 1), ("beta", 30, 2)):
        site = synthetic_site(root, name, n_patients=n, seed=seed)
        policy = SitePolicy.from_dict({"site": name, "allowed_analyses": {"cohort_statistics": ["1"]}})
        out[name] = (site, analyse(JOB, policy, site.documents))
    return out


def xcom(site, answer, user=None):
    """What the HITL task's XCom holds after the site answered."""
    return {
        "chosen_options": [answer.chosen],
        "params_input": answer.params_input,
        "responded_by_user": {"id": user or site, "name": user or site},
        "responded_at": _dt.datetime.now(_dt.timezone.utc),
    }


def test_plan_has_one_request_per_site_with_a_delimited_token():
    planned = plan_requests(JOB, ["alpha", "beta"], _dt.timedelta(seconds=60))
    assert [p["assigned_users"] for p in planned] == [
        [{"id": "alpha", "name": "alpha"}],
        [{"id": "beta", "name": "beta"}],
    ]
    assert "[site:alpha]" in planned[0]["subject"] and site_token("beta") in planned[1]["subject"]
    assert FederatedJob.from_json(planned[0]["body"]) == JOB
    with pytest.raises(InvalidJobError, match="twice"):
        plan_requests(JOB, ["alpha", "alpha"], _dt.timedelta(seconds=60))
    with pytest.raises(InvalidJobError, match="must match"):
        plan_requests(JOB, ["Alpha^X"], _dt.timedelta(seconds=60))
    assert OPTIONS == ("ok", "refused", "failed", "timed_out")


def test_request_keeps_only_own_assignments_and_checks_its_job():
    detail = {
        "assigned_users": [{"id": "site_a", "name": "site_a"}],
        "body": JOB.to_json(),
        "task_instance": {
            "dag_id": JOB.dag_id,
            "dag_run_id": RUN_ID,
            "task_id": "site_result",
            "map_index": 2,
            "try_number": 1,
        },
    }
    assert HitlRequest.from_detail(detail, "siteXa") is None  # '_' matched server-side, not here
    request = HitlRequest.from_detail(detail, "site_a")
    assert request.job() == JOB
    assert request.local_run_id() == f"fed__{RUN_ID}__2__try1"
    assert request.path.endswith("/taskInstances/site_result/2/hitlDetails")
    assert HitlRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    forged = HitlRequest.from_detail(
        {**detail, "task_instance": {**detail["task_instance"], "dag_run_id": "x"}}, "site_a"
    )
    with pytest.raises(InvalidJobError, match="belongs to"):
        forged.job()


def test_sealed_answer_round_trip_and_audit_line(outcomes, keys, tmp_path):
    private, public = keys
    _, outcome = outcomes["alpha"]
    result = GuardResult(document=outcome.document, k=outcome.k, actions=())
    answer = sealed_answer(result.payload, job_id=JOB.job_id, site="alpha", coordinator_public_key=public)
    # nothing readable leaves: the params hold only the sealed envelope
    wire = json.dumps(answer.params_input)
    assert '"statistics"' not in wire and answer.payload_sha256 not in wire
    log = tmp_path / "audit.jsonl"
    record_sealed_egress(log, result, recipient="http://127.0.0.1:8080", sealed_sha256=answer.sealed_sha256)
    (record,) = read_audit_log(log)
    assert record.sha256 == answer.payload_sha256 == hashlib.sha256(result.payload).hexdigest()
    assert json.loads(log.read_text())["sealed_sha256"] == answer.sealed_sha256

    got, receipt = result_from_answer("alpha", JOB, xcom("alpha", answer), private)
    assert got.status.value == "ok" and got.document == outcome.document
    assert receipt.payload_sha256 == record.sha256 and receipt.sealed_sha256 == answer.sealed_sha256


def test_a_sealed_answer_cannot_be_replayed_for_another_site_or_job(outcomes, keys):
    private, public = keys
    _, outcome = outcomes["alpha"]
    payload = GuardResult(document=outcome.document, k=outcome.k, actions=()).payload
    answer = sealed_answer(payload, job_id=JOB.job_id, site="alpha", coordinator_public_key=public)
    other_job = FederatedJob.for_run(COHORT_STATISTICS_V1, "manual__other", created="2026-11-26T10:00:00Z")
    as_beta, _ = result_from_answer("beta", JOB, xcom("beta", answer), private)
    as_other_job, _ = result_from_answer("alpha", other_job, xcom("alpha", answer), private)
    assert as_beta.status.value == as_other_job.status.value == "failed"
    assert "another job or site" in as_beta.reason


def test_only_the_sites_own_user_counts(outcomes, keys):
    private, public = keys
    answer = plain_answer("refused", "not on the allow-list")
    by_other, receipt = result_from_answer("alpha", JOB, xcom("alpha", answer, user="beta"), private)
    assert by_other.status.value == "failed" and receipt.responded_by == "beta"
    refused, _ = result_from_answer("alpha", JOB, xcom("alpha", answer), private)
    assert refused.status.value == "refused" and refused.reason == "not on the allow-list"
    default = {"chosen_options": ["timed_out"], "params_input": {"result": {}}, "responded_by_user": None}
    assert result_from_answer("alpha", JOB, default, private)[0].status.value == "timed_out"
    missing, _ = result_from_answer("alpha", JOB, None, private, task_state="success")
    assert missing.status.value == "failed" and "success" in missing.reason


def test_report_of_sealed_answers(outcomes, keys, tmp_path):
    private, public = keys
    answers = []
    for name in ("alpha", "beta"):
        _, outcome = outcomes[name]
        payload = GuardResult(document=outcome.document, k=outcome.k, actions=()).payload
        answers.append(
            xcom(name, sealed_answer(payload, job_id=JOB.job_id, site=name, coordinator_public_key=public))
        )
    answers.append(None)
    report = aggregate_answers(
        JOB, ["alpha", "beta", "gamma"], answers, private, task_states=[None, None, "failed"]
    )
    assert [(s["name"], s["status"]) for s in report["sites"]] == [
        ("alpha", "ok"),
        ("beta", "ok"),
        ("gamma", "failed"),
    ]
    assert report["partial"] is True
    total = sum(len(site.documents) for site, _ in outcomes.values())
    assert report["aggregate"]["series_by_modality"]["total"] == total
    first = write_report(report, tmp_path)
    again = write_report(aggregate_answers(JOB, ["alpha", "beta", "gamma"], answers, private), tmp_path)
    assert first == again
    assert json.loads(first[0].read_text())["aggregate"] == report["aggregate"]


def test_cohort_selection():
    assert cohort_selection({}) == {"match_all": {}}
    assert cohort_selection({"modality": "ct"}) == {
        "bool": {"filter": [{"terms": {"kaapana.modality": ["CT"]}}]}
    }
    assert cohort_selection({"query": {"query": {"term": {"a": 1}}}}) == {"term": {"a": 1}}
