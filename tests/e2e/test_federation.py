"""Federated cohort statistics between real Airflows: one coordinator, three running sites, one absent.

Each Airflow runs api-server, scheduler and dag-processor (LocalExecutor, its own PostgreSQL database);
each running site has its own osmem-server holding its own synthetic cohort (real DICOM headers ->
index documents). Sites talk to the coordinator only over its REST API v2, as their own users.

* ``alpha`` answers automatically; ``beta`` asks a person first (the test approves job 1 and
  rejects job 2); ``gamma``'s policy allows only version 2 of the analysis (refuses); ``delta`` is a
  user on the coordinator whose Airflow never starts (times out).
* Job 1 asks all four; job 2 asks alpha and beta; job 3 asks beta, whose operator marks the local
  run failed while it waits for approval. Then job 1's aggregate is cleared and run again, and
  alpha's part of job 1 is cleared and answered again.

The module shares one sandbox; the tests read what the scenario left behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from airflow_provider_kaapana.core.federation.aggregate import SiteResult, aggregate_results
from airflow_provider_kaapana.core.federation.audit import read_audit_log
from airflow_provider_kaapana.core.federation.cohort import cohort_statistics, compute_cohort_statistics
from airflow_provider_kaapana.core.federation.crypto import open_sealed
from airflow_provider_kaapana.core.federation.exchange import sealed_sha256, sealing_aad
from airflow_provider_kaapana.core.federation.guard import collect_known_identifiers, guard_egress
from airflow_provider_kaapana.core.federation.hitl import parse_payload
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.report import build_report
from airflow_provider_kaapana.testing.federated_sandbox import (
    COORDINATOR_DAG,
    POLL_DAG,
    SITE_DAG,
    FederatedSandbox,
    SiteSpec,
)

pytestmark = pytest.mark.slow

SITES = (
    SiteSpec("alpha", n_patients=60, seed=21),
    SiteSpec("beta", n_patients=45, seed=22, require_approval=True),
    SiteSpec("gamma", n_patients=20, seed=23, allowed_analyses={"cohort_statistics": ["2"]}),
    SiteSpec("delta", n_patients=10, seed=24, start=False),
)
ANSWERING = ("alpha", "beta")
# long enough for a, b (with its approval) and c to answer on a loaded 2-core machine; delta never does
JOB1_TIMEOUT_S = 60


class Scenario:
    def __init__(self, sandbox: FederatedSandbox) -> None:
        self.sandbox = sandbox
        self.timings: dict[str, float] = {}
        self.job1 = self.job2 = self.job3 = ""
        self.report1_first = self.report1_after_aggregate_clear = b""
        self.report1_after_gammalear: dict = {}
        self.aggregate_tries = 0

    def timed(self, name: str, fn):
        started = time.monotonic()
        result = fn()
        self.timings[name] = round(time.monotonic() - started, 1)
        return result

    def clear(self, run_id: str, task_ids: list, include_downstream: bool) -> None:
        self.sandbox.coordinator.api(
            "POST",
            f"dags/{COORDINATOR_DAG}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "only_failed": False,
                "reset_dag_runs": True,
                "include_downstream": include_downstream,
            },
        )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Iterator[Scenario]:
    started = time.monotonic()
    sandbox = FederatedSandbox(tmp_path_factory.mktemp("federation"), SITES, poll_interval=3.0, postgres=True)
    s = Scenario(sandbox)
    try:
        try:
            s.timed("start", sandbox.start)
        except Exception as exc:
            pytest.fail(f"the federated sandbox did not start: {exc}", pytrace=False)
        s.job1 = sandbox.trigger([spec.name for spec in SITES], site_timeout_seconds=JOB1_TIMEOUT_S)
        s.job2 = sandbox.trigger(list(ANSWERING), site_timeout_seconds=300)
        s.job3 = sandbox.trigger(["beta"], site_timeout_seconds=300)
        s.timed("beta approves job 1", lambda: sandbox.decide_approval("beta", s.job1, approve=True))
        s.timed("beta rejects job 2", lambda: sandbox.decide_approval("beta", s.job2, approve=False))
        s.timed("beta aborts job 3", lambda: sandbox.abort_local_run("beta", s.job3))
        assert s.timed("job 2", lambda: sandbox.wait(s.job2, timeout=240)) == "success"
        assert s.timed("job 3", lambda: sandbox.wait(s.job3, timeout=240)) == "success"
        assert s.timed("job 1", lambda: sandbox.wait(s.job1, timeout=240)) == "success"
        report_json = sandbox.report_dir(s.job1) / "report.json"
        s.report1_first = report_json.read_bytes()

        # a re-run of the aggregate rewrites the same report
        s.clear(s.job1, ["aggregate"], include_downstream=False)
        assert s.timed("aggregate cleared", lambda: sandbox.wait(s.job1, timeout=120)) == "success"
        s.aggregate_tries = sandbox.coordinator.task_instances(COORDINATOR_DAG, s.job1)["aggregate"][
            "try_number"
        ]
        s.report1_after_aggregate_clear = report_json.read_bytes()

        # alpha's part cleared: the site sees try 2, computes and answers again; nothing doubles
        s.clear(s.job1, [["site_result", 0]], include_downstream=True)
        assert s.timed("alpha cleared", lambda: sandbox.wait(s.job1, timeout=180)) == "success"
        s.report1_after_gammalear = json.loads(report_json.read_text())
        s.timings["total"] = round(time.monotonic() - started, 1)
        print(f"\nfederation scenario timings (s): {s.timings}")
        yield s
    finally:
        sandbox.stop()


# --- helpers ---------------------------------------------------------------------------------------


def hitl_details(sandbox: FederatedSandbox, run_id: str) -> dict[int, dict]:
    """map index -> the coordinator's HITL details of one run (as its admin sees them)."""
    data = sandbox.coordinator.api(
        "GET",
        "dags/~/dagRuns/~/hitlDetails",
        params={"dag_id_pattern": COORDINATOR_DAG, "dag_run_id_pattern": run_id, "limit": 100},
    ).json()
    out = {}
    for item in data["hitl_details"]:
        if item["task_instance"]["dag_run_id"] == run_id:
            out[item["task_instance"]["map_index"]] = item
    return out


