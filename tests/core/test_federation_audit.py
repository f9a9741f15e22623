"""The egress audit log: what is hashed is exactly what is sent, and nothing is ever rewritten."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from airflow_provider_kaapana.core.federation.audit import read_audit_log, record_egress
from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1, cohort_statistics
from airflow_provider_kaapana.core.federation.guard import guard_egress
from airflow_provider_kaapana.core.federation.hitl import result_from_hitl, site_answer
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.exceptions import AuditLogError

POLICY = SitePolicy(site="alpha", allowed_analyses={"cohort_statistics": "*"})
WHEN = dt.datetime(2026, 11, 26, 12, 30, tzinfo=dt.timezone.utc)


def guarded(run_id: str):
    job = FederatedJob.for_run(COHORT_STATISTICS_V1, run_id, created="2026-11-26T10:00:00Z")
    docs = [{"PatientID": f"P{i}", "Modality": "CT", "SliceThickness": 1.0} for i in range(25)]
    return guard_egress(cohort_statistics(docs, job_id=job.job_id, site="alpha"), job=job, policy=POLICY)


def test_hash_in_the_log_is_the_sha256_of_the_returned_bytes(tmp_path):
    log = tmp_path / "audit" / "egress.jsonl"
    result = guarded("r1")
    sent = record_egress(log, result, recipient="https://coordinator.example/api/v2", now=WHEN)
    assert sent == result.payload
    (record,) = read_audit_log(log)
    assert record.sha256 == hashlib.sha256(sent).hexdigest()
    assert record.payload == sent and record.size == len(sent)
    assert record.job_id == result.document["job_id"] and record.analysis == "cohort_statistics"
    assert record.time == WHEN and record.k == 10
    assert json.loads(sent) == result.document
    # the coordinator receives the same bytes and checks the same hash
    option, params = site_answer("ok", payload=sent)
    assert params["sha256"] == record.sha256
    assert result_from_hitl("alpha", [option], params).document == result.document


def test_log_is_append_only_and_each_line_verifies(tmp_path):
    log = tmp_path / "egress.jsonl"
    record_egress(log, guarded("r1"), recipient="coordinator", now=WHEN)
    first_line = log.read_bytes()
    record_egress(log, guarded("r2"), recipient="coordinator", now=WHEN + dt.timedelta(minutes=1))
    assert log.read_bytes().startswith(first_line)
    assert [r.job_id.split("/")[1] for r in read_audit_log(log)] == ["r1", "r2"]
    assert log.stat().st_mode & 0o077 == 0  # readable by the site's service user only


def test_a_tampered_line_is_detected(tmp_path):
    log = tmp_path / "egress.jsonl"
    record_egress(log, guarded("r1"), recipient="coordinator", now=WHEN)
    line = json.loads(log.read_text())
    line["payload"] = line["payload"].replace('"total":25', '"total":26')
    log.write_text(json.dumps(line) + "\n")
    with pytest.raises(AuditLogError, match="line 1"):
        read_audit_log(log)


def test_recipient_with_credentials_is_refused(tmp_path):
    with pytest.raises(ValueError, match="credentials"):
        record_egress(tmp_path / "log", guarded("r1"), recipient="https://site:secret@coordinator/api/v2")
    assert not (tmp_path / "log").exists()


def test_missing_log_reads_as_empty(tmp_path):
    assert read_audit_log(tmp_path / "none.jsonl") == []
