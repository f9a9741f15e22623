"""Federation hooks and operator logic without a running Airflow: connections from AIRFLOW_CONN_*
variables, a fake coordinator client, a fake task instance."""

from __future__ import annotations

import json

import pytest

from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1
from airflow_provider_kaapana.core.federation.crypto import generate_keypair, public_key_of
from airflow_provider_kaapana.core.federation.exchange import HitlRequest, plain_answer
from airflow_provider_kaapana.core.federation.jobs import FederatedJob
from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError
from airflow_provider_kaapana.hooks import federation as federation_hooks
from airflow_provider_kaapana.hooks.federation import FederationCoordinatorHook, FederationHook
from airflow_provider_kaapana.operators.federation import FederatedRespondOperator

PRIVATE, PUBLIC = generate_keypair()
JOB = FederatedJob.for_run(COHORT_STATISTICS_V1, "manual__1", created="2026-11-26T10:00:00Z")


def site_connection(monkeypatch, conn_id="fed_test", **changes):
    body = {
        "conn_type": "kaapana_federation",
        "host": "https://coordinator.example.org:8443",
        "login": "alpha",
        "password": "site-secret-pw",
        "extra": {
            "site": "alpha",
            "coordinator_public_key": PUBLIC,
            "audit_log": "/tmp/audit.jsonl",
            "policy": {"allowed_analyses": {"cohort_statistics": ["1"]}, "require_approval": False},
        },
    }
    extra = changes.pop("extra", {})
    body.update(changes)
    body["extra"].update(extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
    return FederationHook(conn_id)


def test_settings_from_the_connection(monkeypatch):
    hook = site_connection(monkeypatch)
    settings = hook.settings
    assert settings.site == "alpha" and settings.policy.site == "alpha"
    assert settings.policy.require_approval is False and settings.policy.k_min == 10
    assert settings.coordinator_url == "https://coordinator.example.org:8443"
    assert hook.recipient == "https://coordinator.example.org:8443"
    assert "site-secret-pw" not in repr(settings) and "site-secret-pw" not in repr(hook.client)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"site": "Alpha^1"}, "extra 'site'"),
        ({"coordinator_public_key": ""}, "coordinator_public_key"),
        ({"audit_log": None}, "audit_log"),
        ({"policy": {"allowed_analyses": {}, "kmin": 3}}, "unknown site policy field"),
        ({"policy": {"site": "beta", "allowed_analyses": {}}}, "policy.site differs"),
    ],
)
def test_bad_connections_name_the_field(monkeypatch, extra, message):
    hook = site_connection(monkeypatch, extra=extra)
    with pytest.raises(Exception, match=message):
        _ = hook.settings


def test_the_pinned_key_must_be_a_key(monkeypatch):
    hook = site_connection(monkeypatch, extra={"coordinator_public_key": "bm90IGEga2V5"})
    with pytest.raises(Exception, match="X25519"):
        _ = hook.settings


class FakeClient:
    def __init__(self, details=(), patch_status=None):
        self.details = list(details)
        self.calls = []
        self.patch_status = patch_status

    def get_json(self, path, params=None):
        self.calls.append(("GET", path, params))
        return {"hitl_details": self.details, "total_entries": len(self.details)}

    def request(self, method, path, json=None, operation=None, params=None):
        self.calls.append((method, path, json))
        if self.patch_status:
            raise AirflowApiError("refused", status=self.patch_status)


def detail(user, task_id="site_result", map_index=0):
    return {
        "assigned_users": [{"id": user, "name": user}],
        "body": JOB.to_json(),
        "created_at": "2026-11-26T10:00:00Z",
        "task_instance": {
            "dag_id": JOB.dag_id,
            "dag_run_id": JOB.run_id,
            "task_id": task_id,
            "map_index": map_index,
            "try_number": 1,
        },
    }