def hitl_try(sandbox: FederatedSandbox, run_id: str, map_index: int, try_number: int) -> dict:
    path = (
        f"dags/{COORDINATOR_DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/site_result/"
        f"{map_index}/hitlDetails/tries/{try_number}"
    )
    return sandbox.coordinator.api("GET", path).json()


def open_answer(sandbox: FederatedSandbox, job_id: str, site: str, params_input: dict) -> dict:
    sealed = params_input["result"]["sealed"]
    inner = parse_payload(open_sealed(sealed, sandbox.private_key, sealing_aad(job_id, site)))
    return parse_payload(inner["payload"])


def site_order(run_id: str, sandbox: FederatedSandbox) -> list[str]:
    tis = sandbox.coordinator.task_instances(COORDINATOR_DAG, run_id)
    return [tis[f"site_result[{i}]"]["rendered_map_index"] for i in range(len(SITES))]


def all_task_logs(airflow, dag_id: str, run_ids: list[str]) -> str:
    texts = []
    for run_id in run_ids:
        for key, ti in airflow.task_instances(dag_id, run_id).items():
            for try_number in range(1, (ti.get("try_number") or 0) + 1):
                try:
                    texts.append(
                        airflow.task_log(dag_id, run_id, ti["task_id"], try_number, ti.get("map_index", -1))
                    )
                except Exception as exc:  # a skipped task has no log
                    texts.append(f"(no log for {key} try {try_number}: {type(exc).__name__})")
    return "\n".join(texts)


# --- the tests -------------------------------------------------------------------------------------


