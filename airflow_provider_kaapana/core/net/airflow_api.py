"""A client for Airflow 3's REST API v2, without importing Airflow.

Logs in with ``POST /auth/token`` (username/password) or uses a given bearer token, logs in again once
when a token is answered 401, sends JSON and retries connection errors and HTTP 408/429/5xx with a
:class:`~airflow_provider_kaapana.core.net.retry.RetryPolicy`. Used by the DICOM listener to trigger a
DAG run per series, by the local test/demo Airflow, and meant for any other Airflow to talk to (a
coordinator of a federation). Neither the password nor a token ever shows in a log line, an error or
the ``repr``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests

from airflow_provider_kaapana.core.net.retry import (
    RetryPolicy,
    TransientError,
    is_transient,
    redact,
    split_url_credentials,
)
from airflow_provider_kaapana.exceptions import KaapanaError

log = logging.getLogger(__name__)

TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})
API_PREFIX = "/api/v2"


class AirflowApiError(KaapanaError):
    """A REST call was refused or failed after its retries. ``status``: the HTTP status, None when
    no answer came (connection error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _q(value: str) -> str:
    return quote(value, safe="")


def _iso(value: _dt.datetime | _dt.date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, _dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.isoformat()


class AirflowClient:
    """Airflow's REST API v2 at ``base_url`` (``http://airflow:8080``; the API under ``/api/v2``).

    :param token: a bearer token (JWT) to use as it is
    :param username: with ``password``: log in at ``POST /auth/token`` when there is no token yet and
        once more when a token is answered 401 (expired)
    :param verify: TLS verification: a bool or a CA bundle path (as in requests)
    :param timeout: seconds per HTTP request
    :param retries: retries after the first attempt (connection errors, 408, 429, 5xx)
    :param backoff: seconds before the first retry, doubled for each further one
    :param max_backoff: the longest single wait
    :param session: a ``requests.Session`` to use (e.g. with a client certificate)
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        # credentials written into the URL are used to log in; the URL kept (and shown) has none
        base_url, url_auth = split_url_credentials(base_url)
        self._url_password = url_auth[1] if url_auth else None
        if url_auth and not username and not password:
            username, password = url_auth
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.username = username
        self._password = password
        self._token = token
        self.session = session or requests.Session()
        self.session.verify = verify

    def __repr__(self) -> str:  # never shows credentials
        return f"AirflowClient({redact(self.base_url)!r})"

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call (from ``retries``, ``backoff``, ``max_backoff``)."""
        return RetryPolicy(retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff)

    @property
    def can_log_in(self) -> bool:
        return bool(self.username and self._password)

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._password, self._token, self._url_password)

    def _where(self) -> str:
        return f"Airflow {redact(self.base_url)}"

    # --- authentication --------------------------------------------------------------------------

    def _log_in(self) -> str:
        """One ``POST /auth/token``; transient failures raise :class:`TransientError`."""
        if not self.can_log_in:
            raise AirflowApiError(f"no token for {self._where()} and no username/password to fetch one")
        try:
            response = self.session.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self._password},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientError(f"login: {type(exc).__name__}: {exc}") from None
        if response.status_code in TRANSIENT_HTTP:
            raise TransientError(f"login: HTTP {response.status_code}")
        if response.status_code not in (200, 201):
            # the answer's text is not shown: a login endpoint might echo what it was sent
            raise AirflowApiError(
                f"login as {self.username!r} refused by {self._where()}: HTTP {response.status_code}",
                status=response.status_code,
            )
        try:
            self._token = str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise AirflowApiError(
                f"login at {self._where()}: the answer holds no access_token", status=response.status_code
            ) from None
        return self._token

    def fetch_token(self) -> str:
        """Log in (``POST /auth/token``, with retries) and return the new bearer token."""
        return self._retrying(self._log_in, "login")

    def _retrying(self, attempt: Any, operation: str) -> Any:
        policy = self.retry
        try:
            return policy.call(
                attempt,
                is_transient,
                operation=f"{operation} at {self._where()}",
                secrets=self._secrets(),
                logger=log,
            )
        except TransientError as exc:
            raise AirflowApiError(
                f"{operation} at {self._where()} failed after {policy.attempts} attempts: "
                f"{redact(str(exc), self._secrets())}"
            ) from None

    # --- requests --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        operation: str | None = None,
    ) -> requests.Response:
        """One REST call to ``/api/v2/<path>`` with the bearer token; returns the 2xx response.

        Connection errors and HTTP 408/429/5xx are retried; a 401 logs in again once (when a
        username/password is known). Anything else raises :class:`AirflowApiError` with ``status``,
        the message naming ``operation`` (default ``METHOD /api/v2/path``) and the server's answer.
        """
        url = f"{self.base_url}{API_PREFIX}/{path.lstrip('/')}"
        operation = operation or f"{method} {API_PREFIX}/{path.lstrip('/')}"
        logged_in_again = False

        def send() -> requests.Response:
            token = self._token or self._log_in()
            try:
                return self.session.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                    timeout=self.timeout,
                )
            except requests.RequestException as exc:
                raise TransientError(f"{type(exc).__name__}: {exc}") from None

        def attempt() -> requests.Response:
            nonlocal logged_in_again
            response = send()
            if response.status_code == 401 and self.can_log_in and not logged_in_again:
                logged_in_again = True  # the token expired (or was revoked): one fresh login
                response.close()
                self._token = None
                response = send()
            if 200 <= response.status_code < 300:
                return response
            problem = f"HTTP {response.status_code}: {response.text[:300]!r}"
            response.close()
            if response.status_code in TRANSIENT_HTTP:
                raise TransientError(problem)
            raise AirflowApiError(
                f"{operation} at {self._where()} failed: {redact(problem, self._secrets())}",
                status=response.status_code,
            )

        return self._retrying(attempt, operation)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """``GET /api/v2/<path>`` and its JSON answer."""
        return self.request("GET", path, params=params).json()

    # --- DAGs, DAG runs, task instances ----------------------------------------------------------

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        """``GET /dags/{dag_id}``: the DAG's details (404 -> :class:`AirflowApiError` with status 404)."""
        return self.get_json(f"dags/{_q(dag_id)}")

    def set_dag_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        """``PATCH /dags/{dag_id}`` ``{"is_paused": paused}``; returns the DAG."""
        return self.request("PATCH", f"dags/{_q(dag_id)}", json={"is_paused": paused}).json()

    def trigger_dag_run(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        logical_date: _dt.datetime | _dt.date | str | None = None,
    ) -> dict[str, Any]:
        """``POST /dags/{dag_id}/dagRuns``: start a run with ``conf``; returns the new DAG run.

        ``logical_date`` None lets Airflow choose (a run without a data interval); a naive datetime
        is taken as UTC. A ``run_id`` that exists already is answered 409 (``AirflowApiError.status``),
        so a retried trigger with the same ``run_id`` never starts a second run.
        """
        body: dict[str, Any] = {"conf": dict(conf or {}), "logical_date": _iso(logical_date)}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request(
            "POST", f"dags/{_q(dag_id)}/dagRuns", json=body, operation=f"triggering DAG {dag_id}"
        ).json()

    def get_dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """``GET /dags/{dag_id}/dagRuns/{run_id}``: the run (``state``, ``conf``, dates...)."""
        return self.get_json(f"dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")

    def list_dag_runs(self, dag_id: str, *, limit: int = 100, **params: Any) -> list[dict[str, Any]]:
        """``GET /dags/{dag_id}/dagRuns`` (filters such as ``state`` as further parameters)."""
        return self.get_json(f"dags/{_q(dag_id)}/dagRuns", {"limit": limit, **params})["dag_runs"]

    def list_task_instances(self, dag_id: str, run_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
        """``GET /dags/{dag_id}/dagRuns/{run_id}/taskInstances``: the run's task instances."""
        return self.get_json(f"dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances", {"limit": limit})[
            "task_instances"
        ]
