"""Federation hooks: a site's connection to its coordinator, and the coordinator's own key.

``FederationHook`` (connection type ``kaapana_federation``, at a site): host = the coordinator's URL,
login/password = the site's user there, extra = the site's name, the coordinator's pinned public key,
the site policy, the audit log path. It lists this site's pending HITL requests on the coordinator and
answers them over REST API v2 (:class:`~airflow_provider_kaapana.core.net.airflow_api.AirflowClient`).

``FederationCoordinatorHook`` (``kaapana_federation_coordinator``, at the coordinator): the private
key that opens the sites' sealed answers, in the password field.

Neither ever logs the password or a key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import BaseHook

from airflow_provider_kaapana.core.federation.crypto import key_id, load_public_key, public_key_of
from airflow_provider_kaapana.core.federation.exchange import (
    SITE_RESULT_TASK,
    Answer,
    HitlRequest,
    site_token,
)
from airflow_provider_kaapana.core.federation.jobs import DAG_PREFIX, SITE_NAME_RE, SitePolicy
from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError, AirflowClient
from airflow_provider_kaapana.core.net.retry import RetryPolicy
from airflow_provider_kaapana.exceptions import FederationError, InvalidPolicyError

CONN_TYPE = "kaapana_federation"
COORDINATOR_CONN_TYPE = "kaapana_federation_coordinator"
PENDING_STATES = ("awaiting_input", "running", "queued", "scheduled")
# Airflow 3.3.2: an answer that lands in the moment after a HITL task parked, before the coordinator's
# scheduler has processed the parking worker's exit, fails the task ("state changed externally"). A
# request is therefore answered no earlier than this many seconds after it was created.
DEFAULT_SETTLE_SECONDS = 3.0
_TRUE = {"true", "1", "yes", "on"}


def _as_bool(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | {"false", "0", "no", "off"}:
        return text in _TRUE
    raise InvalidPolicyError(f"not a boolean: {str(value)[:16]!r}")


@dataclass(frozen=True)
class SiteSettings:
    """A site's federation settings, from its ``kaapana_federation`` connection (no secrets)."""

    site: str
    coordinator_url: str
    coordinator_public_key: str
    policy: SitePolicy
    audit_log: str
    verify: bool | str = True
    timeout: float = 30.0
    settle_seconds: float = DEFAULT_SETTLE_SECONDS


