"""The wire between a site and the coordinator's HITL tasks: requests, sealed answers, receipts.

The coordinator DAG has one mapped HITL task (``site_result``) per site. A site lists its pending
requests over REST (:class:`HitlRequest`), answers ``ok`` with its released document *sealed* to the
coordinator's key (:func:`sealed_answer`: the :mod:`.hitl` answer, encrypted), or ``refused``/``failed``
with a short reason (:func:`plain_answer`). The coordinator turns each task's XCom back into a
:class:`~.aggregate.SiteResult` (:func:`result_from_answer`), accepting only answers given by the
site's own user. :func:`record_sealed_egress` is the audit line: D's :func:`.audit.record_egress` line
plus the SHA-256 of the sealed bytes that were sent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.federation import audit as _audit
from airflow_provider_kaapana.core.federation.aggregate import SiteResult, SiteStatus
from airflow_provider_kaapana.core.federation.crypto import SealedPayloadError, open_sealed, seal
from airflow_provider_kaapana.core.federation.guard import GuardResult
from airflow_provider_kaapana.core.federation.hitl import (
    PARAM_REASON,
    PARAM_SHA256,
    parse_payload,
    result_from_hitl,
    site_answer,
    timed_out,
)
from airflow_provider_kaapana.core.federation.jobs import DAG_PREFIX, SITE_NAME_RE, FederatedJob
from airflow_provider_kaapana.core.federation.statistics import canonical_json_bytes
from airflow_provider_kaapana.exceptions import InvalidJobError

SITE_RESULT_TASK = "site_result"
RESULT_PARAM = "result"
TIMED_OUT = SiteStatus.TIMED_OUT.value
# The HITL task's options: what a site may answer, plus the coordinator's default on timeout.
OPTIONS: tuple[str, ...] = (
    SiteStatus.OK.value,
    SiteStatus.REFUSED.value,
    SiteStatus.FAILED.value,
    TIMED_OUT,
)
SITE_DAG_PREFIX = DAG_PREFIX + "site_"
MAX_CONF_REASON = 300


def site_token(site: str) -> str:
    """The site's token in a HITL subject, ``[site:<name>]``: a server-side ``subject_search`` for it
    cannot match a longer name (``_`` is a LIKE wildcard, the brackets bound it)."""
    return f"[site:{site}]"


def hitl_subject(job: FederatedJob, site: str) -> str:
    return f"{job.analysis} v{job.analysis_version} for {site_token(site)}"


def sealing_aad(job_id: str, site: str) -> bytes:
    """The associated data of a sealed answer: it opens only for this job and this site."""
    return f"kaapana-federation/v1\n{job_id}\n{site}".encode()


def site_dag_id(analysis: str) -> str:
    """The site's local DAG that runs ``analysis``: ``kaapana_federated_site_<analysis>``."""
    return SITE_DAG_PREFIX + analysis


def plan_requests(job: FederatedJob, sites: Sequence[str], timeout: _dt.timedelta) -> list[dict[str, Any]]:
    """One ``HITLOperator.expand_kwargs`` entry per site: its user, subject, the job as body, timeout."""
    seen: set[str] = set()
    out = []
    for site in sites:
        if not isinstance(site, str) or not SITE_NAME_RE.match(site):
            raise InvalidJobError(f"site names must match {SITE_NAME_RE.pattern}")
        if site in seen:
            raise InvalidJobError(f"site {site} is listed twice")
        seen.add(site)
        out.append(
            {
                "assigned_users": [{"id": site, "name": site}],
                "subject": hitl_subject(job, site),
                "body": job.to_json(),
                "response_timeout": timeout,
            }
        )
    if not out:
        raise InvalidJobError("a job needs at least one site")
    return out


# --------------------------------------------------------------------------------------------------
# the site's view of a request