def test_pending_requests_are_filtered_by_server_and_by_assigned_user(monkeypatch):
    hook = site_connection(monkeypatch)
    fake = FakeClient([detail("alpha"), detail("alpha2", map_index=1), detail("alpha", task_id="approve")])
    hook.__dict__["client"] = fake
    requests = hook.pending_requests()
    assert [(r.site, r.map_index, r.task_id) for r in requests] == [("alpha", 0, "site_result")]
    _, path, params = fake.calls[0]
    assert path == "dags/~/dagRuns/~/hitlDetails"
    assert params["response_received"] == "false" and "awaiting_input" in params["state"]
    assert (
        params["subject_search"] == "[site:alpha]" and params["dag_id_prefix_pattern"] == "kaapana_federated_"
    )


def test_answer_waits_to_settle_and_takes_409_as_done(monkeypatch):
    hook = site_connection(monkeypatch, extra={"answer_settle_seconds": 3})
    slept = []
    monkeypatch.setattr(federation_hooks.time, "sleep", slept.append)
    request = HitlRequest.from_detail(detail("alpha"), "alpha")
    hook.__dict__["client"] = FakeClient()
    assert hook.answer(request, plain_answer("refused", "no")) is True  # created long ago: no wait
    assert slept == []
    fresh = HitlRequest(**{**request.to_dict(), "created_at": "2999-01-01T00:00:00Z"})
    hook.__dict__["client"] = FakeClient(patch_status=409)
    assert hook.answer(fresh, plain_answer("refused", "no")) is False
    assert slept == [3.0]  # never longer than the settle time, whatever the clocks say
    hook.__dict__["client"] = FakeClient(patch_status=403)
    with pytest.raises(AirflowApiError):
        hook.answer(request, plain_answer("refused", "no"))


def test_coordinator_hook_reads_the_key_from_the_password(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_FED_COORD",
        json.dumps({"conn_type": "kaapana_federation_coordinator", "password": PRIVATE}),
    )
    hook = FederationCoordinatorHook("fed_coord")
    assert hook.private_key() == PRIVATE and hook.public_key() == public_key_of(PRIVATE) == PUBLIC
    ok, message = hook.test_connection()
    assert ok and PUBLIC in message and PRIVATE not in message


class FakeTI:
    dag_id, run_id = "site_dag", "run"

    def __init__(self, analyse_state, approval=None):
        self.analyse_state = analyse_state
        self.approval = approval

    def get_task_states(self, dag_id, task_ids, run_ids):
        return {"run": {"analyse": self.analyse_state}}

    def xcom_pull(self, task_ids):
        return self.approval


@pytest.mark.parametrize(
    ("analyse_state", "approval", "rejected"),
    [
        ("skipped", None, True),  # a rejecting approval skips the analysis and pushes nothing
        ("success", {"chosen_options": ["Approve"]}, False),
        ("success", None, False),  # no approval needed
        ("failed", None, False),
        ("upstream_failed", {"chosen_options": ["Reject"]}, True),
    ],
)
def test_respond_recognises_a_rejection(analyse_state, approval, rejected):
    operator = FederatedRespondOperator(task_id="respond")
    assert operator.trigger_rule == "all_done"
    assert operator._rejected(FakeTI(analyse_state, approval)) is rejected


def test_the_light_constants_follow_the_index_defaults():
    # the operators module avoids importing the index template (pydicom) at parse time
    from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
    from airflow_provider_kaapana.hooks.search import SearchHook
    from airflow_provider_kaapana.operators.federation import SEARCH_CONN_ID, SEARCH_INDEX

    assert (SEARCH_INDEX, SEARCH_CONN_ID) == (DEFAULT_INDEX, SearchHook.default_conn_name)


DEID_KEY = "site-alpha-deid-key-0123456789abcdef"