class FederationHook(BaseHook):
    """A site's link to the coordinator: its pending jobs, and its answers.

    :param federation_conn_id: a ``kaapana_federation`` connection. Extra: ``site`` (the site's name =
        its user id on the coordinator), ``coordinator_public_key`` (base64 X25519, pinned here: never
        taken from a job), ``policy`` (a :class:`~airflow_provider_kaapana.core.federation.jobs.SitePolicy`),
        ``audit_log`` (path), ``verify`` (TLS: true/false or a CA bundle path), ``timeout``, ``retries``,
        ``backoff``, ``max_backoff``.
    """

    conn_name_attr = "federation_conn_id"
    default_conn_name = "kaapana_federation_default"
    conn_type = CONN_TYPE
    hook_name = "Kaapana federation (a site's coordinator)"

    def __init__(self, federation_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.federation_conn_id = federation_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port"],
            "relabeling": {
                "host": "Coordinator URL",
                "login": "This site's user on the coordinator",
                "password": "Its password",
            },
            "placeholders": {
                "host": "https://coordinator.example.org",
                "extra": '{"site": "alpha", "coordinator_public_key": "...", "audit_log": '
                '"/data/federation/audit.jsonl", "policy": {"allowed_analyses": {"cohort_statistics": ["1"]}, '
                '"require_approval": true, "k_min": 10}}',
            },
        }

    # --- configuration ---------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.federation_conn_id)

    @cached_property
    def settings(self) -> SiteSettings:
        """The connection's settings, checked: a misspelt or missing field raises, naming it."""
        conn = self.connection
        extra = dict(conn.extra_dejson or {})
        where = f"connection {self.federation_conn_id}"
        site = extra.get("site")
        if not isinstance(site, str) or not SITE_NAME_RE.match(site):
            raise InvalidPolicyError(f"{where}: extra 'site' must match {SITE_NAME_RE.pattern}")
        policy_data = extra.get("policy")
        if not isinstance(policy_data, dict):
            raise InvalidPolicyError(f"{where}: extra 'policy' must be an object")
        policy_data = dict(policy_data)
        if policy_data.setdefault("site", site) != site:
            raise InvalidPolicyError(f"{where}: policy.site differs from the site {site!r}")
        public_key = extra.get("coordinator_public_key")
        if not isinstance(public_key, str) or not public_key.strip():
            raise InvalidPolicyError(f"{where}: extra 'coordinator_public_key' is missing")
        load_public_key(public_key)
        audit_log = extra.get("audit_log")
        if not isinstance(audit_log, str) or not audit_log.strip():
            raise InvalidPolicyError(f"{where}: extra 'audit_log' (a file path) is missing")
        host = (conn.host or "").strip().rstrip("/")
        if not host:
            raise InvalidPolicyError(f"{where}: host (the coordinator URL) is missing")
        if "://" not in host:
            host = f"{conn.schema or 'https'}://{host}"
        parts = urlsplit(host)
        if conn.port and not parts.port:
            host = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{conn.port}"))
        verify: bool | str = extra.get("verify", True)
        if not (isinstance(verify, str) and verify.strip().startswith("/")):
            verify = _as_bool(verify, True)
        return SiteSettings(
            site=site,
            coordinator_url=host,
            coordinator_public_key=public_key.strip(),
            policy=SitePolicy.from_dict(policy_data),
            audit_log=audit_log,
            verify=verify,
            timeout=float(extra.get("timeout") or 30.0),
            settle_seconds=float(extra.get("answer_settle_seconds", DEFAULT_SETTLE_SECONDS)),
        )

    @property
    def site(self) -> str:
        return self.settings.site

    @property
    def policy(self) -> SitePolicy:
        return self.settings.policy

    @property
    def recipient(self) -> str:
        """The coordinator as named in the audit log: its URL, without credentials."""
        parts = urlsplit(self.settings.coordinator_url)
        return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))

    @cached_property
    def client(self) -> AirflowClient:
        conn = self.connection
        policy = RetryPolicy.from_extra(conn.extra_dejson, RetryPolicy(retries=2, backoff=1.0))
        return AirflowClient(
            self.settings.coordinator_url,
            username=conn.login,
            password=conn.password,
            verify=self.settings.verify,
            timeout=self.settings.timeout,
            retries=policy.retries,
            backoff=policy.backoff,
            max_backoff=policy.max_backoff,
        )

    def get_conn(self) -> AirflowClient:
        return self.client

    # --- the coordinator's requests --------------------------------------------------------------

    def pending_requests(self, *, limit: int = 100) -> list[HitlRequest]:
        """This site's unanswered requests, oldest first.

        The server filters what it can (not answered, task waiting, federated DAG, task id, the site's
        token in the subject); the answer still holds other sites' requests when names share a prefix,
        so each item is kept only if this site is among its ``assigned_users``.
        """
        site = self.site
        data = self.client.get_json(
            "dags/~/dagRuns/~/hitlDetails",
            params={
                "response_received": "false",
                "state": list(PENDING_STATES),
                "dag_id_prefix_pattern": DAG_PREFIX,
                "task_id": SITE_RESULT_TASK,
                "subject_search": site_token(site),
                "order_by": "created_at",
                "limit": limit,
            },
        )
        out = []
        for detail in data.get("hitl_details", []):
            request = HitlRequest.from_detail(detail, site)
            if request is not None and request.task_id == SITE_RESULT_TASK:
                out.append(request)
        return out

    def request_is_open(self, request: HitlRequest) -> bool:
        """Whether the request still waits for an answer (not answered, not timed out, same try)."""
        try:
            detail = self.client.get_json(request.path)
        except AirflowApiError as exc:
            if exc.status == 404:
                return False
            raise
        ti = detail.get("task_instance") or {}
        return (
            not detail.get("response_received")
            and ti.get("state") in PENDING_STATES
            and int(ti.get("try_number") or 1) == request.try_number
        )

    def answer(self, request: HitlRequest, answer: Answer) -> bool:
        """PATCH the answer; True if it was taken now, False if the request was answered already (409).

        Waits until the request is ``settle_seconds`` old first (see :data:`DEFAULT_SETTLE_SECONDS`).
        """
        age = request.age_seconds()
        settle = self.settings.settle_seconds
        if age is not None and age < settle:
            time.sleep(min(settle, settle - age))
        try:
            self.client.request(
                "PATCH",
                request.path,
                json={"chosen_options": [answer.chosen], "params_input": answer.params_input},
                operation=f"answering {request.dag_id} {request.run_id} for site {request.site}",
            )
        except AirflowApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def test_connection(self) -> tuple[bool, str]:
        try:
            pending = self.pending_requests(limit=1)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, (
            f"site {self.site} at {self.recipient}: {'a request' if pending else 'no request'} pending; "
            f"coordinator key {key_id(self.settings.coordinator_public_key)}"
        )


class FederationCoordinatorHook(BaseHook):
    """The coordinator's private key (X25519, base64 or PEM) in a connection's password field.

    :param coordinator_conn_id: a ``kaapana_federation_coordinator`` connection
    """

    conn_name_attr = "coordinator_conn_id"
    default_conn_name = "kaapana_federation_coordinator"
    conn_type = COORDINATOR_CONN_TYPE
    hook_name = "Kaapana federation (the coordinator's key)"

    def __init__(self, coordinator_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.coordinator_conn_id = coordinator_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["schema", "port", "host", "login"],
            "relabeling": {"password": "Private key (X25519, base64 or PEM)"},
            "placeholders": {"extra": "{}"},
        }

    def private_key(self) -> str:
        """The private key text (never log it)."""
        password = self.get_connection(self.coordinator_conn_id).password
        if not password:
            raise FederationError(
                f"connection {self.coordinator_conn_id} holds no private key (its password field is empty)"
            )
        return password

    def public_key(self) -> str:
        """The public key to pin in every site's connection (``coordinator_public_key``)."""
        return public_key_of(self.private_key())

    def test_connection(self) -> tuple[bool, str]:
        try:
            public = self.public_key()
        except Exception as exc:
            return False, f"{type(exc).__name__}"
        return True, f"coordinator key {key_id(public)}; public key {public}"


__all__ = ["FederationCoordinatorHook", "FederationHook", "SiteSettings"]
