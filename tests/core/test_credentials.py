"""Credentials written into a URL (``http://user:pw@host``) never show: not on success, error or retry.

Issue 19 item 6: ``kaapana send --dicomweb http://user:pw@...`` printed the password, and the listener's
``--airflow-url http://user:pw@...`` put it into its ERROR log.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_kaapana.core.listener.server import AirflowTrigger
from airflow_provider_kaapana.core.net.airflow_api import AirflowApiError
from airflow_provider_kaapana.core.net.retry import redact, split_url_credentials
from airflow_provider_kaapana.testing.local_services import free_port

PASSWORD = "pw-S3cr@t-42"  # an unescaped "@" inside: the old redaction left "t-42@" showing
QUOTED = "pw-S3cr%40t-42"


def kaapana(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _no_secret(*texts: str) -> None:
    joined = "\n".join(texts)
    for shown in (PASSWORD, QUOTED, "S3cr", "t-42@"):
        assert shown not in joined, f"{shown!r} leaked: {joined[-2000:]}"


def test_redact_hides_userinfo_with_an_at_sign_and_split_decodes_it():
    assert redact(f"GET http://admin:{PASSWORD}@h:1/x failed") == "GET http://***@h:1/x failed"
    assert redact(f"at http://admin:{QUOTED}@h/x") == "at http://***@h/x"
    plain = "http://h:80/p?q=a@b and user@example.org"
    assert redact(plain) == plain  # an "@" after the host is no userinfo
    assert redact(f"token {QUOTED}", [PASSWORD]) == "token ***"  # the percent-encoded form too
    assert split_url_credentials(f"http://admin:{QUOTED}@h:8042/dicom-web") == (
        "http://h:8042/dicom-web",
        ("admin", PASSWORD),
    )
    assert split_url_credentials("http://h/x") == ("http://h/x", None)


def test_send_with_password_in_dicomweb_url_on_success(orthanc_auth, ct_series):
    """Orthanc demands basic auth: the URL's userinfo is used, and never printed."""
    base = orthanc_auth.dicomweb_url.replace("://", "://kaapana:s3cret-pw@")
    proc = kaapana("-vv", "send", str(ct_series.series_dir), "--dicomweb", base, "--verify")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "16 instances stored" in proc.stdout and "verified" in proc.stdout
    assert "s3cret-pw" not in proc.stdout + proc.stderr
    assert orthanc_auth.dicomweb_url in proc.stdout


class _Echo503(BaseHTTPRequestHandler):
    """A careless server: answers 503 and echoes the Authorization header (base64 user:password)."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.dumps({"detail": f"busy, you sent {self.headers.get('Authorization')}"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST


@pytest.fixture
def echo_503():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_send_with_password_in_dicomweb_url_on_retry_and_error(echo_503, ct_series):
    url = f"http://admin:{QUOTED}@{echo_503}/dicom-web"
    proc = kaapana(
        "send", str(ct_series.series_dir), "--dicomweb", url, "--retries", "1", "--backoff", "0.01"
    )
    assert proc.returncode == 1
    assert "retry 1 of 1" in proc.stderr and "HTTP 503" in proc.stderr  # the retry line was logged
    assert f"http://{echo_503}/dicom-web" in proc.stderr
    _no_secret(proc.stdout, proc.stderr)
    assert "YWRtaW46" not in proc.stderr  # base64("admin:..."), echoed by the server
    down = f"http://admin:{QUOTED}@127.0.0.1:{free_port()}/dicom-web"
    proc = kaapana("send", str(ct_series.series_dir), "--dicomweb", down, "--retries", "0")
    assert proc.returncode == 1 and "ConnectionError" in proc.stderr
    _no_secret(proc.stdout, proc.stderr)


class _FakeAirflow(BaseHTTPRequestHandler):
    """``POST /auth/token`` checks the credentials; ``POST .../dagRuns`` answers a run."""

    logins: list[dict] = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if self.path == "/auth/token":
            type(self).logins.append(body)
            ok = body == {"username": "admin", "password": PASSWORD}
            answer, status = ({"access_token": "tok-123456"}, 201) if ok else ({"detail": "no"}, 401)
        else:
            answer, status = {"dag_run_id": body.get("dag_run_id"), "state": "queued"}, 200
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_airflow():
    handler = type("Handler", (_FakeAirflow,), {"logins": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_airflow_url_with_password_logs_in_and_never_shows_it(fake_airflow, caplog):
    """The listener's trigger (``--airflow-url http://user:pw@...``) on success, retry and error."""
    caplog.set_level(logging.DEBUG)
    handler, where = fake_airflow
    trigger = AirflowTrigger(f"http://admin:{QUOTED}@{where}", "ingest", retries=1, backoff=0.01)
    assert trigger.trigger({"x": 1}, run_id="r1") == {"dag_run_id": "r1", "state": "queued"}
    assert handler.logins == [{"username": "admin", "password": PASSWORD}]
    assert trigger.airflow_url == f"http://{where}"

    down = AirflowTrigger(f"http://admin:{QUOTED}@127.0.0.1:{free_port()}", "ingest", retries=1, backoff=0.01)
    with pytest.raises(AirflowApiError) as err:
        down.trigger({}, run_id="r2")
    assert "retry 1 of 1" in caplog.text and "failed after 2 attempts" in str(err.value)
    _no_secret(str(err.value), repr(down), repr(down.client), caplog.text)
    for record in caplog.records:
        _no_secret(record.getMessage())


def test_index_with_password_in_url_prints_no_password(osmem, ct_series):
    url = osmem.url.replace("://", f"://admin:{QUOTED}@")
    proc = kaapana("index", str(ct_series.series_dir), "--url", url, "--flavor", "opensearch")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "indexed 1 series" in proc.stdout
    _no_secret(proc.stdout, proc.stderr)
    down = f"http://admin:{QUOTED}@127.0.0.1:{free_port()}"
    for flavor in ("auto", "opensearch"):
        proc = kaapana("index", str(ct_series.series_dir), "--url", down, "--flavor", flavor)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "kaapana index:" in proc.stderr
        _no_secret(proc.stdout, proc.stderr)
