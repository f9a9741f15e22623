"""Federated analysis operators: the coordinator's aggregate, and a site's poll, analysis and answer.

Thin: each reads its arguments and the run's XCom, calls the core
(:mod:`airflow_provider_kaapana.core.federation`) and a federation hook, and returns a small XCom.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from airflow_provider_kaapana.core.federation.audit import read_audit_log
from airflow_provider_kaapana.core.federation.exchange import (
    SITE_RESULT_TASK,
    HitlRequest,
    plain_answer,
    record_sealed_egress,
    sealed_answer,
    site_dag_id,
)
from airflow_provider_kaapana.core.federation.guard import GuardResult, verify_received
from airflow_provider_kaapana.core.federation.jobs import FederatedJob
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import InvalidJobError
from airflow_provider_kaapana.hooks import deid as deid_hook
from airflow_provider_kaapana.hooks.deid import DEFAULT_KEY_CONN_ID
from airflow_provider_kaapana.hooks.federation import FederationCoordinatorHook, FederationHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator

# Every task process parses its DAG file, so this module keeps its import cost small: the search
# client (and pydicom behind the index template) are imported by the one task that queries the index.
SEARCH_CONN_ID = "kaapana_search_default"
SEARCH_INDEX = "kaapana-dicom"  # core.index.template.DEFAULT_INDEX

APPROVE = "Approve"


class FederatedAggregateOperator(KaapanaBaseOperator):
    """Read every site's answer of this run, open and check it, pool, write the report.

    :param plan_task_id: the task whose XCom is the list of per-site HITL kwargs (one per map index)
    :param hitl_task_id: the mapped HITL task the sites answer
    :param coordinator_conn_id: a ``kaapana_federation_coordinator`` connection (the private key)
    :param workspace_base: the report goes to ``<base>/<dag_id>/<run_id>/federation/``

    Returns ``{"job_id", "statuses": {site: status}, "partial", "report_json", "report_html"}``. A
    re-run writes the same report again: answers are keyed by site.
    """

    ui_color = "#d4b9da"

    def __init__(
        self,
        *,
        plan_task_id: str = "plan",
        hitl_task_id: str = SITE_RESULT_TASK,
        coordinator_conn_id: str = FederationCoordinatorHook.default_conn_name,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.hitl_task_id = hitl_task_id
        self.coordinator_conn_id = coordinator_conn_id
        self.workspace_base = workspace_base

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.federation.coordinator import (
            aggregate_answers,
            summary_of,
            write_report,
        )

        ti = context["ti"]
        planned = ti.xcom_pull(task_ids=self.plan_task_id)
        if not planned:
            raise InvalidJobError(f"task {self.plan_task_id} planned no site request")
        job = FederatedJob.from_json(planned[0]["body"])
        sites = [entry["assigned_users"][0]["id"] for entry in planned]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[self.hitl_task_id], run_ids=[ti.run_id])
        by_key = states.get(ti.run_id, {})
        # map index i answers for sites[i] (a lazy sequence of the mapped output would skip gaps)
        answers = [ti.xcom_pull(task_ids=self.hitl_task_id, map_indexes=i) for i in range(len(sites))]
        task_states = [by_key.get(f"{self.hitl_task_id}_{i}") for i in range(len(sites))]
        private_key = FederationCoordinatorHook(self.coordinator_conn_id).private_key()
        report = aggregate_answers(job, sites, answers, private_key, task_states=task_states)
        folder = self.run_workspace(context).create().root / "federation"
        json_path, html_path = write_report(report, folder)
        summary = summary_of(report, json_path, html_path)
        for row in report["sites"]:
            self.log.info("site %s: %s %s", row["name"], row["status"], row.get("reason") or "")
        self.log.info("report: %s (partial: %s)", json_path, report["partial"])
        return summary


class FederatedPollOperator(KaapanaBaseOperator):
    """A site's poll: answer what its policy refuses, and start the local analysis run of the rest.

    Returns one ``TriggerDagRunOperator`` kwargs dict per request to start
    (``trigger_dag_id`` = ``kaapana_federated_site_<analysis>``, a ``trigger_run_id`` derived from the
    request, ``conf`` = job and request). A request whose local run exists is not started again; if
    that run failed without answering, the request is answered ``failed``.
    """

    ui_color = "#fdd49e"

    def __init__(
        self,
        *,
        federation_conn_id: str = FederationHook.default_conn_name,
        window_seconds: float = 0.0,
        interval_seconds: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.federation_conn_id = federation_conn_id
        self.window_seconds = window_seconds
        self.interval_seconds = interval_seconds

    def execute(self, context: Any) -> list[dict[str, Any]]:
        """One look at the coordinator; with ``window_seconds`` > 0, look again every
        ``interval_seconds`` within that window until a request is handled (one task process instead
        of one per look: cheaper on a small machine, at the price of a worker slot)."""
        hook = FederationHook(self.federation_conn_id)
        deadline = time.monotonic() + self.window_seconds
        while True:
            handled, to_start = self._look(context["ti"], hook)
            if handled or time.monotonic() + self.interval_seconds > deadline:
                return to_start
            time.sleep(self.interval_seconds)

    def _look(self, ti: Any, hook: FederationHook) -> tuple[int, list[dict[str, Any]]]:
        """``(requests handled, runs to start)`` after one listing of the pending requests."""
        policy = hook.policy
        releases = read_audit_log(hook.settings.audit_log) if policy.query_budget else ()
        to_start: list[dict[str, Any]] = []
        handled = 0
        requests = hook.pending_requests()
        for request in requests:
            where = f"{request.dag_id} {request.run_id}"
            try:
                job = request.job()
            except InvalidJobError as exc:
                hook.answer(request, plain_answer("failed", f"invalid job: {exc}"))
                self.log.warning("%s: invalid job answered failed: %s", where, exc)
                handled += 1
                continue
            decision = policy.decide(job, releases=releases)
            if not decision.accepted:
                hook.answer(request, plain_answer("refused", decision.reason))
                self.log.info("%s: refused: %s", where, decision.reason)
                handled += 1
                continue
            dag_id, run_id = site_dag_id(job.analysis), request.local_run_id()
            if ti.get_dr_count(dag_id=dag_id, run_ids=[run_id]):
                if ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) == "failed":
                    hook.answer(request, plain_answer("failed", "the site's analysis run failed"))
                    self.log.info("%s: local run %s failed; answered failed", where, run_id)
                    handled += 1
                continue
            self.log.info("%s: accepted (k=%s); starting %s %s", where, decision.k, dag_id, run_id)
            to_start.append(
                {
                    "trigger_dag_id": dag_id,
                    "trigger_run_id": run_id,
                    "conf": {"job": job.to_dict(), "request": request.to_dict()},
                }
            )
            handled += 1
        return handled, to_start


def _job_and_request(context: Any) -> tuple[FederatedJob, HitlRequest]:
    params = context["params"]
    return FederatedJob.from_dict(params["job"]), HitlRequest.from_dict(params["request"])


class FederatedAnalysisOperator(KaapanaBaseOperator):
    """Run the job's analysis on the site's index and pass the egress guard (nothing is sent here).

    The job comes from the run's conf (``params.job``), the policy from the federation connection,
    read now (it may have changed since the poll). For a record-level analysis the site's
    de-identification key is read from ``key_conn_id`` (its password) and handed to the guard, which
    pseudonymises every record with it; the key is never taken from the job. Returns
    :meth:`~airflow_provider_kaapana.core.federation.site.SiteOutcome.as_dict`: the guarded document
    (status ok) or a refusal reason.
    """

    template_fields: Sequence[str] = ("index",)
    ui_color = "#c6dbef"

    def __init__(
        self,
        *,
        federation_conn_id: str = FederationHook.default_conn_name,
        search_conn_id: str = SEARCH_CONN_ID,
        index: str = SEARCH_INDEX,
        key_conn_id: str = DEFAULT_KEY_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.federation_conn_id = federation_conn_id
        self.search_conn_id = search_conn_id
        self.index = index
        self.key_conn_id = key_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.federation.analyses import get_analysis
        from airflow_provider_kaapana.core.federation.site import analyse, site_documents
        from airflow_provider_kaapana.core.federation.statistics import get_payload_schema
        from airflow_provider_kaapana.hooks.search import SearchHook

        job, _ = _job_and_request(context)
        policy = FederationHook(self.federation_conn_id).policy
        decision = policy.decide(job)
        if not decision.accepted:
            return {"status": "refused", "reason": decision.reason}
        spec = get_analysis(job.analysis, job.analysis_version)
        client = SearchHook(self.search_conn_id).get_conn()
        documents = site_documents(job, spec.parameters, client, self.index)
        record_level = get_payload_schema(spec.payload_schema).record_level
        key = deid_hook.site_key(self.key_conn_id) if record_level else None
        outcome = analyse(job, policy, documents, deid_key=key)
        self.log.info(
            "%s on %d series: %s (k=%s, %d cells suppressed, withheld: %s) %s",
            job.analysis,
            outcome.series,
            outcome.status,
            outcome.k,
            outcome.suppressed_cells,
            ", ".join(outcome.withheld) or "none",
            outcome.reason,
        )
        return outcome.as_dict()


class FederatedRespondOperator(KaapanaBaseOperator):
    """Answer the coordinator: ``ok`` (audit line, then the sealed document), ``refused`` or ``failed``.

    Runs whatever happened upstream (``trigger_rule="all_done"``): a rejected approval answers
    ``refused``; an analysis that failed or did not run answers ``failed``; a guard refusal answers
    ``refused`` with the guard's code. Nothing is recorded or sent when the request is no longer open
    (answered, timed out, or cleared to a new try).
    """

    ui_color = "#fdae6b"

    def __init__(
        self,
        *,
        federation_conn_id: str = FederationHook.default_conn_name,
        analysis_task_id: str = "analyse",
        approval_task_id: str | None = "approve",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.federation_conn_id = federation_conn_id
        self.analysis_task_id = analysis_task_id
        self.approval_task_id = approval_task_id

    def _rejected(self, ti: Any) -> bool:
        """Whether a person rejected the job.

        A rejecting ApprovalOperator skips the analysis and pushes no XCom of its own, and it may still be
        finishing when this task starts (only the analysis is upstream here): the skipped analysis is the
        signal. A chosen option other than Approve, where one was pushed, counts as well.
        """
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[self.analysis_task_id], run_ids=[ti.run_id])
        if states.get(ti.run_id, {}).get(self.analysis_task_id) == "skipped":
            return True
        approval = ti.xcom_pull(task_ids=self.approval_task_id) if self.approval_task_id else None
        return bool(approval) and approval.get("chosen_options") != [APPROVE]

    def execute(self, context: Any) -> dict[str, Any]:
        job, request = _job_and_request(context)
        ti = context["ti"]
        hook = FederationHook(self.federation_conn_id)
        outcome = ti.xcom_pull(task_ids=self.analysis_task_id)
        if not hook.request_is_open(request):
            self.log.info("the request is no longer open (answered, timed out or cleared): nothing sent")
            return {"status": None, "sent": False}
        if self._rejected(ti):
            answer = plain_answer("refused", "rejected by the site's reviewer")
        elif not outcome:
            answer = plain_answer("failed", "the site's analysis did not finish")
        elif outcome["status"] != "ok":
            answer = plain_answer("refused", outcome.get("reason") or "refused")
        else:
            verify_received(outcome["document"], job=job, site=hook.site)
            result = GuardResult(document=outcome["document"], k=int(outcome["k"]), actions=())
            settings = hook.settings
            answer = sealed_answer(
                result.payload,
                job_id=job.job_id,
                site=hook.site,
                coordinator_public_key=settings.coordinator_public_key,
            )
            # on record before it leaves: the plaintext, its hash and the hash of the sealed bytes
            record_sealed_egress(
                settings.audit_log, result, recipient=hook.recipient, sealed_sha256=answer.sealed_sha256
            )
        taken = hook.answer(request, answer)
        self.log.info(
            "answered %s for %s (%s)", answer.chosen, job.job_id, "taken" if taken else "already answered"
        )
        return {
            "status": answer.chosen,
            "sent": taken,
            "payload_sha256": answer.payload_sha256,
            "sealed_sha256": answer.sealed_sha256,
        }


__all__ = [
    "FederatedAggregateOperator",
    "FederatedAnalysisOperator",
    "FederatedPollOperator",
    "FederatedRespondOperator",
]
