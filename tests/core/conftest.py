"""Fixtures shared by the core tests: a fake Airflow REST API for the listener's triggers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _FakeAirflow(BaseHTTPRequestHandler):
    """A tiny real HTTP server recording requests; answers like Airflow's /auth/token and dagRuns."""

    requests: list[tuple[str, str, dict, dict]] = []
    fail_next = 0
    runs: set[str] = set()

    def log_message(self, *args):
        pass

    def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        cls = type(self)
        cls.requests.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/auth/token":
            if body == {"username": "admin", "password": "pw"}:
                return self._reply(201, {"access_token": "tok-123"})
            return self._reply(401, {"detail": "bad"})
        if self.headers.get("Authorization") != "Bearer tok-123":
            return self._reply(401, {"detail": "no token"})
        if cls.fail_next:
            cls.fail_next -= 1
            return self._reply(503, {"detail": "busy"})
        run_id = body.get("dag_run_id")
        if run_id in cls.runs:
            return self._reply(409, {"detail": "exists"})
        cls.runs.add(run_id)
        return self._reply(200, {"dag_run_id": run_id, "state": "queued"})


@pytest.fixture
def fake_airflow():
    handler = type("Handler", (_FakeAirflow,), {"requests": [], "fail_next": 0, "runs": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