@dataclass(frozen=True)
class HitlRequest:
    """One HITL request of the coordinator assigned to this site (from ``GET .../hitlDetails``)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    site: str
    body: str
    created_at: str | None = None

    @classmethod
    def from_detail(cls, detail: Mapping[str, Any], site: str) -> HitlRequest | None:
        """The request in one ``hitl_details`` item, or None when it is not this site's own."""
        users = detail.get("assigned_users") or []
        if not any(isinstance(u, Mapping) and u.get("id") == site for u in users):
            return None
        ti = detail.get("task_instance") or {}
        try:
            return cls(
                dag_id=str(ti["dag_id"]),
                run_id=str(ti["dag_run_id"]),
                task_id=str(ti["task_id"]),
                map_index=int(ti.get("map_index", -1)),
                try_number=int(ti.get("try_number") or 1),
                site=site,
                body=str(detail.get("body") or ""),
                created_at=str(detail["created_at"]) if detail.get("created_at") else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def job(self) -> FederatedJob:
        """The job in the request's body; :class:`InvalidJobError` unless it is this run's job."""
        job = FederatedJob.from_json(self.body)
        if job.dag_id != self.dag_id or job.run_id != self.run_id:
            raise InvalidJobError(f"the job names {job.job_id}, but the request belongs to {self.dag_id}")
        return job

    @property
    def path(self) -> str:
        """The REST path (under ``/api/v2``) of this request's HITL details."""
        from urllib.parse import quote

        return (
            f"dags/{quote(self.dag_id, safe='')}/dagRuns/{quote(self.run_id, safe='')}/taskInstances/"
            f"{quote(self.task_id, safe='')}/{self.map_index}/hitlDetails"
        )

    def local_run_id(self) -> str:
        """The site's run id for this request: one local run per request and try, whatever polls it."""
        return f"fed__{self.run_id}__{self.map_index}__try{self.try_number}"

    def age_seconds(self, now: _dt.datetime | None = None) -> float | None:
        """Seconds since the coordinator created the request (None when unknown)."""
        if not self.created_at:
            return None
        try:
            created = _dt.datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
        except ValueError:
            return None
        if created.tzinfo is None:
            created = created.replace(tzinfo=_dt.timezone.utc)
        return ((now or _dt.datetime.now(_dt.timezone.utc)) - created).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HitlRequest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# --------------------------------------------------------------------------------------------------
# answers, written at the site


@dataclass(frozen=True)
class Answer:
    """What a site PATCHes: the chosen option and ``params_input``; hashes of what left, for the log."""

    chosen: str
    params_input: dict[str, Any]
    payload_sha256: str | None = None
    sealed_sha256: str | None = None


def sealed_sha256(sealed: Mapping[str, Any]) -> str:
    """SHA-256 of a sealed envelope's canonical bytes: the same at the site and at the coordinator."""
    return hashlib.sha256(canonical_json_bytes(sealed)).hexdigest()


def sealed_answer(payload: bytes, *, job_id: str, site: str, coordinator_public_key: str) -> Answer:
    """An ``ok`` answer: the :func:`.hitl.site_answer` parameters, sealed to the coordinator."""
    chosen, inner = site_answer(SiteStatus.OK, payload=payload)
    sealed = seal(canonical_json_bytes(inner), coordinator_public_key, sealing_aad(job_id, site))
    return Answer(chosen, {RESULT_PARAM: {"sealed": sealed}}, inner[PARAM_SHA256], sealed_sha256(sealed))


def plain_answer(status: SiteStatus | str, reason: str) -> Answer:
    """A ``refused`` or ``failed`` answer with a short reason (never data)."""
    chosen, params = site_answer(status, reason=reason)
    return Answer(chosen, {RESULT_PARAM: {PARAM_REASON: params[PARAM_REASON]}})


def record_sealed_egress(
    log_path: str | Path,
    result: GuardResult,
    *,
    recipient: str,
    sealed_sha256: str,
    now: _dt.datetime | None = None,
) -> bytes:
    """:func:`.audit.record_egress` with ``sealed_sha256`` (the hash of the sealed bytes actually sent).

    Written and fsync'ed before this returns; returns the plaintext payload that was sealed.
    """
    return _audit.record_egress(log_path, result, recipient=recipient, now=now, sealed_sha256=sealed_sha256)


# --------------------------------------------------------------------------------------------------
# answers, read at the coordinator


@dataclass(frozen=True)
class Receipt:
    """What the coordinator can show an auditor about one site's answer."""

    site: str
    responded_by: str | None
    payload_sha256: str | None = None
    sealed_sha256: str | None = None


def result_from_answer(
    site: str,
    job: FederatedJob,
    answer: Mapping[str, Any] | None,
    private_key: str,
    *,
    task_state: str | None = None,
) -> tuple[SiteResult, Receipt]:
    """The site's result from its HITL task's XCom (``chosen_options``, ``params_input``, ``responded_by_user``).

    Only an answer by the site's own user counts; the default applied on timeout (no user) is
    ``timed_out``; a missing XCom (task failed, or marked success by hand) is ``failed``. An ``ok``
    answer is opened with the coordinator's private key for exactly this job and site, then parsed
    by :func:`.hitl.result_from_hitl` (payload hash, strict JSON).
    """
    if answer is None:
        state = f" (task {task_state})" if task_state else ""
        return SiteResult(site, SiteStatus.FAILED, reason=f"no answer{state}"), Receipt(site, None)
    user = answer.get("responded_by_user")
    chosen = answer.get("chosen_options")
    chosen = [chosen] if isinstance(chosen, str) else list(chosen or [])
    if not user:
        if chosen == [TIMED_OUT]:
            return timed_out(site), Receipt(site, None)
        return SiteResult(site, SiteStatus.FAILED, reason="an answer without a user"), Receipt(site, None)
    responder = str(user.get("id")) if isinstance(user, Mapping) else None
    receipt = Receipt(site, responder)
    if responder != site:
        return SiteResult(
            site, SiteStatus.FAILED, reason="answered by a user other than the site's own"
        ), receipt
    if chosen == [TIMED_OUT]:
        return SiteResult(site, SiteStatus.FAILED, reason="the site chose timed_out"), receipt
    params = answer.get("params_input") or {}
    result = params.get(RESULT_PARAM) if isinstance(params, Mapping) else None
    result = result if isinstance(result, Mapping) else {}
    if chosen != [SiteStatus.OK.value]:
        reason = result.get(PARAM_REASON)
        return result_from_hitl(
            site, chosen, {PARAM_REASON: reason if isinstance(reason, str) else ""}
        ), receipt
    sealed = result.get("sealed")
    if not isinstance(sealed, Mapping):
        return SiteResult(site, SiteStatus.FAILED, reason="ok answer without a sealed payload"), receipt
    try:
        digest = sealed_sha256(sealed)
    except Exception:
        return SiteResult(site, SiteStatus.FAILED, reason="sealed payload is not plain JSON"), receipt
    receipt = Receipt(site, responder, sealed_sha256=digest)
    try:
        inner = parse_payload(open_sealed(sealed, private_key, sealing_aad(job.job_id, site)))
    except SealedPayloadError as exc:
        return SiteResult(site, SiteStatus.FAILED, reason=str(exc)), receipt
    except ValueError:
        return SiteResult(
            site, SiteStatus.FAILED, reason="sealed answer is not a strict JSON object"
        ), receipt
    digest_inner = inner.get(PARAM_SHA256)
    receipt = Receipt(
        site,
        responder,
        payload_sha256=digest_inner if isinstance(digest_inner, str) else None,
        sealed_sha256=digest,
    )
    return result_from_hitl(site, chosen, inner), receipt


__all__ = [
    "OPTIONS",
    "RESULT_PARAM",
    "SITE_DAG_PREFIX",
    "SITE_RESULT_TASK",
    "TIMED_OUT",
    "Answer",
    "HitlRequest",
    "Receipt",
    "hitl_subject",
    "plain_answer",
    "plan_requests",
    "record_sealed_egress",
    "result_from_answer",
    "sealed_answer",
    "sealed_sha256",
    "sealing_aad",
    "site_dag_id",
    "site_token",
]