def test_statuses_refused_and_timed_out_sites_and_partial_report(scenario):
    report = json.loads(scenario.report1_first)
    rows = {row["name"]: row for row in report["sites"]}
    assert {name: row["status"] for name, row in rows.items()} == {
        "alpha": "ok",
        "beta": "ok",
        "gamma": "refused",
        "delta": "timed_out",
    }
    assert "version 1 of cohort_statistics is not allowed at site gamma" in rows["gamma"]["reason"]
    assert rows["alpha"]["responded_by"] == "alpha" and rows["delta"]["responded_by"] is None
    assert report["partial"] is True
    assert set(report) >= {"sites", "aggregate"}
    # the run succeeded although a site timed out; the HTML sits beside the JSON
    html = (scenario.sandbox.report_dir(scenario.job1) / "report.html").read_text()
    assert "delta" in html and "timed_out" in html and "<svg" in html

    job2 = scenario.sandbox.report(scenario.job2)
    rows2 = {row["name"]: row for row in job2["sites"]}
    assert rows2["alpha"]["status"] == "ok"
    assert rows2["beta"]["status"] == "refused"
    assert rows2["beta"]["reason"] == "rejected by the site's reviewer"


def test_a_local_run_marked_failed_answers_failed(scenario):
    report = scenario.sandbox.report(scenario.job3)
    assert [(r["name"], r["status"], r["reason"]) for r in report["sites"]] == [
        ("beta", "failed", "the site's analysis run failed")
    ]
    assert report["partial"] is True


def test_aggregate_equals_the_statistics_of_the_union(scenario):
    sandbox = scenario.sandbox
    report = json.loads(scenario.report1_first)
    job = FederatedJob.from_dict(report["job"])
    # the same pooling, done here from each site's documents and its own guard
    results = {}
    for name in ANSWERING:
        site = sandbox.sites[name]
        policy = SitePolicy.from_dict({"site": name, "allowed_analyses": {"cohort_statistics": ["1"]}})
        raw = cohort_statistics(site.cohort.documents, job_id=job.job_id, site=name)
        released = guard_egress(
            raw, job=job, policy=policy, known_identifiers=collect_known_identifiers(site.cohort.documents)
        )
        results[name] = SiteResult(name, "ok", document=released.document)
    expected = build_report(aggregate_results(job, results, expected_sites=[s.name for s in SITES]))
    assert report["aggregate"] == expected["aggregate"]

    # every complete cell equals the count on the union of both sites' index documents
    # (synthetic PatientIDs start with the site name's first 4 letters: distinct names keep them apart)
    ids = [{doc["PatientID"] for doc in sandbox.sites[n].cohort.documents} for n in ANSWERING]
    assert not ids[0] & ids[1]
    union = compute_cohort_statistics(
        [doc for name in ANSWERING for doc in sandbox.sites[name].cohort.documents]
    )
    checked = 0
    for name, stat in report["aggregate"].items():
        if stat["kind"] == "counts":
            for label, value in stat["cells"].items():
                if label not in stat["incomplete"]:
                    assert value == union[name]["cells"][label], (name, label)
                    checked += 1
            if not stat["total_incomplete"]:
                assert stat["total"] == union[name]["total"]
        elif stat["kind"] == "moments" and not stat["incomplete"]:
            assert stat["n"] == union[name]["n"]
            assert stat["mean"] == pytest.approx(union[name]["sum"] / union[name]["n"])
            checked += 1
    assert checked >= 10
    total_series = sum(len(sandbox.sites[n].cohort.documents) for n in ANSWERING)
    assert report["aggregate"]["series_by_modality"]["total"] == total_series


