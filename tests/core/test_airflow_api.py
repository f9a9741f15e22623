"""core.net.airflow_api: the one Airflow REST API v2 client, against a small fake Airflow."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError, AirflowClient
from airflow_provider_kaapana.core.net.retry import RetryPolicy
from airflow_provider_kaapana.exceptions import KaapanaError


class _Airflow(BaseHTTPRequestHandler):
    """``/auth/token`` for admin/pw (a new token each login), DAG runs and task instances of one DAG.

    ``expire_next``: answer that many calls with 401 (an expired token); ``fail_next``: 503s.
    """

    requests: list
    runs: dict
    logins = 0
    expire_next = 0
    fail_next = 0

    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method):
        cls = type(self)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        parts = urlsplit(self.path)
        cls.requests.append(
            (method, parts.path, parse_qs(parts.query), self.headers.get("Authorization"), body)
        )
        if parts.path == "/auth/token":
            if body == {"username": "admin", "password": "pw-s3cret"}:
                cls.logins += 1
                return self._reply(201, {"access_token": f"tok-{cls.logins}"})
            return self._reply(401, {"detail": f"bad credentials {body}"})
        if self.headers.get("Authorization") != f"Bearer tok-{cls.logins}":
            return self._reply(401, {"detail": "no or old token"})
        if cls.expire_next:
            cls.expire_next -= 1
            return self._reply(401, {"detail": "token expired"})
        if cls.fail_next:
            cls.fail_next -= 1
            return self._reply(503, {"detail": "busy"})
        path = parts.path.removeprefix("/api/v2")
        if path == "/dags/demo" and method == "GET":
            return self._reply(200, {"dag_id": "demo", "is_paused": True})
        if path == "/dags/demo" and method == "PATCH":
            return self._reply(200, {"dag_id": "demo", "is_paused": body["is_paused"]})
        if path == "/dags/demo/dagRuns" and method == "POST":
            run_id = body.get("dag_run_id") or f"manual__{len(cls.runs)}"
            if run_id in cls.runs:
                return self._reply(409, {"detail": "exists"})
            cls.runs[run_id] = {"dag_run_id": run_id, "state": "queued", **body}
            return self._reply(200, cls.runs[run_id])
        if path == "/dags/demo/dagRuns" and method == "GET":
            return self._reply(200, {"dag_runs": list(cls.runs.values()), "total_entries": len(cls.runs)})
        if path.startswith("/dags/demo/dagRuns/") and path.endswith("/taskInstances"):
            run_id = path.split("/")[4]
            return self._reply(200, {"task_instances": [{"task_id": "t1", "dag_run_id": run_id}]})
        if path.startswith("/dags/demo/dagRuns/"):
            run_id = path.split("/")[4]
            if run_id in cls.runs:
                return self._reply(200, cls.runs[run_id])
        return self._reply(404, {"detail": "not found"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")


@pytest.fixture
def airflow():
    handler = type("Handler", (_Airflow,), {"requests": [], "runs": {}, "logins": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def client_for(url: str, **kwargs) -> AirflowClient:
    return AirflowClient(url, username="admin", password="pw-s3cret", backoff=0.01, **kwargs)


def test_trigger_read_run_and_task_instances(airflow):
    handler, url = airflow
    client = client_for(url)
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    run = client.trigger_dag_run("demo", {"series": "1.2.3"}, run_id="r1", logical_date=when)
    assert run["dag_run_id"] == "r1"
    post = handler.requests[-1]
    assert post[4] == {
        "conf": {"series": "1.2.3"},
        "logical_date": "2026-01-02T03:04:05+00:00",
        "dag_run_id": "r1",
    }
    assert handler.requests[0][1] == "/auth/token" and post[3] == "Bearer tok-1"
    assert client.trigger_dag_run("demo")["logical_date"] is None  # Airflow picks the run's date
    assert client.get_dag_run("demo", "r1")["state"] == "queued"
    assert [r["dag_run_id"] for r in client.list_dag_runs("demo")] == ["r1", "manual__1"]
    assert client.list_task_instances("demo", "r1") == [{"task_id": "t1", "dag_run_id": "r1"}]
    assert handler.requests[-1][2] == {"limit": ["1000"]}
    assert client.get_dag("demo")["is_paused"] is True
    assert client.set_dag_paused("demo", False)["is_paused"] is False
    assert handler.logins == 1


def test_expired_token_logs_in_again_once(airflow):
    handler, url = airflow
    client = client_for(url)
    client.get_dag("demo")
    handler.expire_next = 1
    assert client.get_dag("demo")["dag_id"] == "demo"
    assert handler.logins == 2
    handler.expire_next = 5  # refused again after the fresh login: a real 401, not retried
    with pytest.raises(AirflowApiError, match="HTTP 401") as err:
        client.get_dag("demo")
    assert err.value.status == 401


def test_a_given_token_is_used_as_is(airflow):
    handler, url = airflow
    client_for(url).fetch_token()  # the fake server now accepts tok-1
    client = AirflowClient(url, token="tok-1")
    assert client.get_dag("demo")["dag_id"] == "demo"
    assert all(r[1] != "/auth/token" for r in handler.requests[1:])
    stale = AirflowClient(url, token="tok-0")  # without username/password there is no second login
    with pytest.raises(AirflowApiError, match="HTTP 401"):
        stale.get_dag("demo")


def test_transient_answers_are_retried_others_are_not(airflow, caplog):
    handler, url = airflow
    caplog.set_level(logging.WARNING)
    client = client_for(url, retries=2)
    assert client.retry == RetryPolicy(retries=2, backoff=0.01)
    handler.fail_next = 2
    assert client.get_dag("demo")["dag_id"] == "demo"
    assert "retry 2 of 2" in caplog.text
    handler.fail_next = 3
    with pytest.raises(
        AirflowApiError, match="GET /api/v2/dags/demo at Airflow .* after 3 attempts: HTTP 503"
    ):
        client.get_dag("demo")
    calls = len(handler.requests)
    with pytest.raises(AirflowApiError) as missing:
        client.get_dag_run("demo", "nope")
    assert missing.value.status == 404 and len(handler.requests) == calls + 1
    client.trigger_dag_run("demo", run_id="twice")
    with pytest.raises(AirflowApiError) as exists:
        client.trigger_dag_run("demo", run_id="twice")
    assert exists.value.status == 409 and isinstance(exists.value, KaapanaError)
    assert "triggering DAG demo" in str(exists.value)


def test_no_server_fails_after_the_retries(caplog):
    from airflow_provider_kaapana.testing.local_services import free_port

    client = AirflowClient(f"http://127.0.0.1:{free_port()}", token="tok-s3cret", retries=1, backoff=0.01)
    with pytest.raises(AirflowApiError, match="after 2 attempts: ConnectionError") as err:
        client.get_dag("demo")
    assert err.value.status is None
    assert "tok-s3cret" not in str(err.value) + caplog.text


def test_credentials_never_shown(airflow, caplog):
    handler, url = airflow
    caplog.set_level(logging.DEBUG)
    wrong = AirflowClient(url, username="admin", password="wrong-s3cret", retries=1, backoff=0.01)
    with pytest.raises(AirflowApiError, match="login as 'admin' refused by Airflow .*: HTTP 401") as refused:
        wrong.get_dag("demo")  # the fake server echoes the credentials in its 401 body
    client = client_for(url, retries=1)
    client.fetch_token()
    handler.fail_next = 5
    with pytest.raises(AirflowApiError) as gave_up:
        client.trigger_dag_run("demo", {"a": 1})
    embedded = AirflowClient(url.replace("://", "://admin:url-s3cret@"), token="x", retries=0)
    shown = " ".join(
        [caplog.text, str(refused.value), str(gave_up.value), repr(wrong), repr(client), repr(embedded)]
    )
    assert "503" in shown
    for secret in ("wrong-s3cret", "pw-s3cret", "tok-1", "Bearer", "url-s3cret"):
        assert secret not in shown