def measurement_documents(n=6):
    return [
        {
            "PatientID": f"ALPHA{p:04d}",
            "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1337.9.{p}.1",
            "SeriesInstanceUID": f"1.2.826.0.1.3680043.10.1337.9.{p}.2",
            "kaapana": {"segments": [{"label": "liver", "volume_ml": 1500.0 + p}]},
        }
        for p in range(n)
    ]


def run_analysis(monkeypatch, analysis_job, documents):
    from airflow_provider_kaapana.core.federation import site as site_module
    from airflow_provider_kaapana.hooks.search import SearchHook
    from airflow_provider_kaapana.operators.federation import FederatedAnalysisOperator

    site_connection(
        monkeypatch,
        extra={
            "policy": {
                "allowed_analyses": {"segment_measurements": "*", "cohort_statistics": "*"},
                "require_approval": False,
                "k_min": 3,
            }
        },
    )
    monkeypatch.setattr(site_module, "site_documents", lambda job, declared, client, index: documents)
    monkeypatch.setattr(SearchHook, "get_conn", lambda self: None)
    request = HitlRequest.from_detail(detail("alpha"), "alpha")
    operator = FederatedAnalysisOperator(task_id="analyse", federation_conn_id="fed_test")
    return operator.execute({"params": {"job": analysis_job.to_dict(), "request": request.to_dict()}})


def measurement_job() -> FederatedJob:
    """A segment-measurements job (record-level) for the liver, k = 3."""
    from airflow_provider_kaapana.core.federation.measurements import SEGMENT_MEASUREMENTS_V1

    return FederatedJob.for_run(
        SEGMENT_MEASUREMENTS_V1,
        "manual__1",
        parameters={"label": "liver"},
        k=3,
        created="2026-12-01T10:00:00Z",
    )


def test_a_record_level_analysis_is_pseudonymised_with_the_sites_own_key(monkeypatch):
    from pydicom.dataset import Dataset

    from airflow_provider_kaapana.core.deid.deidentify import deidentify
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile

    job = measurement_job()
    documents = measurement_documents()
    # without the site's key connection the analysis fails (answered failed): nothing leaves
    monkeypatch.delenv("AIRFLOW_CONN_KAAPANA_DEID_KEY", raising=False)
    with pytest.raises(Exception, match="kaapana_deid_key"):
        run_analysis(monkeypatch, job, documents)
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAAPANA_DEID_KEY", json.dumps({"conn_type": "generic", "password": DEID_KEY})
    )
    outcome = run_analysis(monkeypatch, job, documents)
    assert outcome["status"] == "ok", outcome["reason"]
    rows = outcome["document"]["records"]
    ds = Dataset()
    ds.PatientID = "ALPHA0002"
    expected = deidentify(ds, DeidentificationProfile(), DEID_KEY.encode()).PatientID
    assert [r["patient"] for r in rows if r["volume_ml"] == 1502.0] == [expected]
    text = json.dumps(outcome)
    assert "ALPHA0" not in text and DEID_KEY not in text and "1.2.826.0.1.3680043" not in text


def test_the_analysis_reads_the_site_key_as_the_deid_operator_does(monkeypatch):
    """One reader of the key (hooks.deid.site_key): extra ``key`` accepted, a short key refused."""
    from airflow_provider_kaapana.hooks.deid import DEFAULT_KEY_CONN_ID
    from airflow_provider_kaapana.operators.federation import FederatedAnalysisOperator

    job = measurement_job()
    assert FederatedAnalysisOperator(task_id="a").key_conn_id == DEFAULT_KEY_CONN_ID
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAAPANA_DEID_KEY", json.dumps({"conn_type": "generic", "extra": {"key": DEID_KEY}})
    )
    assert run_analysis(monkeypatch, job, measurement_documents())["status"] == "ok"
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAAPANA_DEID_KEY", json.dumps({"conn_type": "generic", "password": "short"})
    )
    with pytest.raises(Exception, match="kaapana_deid_key") as caught:
        run_analysis(monkeypatch, job, measurement_documents())
    assert "short" not in str(caught.value)