def test_small_cells_are_suppressed_and_cannot_be_recovered(scenario):
    sandbox = scenario.sandbox
    details = hitl_details(sandbox, scenario.job1)
    order = site_order(scenario.job1, sandbox)
    suppressed = 0
    for name in ANSWERING:
        detail = details[order.index(name)]
        document = open_answer(sandbox, f"{COORDINATOR_DAG}/{scenario.job1}", name, detail["params_input"])
        assert document["site"] == name and document["k"] >= 10
        for stat_name, stat in document["statistics"].items():
            if stat["kind"] == "moments" or stat["withheld"]:
                continue
            values = list(stat["cells"].values()) if stat["kind"] == "counts" else stat["counts"]
            unknown = sum(v is None for v in values)
            suppressed += unknown
            # one unknown cell = the total minus the others: there must be none or at least two
            assert unknown != 1, f"{name}.{stat_name}: a single suppressed cell follows from the total"
            assert all(v is None or v == 0 or v >= 10 for v in values), f"{name}.{stat_name}"
    assert suppressed >= 2, "the cohorts should produce cells below k (the test would prove nothing)"
    report = json.loads(scenario.report1_first)
    assert any(stat.get("incomplete") for stat in report["aggregate"].values())


def test_the_coordinator_received_no_identifier(scenario):
    sandbox = scenario.sandbox
    coordinator = sandbox.coordinator
    received = []
    for run_id in (scenario.job1, scenario.job2):
        received.append(json.dumps(hitl_details(sandbox, run_id)))
        received.append(json.dumps(hitl_try(sandbox, run_id, 0, 1)))
        for key, ti in coordinator.task_instances(COORDINATOR_DAG, run_id).items():
            params = {"map_index": ti.get("map_index", -1)}
            path = (
                f"dags/{COORDINATOR_DAG}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"{ti['task_id']}/xcomEntries/return_value"
            )
            try:
                received.append(coordinator.api("GET", path, params=params).text)
            except Exception:
                received.append(f"(no XCom for {key})")
        folder = sandbox.report_dir(run_id)
        received += [(folder / "report.json").read_text(), (folder / "report.html").read_text()]
        received.append(all_task_logs(coordinator, COORDINATOR_DAG, [run_id]))
    text = "\n".join(received)
    assert "X25519-HKDF-SHA256-AES256GCM" in text and '"series_by_modality"' in text  # the scan sees data

    identifiers = set()
    for site in sandbox.sites.values():
        for t in site.cohort.truth:
            identifiers |= {t.patient_id, t.patient_name, t.patient_name.replace("^", " ")}
            identifiers |= {t.study_instance_uid, t.series_instance_uid}
            if t.birth_date:
                identifiers.add(t.birth_date)
        for doc in site.cohort.documents:
            for fact in (doc.get("kaapana") or {}).get("instances") or []:
                if isinstance(fact, dict) and fact.get("sop"):
                    identifiers.add(fact["sop"])
    lowered = text.lower()
    found = sorted(i for i in identifiers if i and i.lower() in lowered)
    assert not found, f"identifiers reached the coordinator: {found[:5]}"


def test_rerun_gives_the_same_report_and_never_doubles(scenario):
    assert scenario.aggregate_tries == 2
    assert scenario.report1_after_aggregate_clear == scenario.report1_first
    first = json.loads(scenario.report1_first)
    again = scenario.report1_after_gammalear
    assert again["aggregate"] == first["aggregate"]
    assert [(r["name"], r["status"]) for r in again["sites"]] == [
        (r["name"], r["status"]) for r in first["sites"]
    ]
    rows_first = {r["name"]: r for r in first["sites"]}
    rows_again = {r["name"]: r for r in again["sites"]}
    # alpha answered again (a new seal of the same payload); beta's answer is the one it gave before
    assert rows_again["alpha"]["payload_sha256"] == rows_first["alpha"]["payload_sha256"]
    assert rows_again["alpha"]["sealed_sha256"] != rows_first["alpha"]["sealed_sha256"]
    assert rows_again["beta"] == rows_first["beta"]


