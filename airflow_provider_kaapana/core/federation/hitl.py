"""The answer a site gives its Human-in-the-loop task on the coordinator, written and read.

The coordinator's DAG has one HITL task per site with the options :data:`ANSWER_OPTIONS`. The site
answers over the coordinator's REST API with one chosen option and ``params_input``: for ``ok`` the
exact payload bytes as a string plus their SHA-256 (the hash in the site's audit log), else a reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_provider_kaapana.core.federation.aggregate import MAX_REASON_CHARS, SiteResult, SiteStatus

ANSWER_OPTIONS: tuple[str, ...] = (SiteStatus.OK.value, SiteStatus.REFUSED.value, SiteStatus.FAILED.value)
PARAM_PAYLOAD = "payload"
PARAM_SHA256 = "sha256"
PARAM_REASON = "reason"
# The HITL task's params (name -> description), for the coordinator DAG's Param definitions.
ANSWER_PARAMS: dict[str, str] = {
    PARAM_PAYLOAD: "the released result document, exactly the bytes the site's audit log hashed (status ok)",
    PARAM_SHA256: "SHA-256 (hex) of the payload bytes",
    PARAM_REASON: "why the site refused or failed (a policy reason or a guard code, never data)",
}


def site_answer(
    status: SiteStatus | str, *, payload: bytes | None = None, reason: str = ""
) -> tuple[str, dict[str, Any]]:
    """``(chosen_option, params_input)`` for the site's answer; ``payload`` only (and always) with ok."""
    status = SiteStatus(status)
    if status is SiteStatus.TIMED_OUT:
        raise ValueError("a site cannot answer timed_out; the coordinator decides that")
    if (status is SiteStatus.OK) != (payload is not None):
        raise ValueError("a payload is sent with status ok, and only then")
    params: dict[str, Any] = {PARAM_REASON: str(reason)[:MAX_REASON_CHARS]}
    if payload is not None:
        params[PARAM_PAYLOAD] = payload.decode("ascii")
        params[PARAM_SHA256] = hashlib.sha256(payload).hexdigest()
    return status.value, params


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_payload(payload: str | bytes) -> dict[str, Any]:
    """The document in a payload: strict JSON (no NaN/Infinity, no duplicate keys), an object."""
    document = json.loads(payload, object_pairs_hook=_strict_object, parse_constant=_no_constant)
    if not isinstance(document, dict):
        raise ValueError("payload is not a JSON object")
    return document


def result_from_hitl(
    site: str, chosen_options: Sequence[str] | str | None, params_input: Mapping[str, Any] | None
) -> SiteResult:
    """The coordinator's :class:`.aggregate.SiteResult` from a site's HITL answer.

    A malformed answer (several options, a payload whose hash does not match, invalid JSON) becomes a
    ``failed`` result naming the problem; the schema check happens in :func:`.aggregate.aggregate_results`.
    """
    chosen = [chosen_options] if isinstance(chosen_options, str) else list(chosen_options or [])
    params = dict(params_input or {})
    reason = str(params.get(PARAM_REASON) or "")
    if len(chosen) != 1 or chosen[0] not in ANSWER_OPTIONS:
        return SiteResult(
            site, SiteStatus.FAILED, reason=f"answer must choose exactly one of {', '.join(ANSWER_OPTIONS)}"
        )
    status = SiteStatus(chosen[0])
    if status is not SiteStatus.OK:
        return SiteResult(site, status, reason=reason)
    payload = params.get(PARAM_PAYLOAD)
    digest = params.get(PARAM_SHA256)
    if not isinstance(payload, str) or not isinstance(digest, str):
        return SiteResult(site, SiteStatus.FAILED, reason="ok answer without payload and sha256")
    try:
        raw = payload.encode("ascii")
    except UnicodeEncodeError:
        return SiteResult(site, SiteStatus.FAILED, reason="payload is not the canonical (ASCII) JSON")
    if hashlib.sha256(raw).hexdigest() != digest.lower():
        return SiteResult(site, SiteStatus.FAILED, reason="payload does not match its SHA-256")
    try:
        document = parse_payload(raw)
    except ValueError:
        return SiteResult(site, SiteStatus.FAILED, reason="payload is not a strict JSON object")
    return SiteResult(site, SiteStatus.OK, document=document, reason=reason)


def timed_out(site: str) -> SiteResult:
    """The result of a site whose HITL task timed out."""
    return SiteResult(site, SiteStatus.TIMED_OUT, reason="no answer before the task's timeout")


__all__ = [
    "ANSWER_OPTIONS",
    "ANSWER_PARAMS",
    "PARAM_PAYLOAD",
    "PARAM_REASON",
    "PARAM_SHA256",
    "parse_payload",
    "result_from_hitl",
    "site_answer",
    "timed_out",
]
