"""Federated jobs and site policies: JSON round trips, validation, and what a site accepts."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from airflow_provider_kaapana.core.federation.audit import AuditRecord
from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1
from airflow_provider_kaapana.core.federation.jobs import (
    FederatedJob,
    QueryBudget,
    SitePolicy,
    make_job_id,
    split_job_id,
)
from airflow_provider_kaapana.exceptions import InvalidJobError, InvalidPolicyError

RUN_ID = "manual__2026-11-26T10:00:00+00:00"


def job(**overrides) -> FederatedJob:
    data = {
        "job_id": f"kaapana_federated_cohort_statistics/{RUN_ID}",
        "analysis": "cohort_statistics",
        "analysis_version": "1",
        "parameters": {},
        "k": 10,
        "created": "2026-11-26T10:00:00Z",
    }
    data.update(overrides)
    return FederatedJob.from_dict(data)


def policy(**overrides) -> SitePolicy:
    data = {"site": "alpha", "allowed_analyses": {"cohort_statistics": ["1"]}}
    data.update(overrides)
    return SitePolicy.from_dict(data)


def test_job_id_is_dag_id_and_run_id():
    job_id = make_job_id("kaapana_federated_cohort_statistics", RUN_ID)
    assert split_job_id(job_id) == ("kaapana_federated_cohort_statistics", RUN_ID)
    with pytest.raises(InvalidJobError):
        make_job_id("a/b", RUN_ID)
    with pytest.raises(InvalidJobError):
        split_job_id("no-separator")


def test_job_round_trips_through_json():
    original = FederatedJob.for_run(
        COHORT_STATISTICS_V1, RUN_ID, k=15, created=dt.datetime(2026, 11, 26, 11, 0, tzinfo=dt.timezone.utc)
    )
    text = original.to_json()
    again = FederatedJob.from_json(text)
    assert again == original
    assert again.to_json() == text
    assert json.loads(text)["created"] == "2026-11-26T11:00:00Z"
    assert original.dag_id == "kaapana_federated_cohort_statistics" and original.run_id == RUN_ID


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"analysis": "other"}, "runs DAG"),
        ({"analysis_version": 1}, "analysis_version"),
        ({"k": True}, "k must be an integer"),
        ({"k": 0}, "k must be an integer"),
        ({"created": "2026-11-26T10:00:00"}, "time zone"),
        ({"parameters": {"x": float("nan")}}, "plain JSON"),
        ({"parameters": {"Bad Name": 1}}, "parameter names"),
        ({"job_id": "kaapana_federated_cohort_statistics/run with spaces"}, "run_id"),
    ],
)
def test_invalid_jobs_say_what_is_wrong(overrides, fragment):
    with pytest.raises(InvalidJobError, match=fragment):
        job(**overrides)


def test_unknown_or_missing_job_fields_are_refused():
    data = json.loads(job().to_json())
    with pytest.raises(InvalidJobError, match="unknown job field"):
        FederatedJob.from_dict({**data, "min_count": 1})
    del data["k"]
    with pytest.raises(InvalidJobError, match="missing k"):
        FederatedJob.from_dict(data)


def test_job_parameters_are_a_private_copy():
    params = {"a": [1, 2]}
    j = FederatedJob.for_run(COHORT_STATISTICS_V1, RUN_ID, parameters=params)
    params["a"].append(3)
    assert j.parameters == {"a": [1, 2]}


# --------------------------------------------------------------------------------------------------
# policies


def test_policy_from_connection_extra_with_defaults():
    extra = json.dumps({"policy": {"site": "alpha", "allowed_analyses": {"cohort_statistics": [1]}}})
    p = SitePolicy.from_json(extra)
    assert p.allowed_analyses == {"cohort_statistics": ("1",)}
    assert p.require_approval is True and p.k_min == 10 and p.max_payload_bytes == 64 * 1024
    assert SitePolicy.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"kmin": 5}, "unknown site policy field"),
        ({"k_min": 1}, "k_min"),
        ({"require_approval": "yes"}, "require_approval"),
        ({"allowed_analyses": {"cohort_statistics": "1"}}, "list or"),
        ({"allowed_analyses": {"cohort_statistics": ["v1"]}}, "1-3 digits"),
        ({"site": "Alpha Hospital"}, "site must match"),
        ({"query_budget": {"max_jobs": 0}}, "max_jobs"),
    ],
)
def test_invalid_policies_are_refused_not_guessed(overrides, fragment):
    with pytest.raises(InvalidPolicyError, match=fragment):
        policy(**overrides)


def test_policy_refuses_analysis_not_on_the_allow_list():
    p = policy(allowed_analyses={"segmentation_statistics": "*"})
    decision = p.decide(job())
    assert not decision.accepted
    assert "not on site alpha's allow-list" in decision.reason


def test_policy_refuses_a_version_not_allowed():
    p = policy(allowed_analyses={"cohort_statistics": ["2"]})
    decision = p.decide(job())
    assert not decision.accepted
    assert "version 1 of cohort_statistics is not allowed" in decision.reason


def test_star_allows_every_implemented_version_only():
    p = policy(allowed_analyses={"cohort_statistics": "*"})
    assert p.decide(job()).accepted
    unimplemented = p.decide(job(analysis_version="2"))
    assert not unimplemented.accepted and "not implemented" in unimplemented.reason


def test_policy_refuses_parameters_the_analysis_does_not_take():
    decision = policy().decide(job(parameters={"modality": "CT"}))
    assert not decision.accepted and "takes no parameter(s) modality" in decision.reason


def test_site_applies_the_larger_k():
    p = policy(k_min=20)
    assert p.decide(job(k=5)).k == 20
    assert p.decide(job(k=50)).k == 50
    decision = policy(require_approval=False).decide(job())
    assert decision.accepted and decision.require_approval is False and decision.k == 10


def test_query_budget_counts_other_released_jobs_of_the_analysis():
    now = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)

    def release(run: str, hours_ago: float, analysis: str = "cohort_statistics") -> AuditRecord:
        return AuditRecord(
            job_id=f"kaapana_federated_{analysis}/{run}",
            analysis=analysis,
            analysis_version="1",
            time=now - dt.timedelta(hours=hours_ago),
            recipient="https://coordinator",
            k=10,
            sha256="0" * 64,
            size=0,
            payload=b"",
        )

    p = policy(query_budget={"max_jobs": 2, "window_hours": 24})
    assert p.query_budget == QueryBudget(2, 24)
    history = [release("r1", 1), release("r2", 2), release("old", 48), release("x", 1, "other_analysis")]
    refused = p.decide(job(), releases=history, now=now)
    assert not refused.accepted and "query budget" in refused.reason
    # a retry of a job that was already released does not spend the budget again
    retry = job(job_id="kaapana_federated_cohort_statistics/r2")
    assert p.decide(retry, releases=history, now=now).accepted
    assert p.decide(job(), releases=history[2:], now=now).accepted


def test_federation_core_imports_without_airflow():
    """The core is called from Airflow tasks but never imports Airflow (the wiring lives elsewhere)."""
    code = "import sys; sys.modules['airflow'] = None; import airflow_provider_kaapana.core.federation"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