def test_audit_log_has_one_entry_per_egress_matching_what_was_sent(scenario):
    sandbox = scenario.sandbox
    job1_id, job2_id = (f"{COORDINATOR_DAG}/{r}" for r in (scenario.job1, scenario.job2))
    # alpha: job 1, job 2, job 1 again after the clear; beta: job 1 only (job 2 rejected)
    records = {name: read_audit_log(sandbox.sites[name].audit_log) for name in ANSWERING}
    assert sorted(r.job_id for r in records["alpha"]) == sorted([job1_id, job1_id, job2_id])
    assert [r.job_id for r in records["beta"]] == [job1_id]
    assert not sandbox.sites["gamma"].audit_log.exists()
    for name in ANSWERING:
        for record in records[name]:
            assert hashlib.sha256(record.payload).hexdigest() == record.sha256
            assert record.recipient == sandbox.coordinator.url

    # the sealed bytes each log line names are exactly what the coordinator holds, try by try
    order = site_order(scenario.job1, sandbox)
    sent = {}
    for name in ANSWERING:
        index = order.index(name)
        tries = [1, 2] if name == "alpha" else [1]
        sent[name] = [
            sealed_sha256(hitl_try(sandbox, scenario.job1, index, t)["params_input"]["result"]["sealed"])
            for t in tries
        ]
    order2 = site_order_job2(scenario, sandbox)
    sent["alpha"].append(
        sealed_sha256(
            hitl_try(sandbox, scenario.job2, order2.index("alpha"), 1)["params_input"]["result"]["sealed"]
        )
    )
    for name in ANSWERING:
        lines = [json.loads(line) for line in sandbox.sites[name].audit_log.read_text().splitlines()]
        assert sorted(line["sealed_sha256"] for line in lines) == sorted(sent[name])
    report = scenario.report1_after_gammalear
    rows = {r["name"]: r for r in report["sites"]}
    latest_a = [r for r in records["alpha"] if r.job_id == job1_id][-1]
    assert rows["alpha"]["payload_sha256"] == latest_a.sha256
    assert rows["beta"]["payload_sha256"] == records["beta"][0].sha256


def site_order_job2(scenario, sandbox) -> list[str]:
    tis = sandbox.coordinator.task_instances(COORDINATOR_DAG, scenario.job2)
    return [tis[f"site_result[{i}]"]["rendered_map_index"] for i in range(len(ANSWERING))]


def test_no_password_or_private_key_in_any_task_log(scenario):
    sandbox = scenario.sandbox
    secrets = {sandbox.private_key: "coordinator private key", sandbox.admin_password: "admin password"}
    secrets |= {site.password: f"{site.name}'s password" for site in sandbox.sites.values()}
    logs = [all_task_logs(sandbox.coordinator, COORDINATOR_DAG, [scenario.job1, scenario.job2])]
    for name in ("alpha", "beta", "gamma"):
        airflow = sandbox.sites[name].airflow
        local = [r["dag_run_id"] for r in airflow.api("GET", f"dags/{SITE_DAG}/dagRuns").json()["dag_runs"]]
        logs.append(all_task_logs(airflow, SITE_DAG, local))
        polls = airflow.api(
            "GET", f"dags/{POLL_DAG}/dagRuns", params={"limit": 200, "order_by": "-run_after"}
        ).json()["dag_runs"]
        busy = [
            r["dag_run_id"]
            for r in polls
            if any(
                key.startswith("start_analysis[") for key in airflow.task_states(POLL_DAG, r["dag_run_id"])
            )
        ]
        logs.append(all_task_logs(airflow, POLL_DAG, busy + [r["dag_run_id"] for r in polls[:3]]))
    text = "\n".join(logs)
    assert "answered ok" in text and "refused" in text  # the logs were read
    leaked = [what for secret, what in secrets.items() if secret in text]
    assert not leaked, f"found in task logs: {leaked}"


def test_timings_are_reported(scenario):
    """Not a limit: the figures show up in the test output (-s) and in the assertion message if slow."""
    assert scenario.timings["total"] < 600, scenario.timings


def test_gamma_refused_at_once_and_delta_never_started(scenario):
    sandbox = scenario.sandbox
    airflow = sandbox.sites["gamma"].airflow
    assert airflow.api("GET", f"dags/{SITE_DAG}/dagRuns").json()["total_entries"] == 0
    assert sandbox.sites["delta"].airflow is None
    assert Path(sandbox.root).exists()
