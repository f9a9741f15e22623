"""core.net.retry: the one retry policy, and its callers' view of it (DIMSE, DICOMweb, bulk indexing)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airflow_provider_kaapana.core.index.client import BULK_RETRY, bulk_index
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.net.retry import (
    DEFAULT_RETRY,
    RetryPolicy,
    TransientError,
    is_transient,
    redact,
)
from airflow_provider_kaapana.exceptions import PacsError, SearchIndexError


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"done"``."""

    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or TransientError("busy")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "done"


def test_policy_retries_transient_failures_with_doubling_capped_waits():
    waits: list[float] = []
    policy = RetryPolicy(retries=4, backoff=1.0, max_backoff=3.0)
    fn = Flaky(failures=4)
    assert policy.call(fn, operation="probe", sleep=waits.append) == "done"
    assert fn.calls == 5 and waits == [1.0, 2.0, 3.0, 3.0]
    assert policy.attempts == 5


def test_policy_stops_after_its_attempts_and_raises_the_last_failure():
    waits: list[float] = []
    fn = Flaky(failures=100, exc=TransientError("still busy"))
    with pytest.raises(TransientError, match="still busy"):
        RetryPolicy(retries=2, backoff=0.5).call(fn, operation="probe", sleep=waits.append)
    assert fn.calls == 3 and waits == [0.5, 1.0]
    fn = Flaky(failures=100)
    with pytest.raises(TransientError):
        RetryPolicy(retries=0).call(fn, operation="probe", sleep=waits.append)
    assert fn.calls == 1


def test_policy_does_not_retry_what_the_predicate_refuses():
    waits: list[float] = []
    fn = Flaky(failures=1, exc=ValueError("permanent"))
    with pytest.raises(ValueError, match="permanent"):
        DEFAULT_RETRY.call(fn, is_transient, operation="probe", sleep=waits.append)
    assert fn.calls == 1 and waits == []
    # a caller's own predicate decides: here only OSError
    fn = Flaky(failures=2, exc=ConnectionResetError("reset"))
    assert (
        RetryPolicy(retries=2, backoff=0).call(
            fn, lambda e: isinstance(e, OSError), operation="probe", sleep=waits.append
        )
        == "done"
    )


def test_jitter_stays_within_half_and_full_wait():
    policy = RetryPolicy(retries=5, backoff=2.0, max_backoff=100.0, jitter=True)
    for retry in (1, 2, 3):
        full = 2.0 * 2 ** (retry - 1)
        assert all(0.5 * full <= policy.delay(retry) < full for _ in range(50))
    assert BULK_RETRY.jitter and BULK_RETRY.retries == 5


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff=-1.0)


def test_policy_from_connection_extras():
    assert RetryPolicy.from_extra({}) == DEFAULT_RETRY
    assert RetryPolicy.from_extra(None, BULK_RETRY) == BULK_RETRY
    policy = RetryPolicy.from_extra({"retries": "1", "backoff": 0.25, "max_backoff": "", "other": "x"})
    assert policy == RetryPolicy(retries=1, backoff=0.25, max_backoff=DEFAULT_RETRY.max_backoff)
    # the UI form's prefixed spelling, and the default's jitter is kept
    prefixed = RetryPolicy.from_extra(
        {"extra__kaapana_search__retries": 7}, BULK_RETRY, prefix="extra__kaapana_search__"
    )
    assert prefixed.retries == 7 and prefixed.jitter and prefixed.backoff == BULK_RETRY.backoff
    with pytest.raises(ValueError, match="'retries' must be a number"):
        RetryPolicy.from_extra({"retries": "many"})
    assert RetryPolicy(retries=2).updated(retries=None, backoff=3.0) == RetryPolicy(retries=2, backoff=3.0)


def test_retry_log_lines_name_the_operation_and_never_a_secret(caplog):
    caplog.set_level(logging.DEBUG)
    fn = Flaky(failures=100, exc=TransientError("HTTP 503: token s3cret-token rejected"))
    with pytest.raises(TransientError):
        RetryPolicy(retries=2, backoff=0).call(
            fn,
            operation="QIDO-RS at http://user:s3cret-pw@pacs.example/dicom-web",
            secrets=["s3cret-token", None, ""],
            sleep=lambda _: None,
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("QIDO-RS at http://***@pacs.example" in line for line in lines)
    assert "retry 1 of 2" in lines[0] and "HTTP 503" in lines[0]
    assert "s3cret" not in caplog.text
    assert redact("a s3cret b", ["s3cret"]) == "a *** b"


class _Echo503(BaseHTTPRequestHandler):
    """Answers 503 and echoes the request's Authorization header in the body (a careless server)."""

    calls = 0

    def log_message(self, *args):
        pass

    def _answer(self):
        type(self).calls += 1
        body = json.dumps({"detail": f"busy, you sent {self.headers.get('Authorization')}"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture
def echo_503():
    handler = type("Handler", (_Echo503,), {"calls": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_dicomweb_retries_5xx_without_showing_the_token(echo_503, caplog):
    handler, url = echo_503
    caplog.set_level(logging.DEBUG)
    client = DicomWebClient(f"{url}/dicom-web", auth="bearer-s3cret", retries=2, backoff=0.01)
    assert client.retry == RetryPolicy(retries=2, backoff=0.01)
    with pytest.raises(
        PacsError, match="QIDO-RS studies at DICOMweb .* failed after 3 attempts: HTTP 503"
    ) as err:
        client.qido("studies")
    assert handler.calls == 3
    assert "bearer-s3cret" not in str(err.value) + caplog.text + repr(client)
    assert "retry 2 of 2" in caplog.text

    basic = DicomWebClient(f"{url}/dicom-web", auth=("user", "basic-s3cret"), retries=0)
    with pytest.raises(PacsError) as err:
        basic.qido("studies")
    assert handler.calls == 4  # retries=0: one attempt
    assert "basic-s3cret" not in str(err.value)


def test_dimse_peer_policy_and_failure_after_its_attempts(caplog):
    from airflow_provider_kaapana.testing.local_services import free_port

    caplog.set_level(logging.WARNING)
    peer = dimse.DimsePeer("127.0.0.1", free_port(), "NOWHERE", retries=1, backoff=0.01, max_backoff=0.01)
    assert peer.retry == RetryPolicy(retries=1, backoff=0.01, max_backoff=0.01)
    with pytest.raises(PacsError, match=r"C-ECHO with PACS NOWHERE@127\.0\.0\.1:\d+ failed after 2 attempts"):
        dimse.echo(peer)
    assert "C-ECHO with PACS NOWHERE@" in caplog.text and "retry 1 of 1" in caplog.text


class _StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status_code = status


class _FakeSearch:
    """Just enough of SearchClient for bulk_index: ``bulk`` answers from a script."""

    url = "http://search.example:9200"

    def __init__(self, answers, retry=None) -> None:
        self.answers = list(answers)
        self.retry = retry
        self.payloads: list[bytes] = []

    def bulk(self, payload: bytes, *, refresh=False):
        self.payloads.append(payload)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _items(*statuses: tuple[str, int]):
    return {"items": [{"index": {"_id": doc_id, "status": status}} for doc_id, status in statuses]}


def test_bulk_index_follows_the_clients_policy_and_its_own_arguments():
    docs = [("a", {"x": 1}), ("b", {"x": 2})]
    waits: list[float] = []
    # the client's policy (from the connection) applies: one retry, then give up
    client = _FakeSearch([_StatusError(503), _StatusError(503)], retry=RetryPolicy(retries=1, backoff=0))
    with pytest.raises(SearchIndexError, match="bulk request of 2 documents to 'idx' failed after 1 retries"):
        bulk_index(client, "idx", docs, sleep=waits.append)
    assert len(client.payloads) == 2

    # a refusal of the whole request (403) fails at once
    client = _FakeSearch([_StatusError(403)])
    with pytest.raises(SearchIndexError, match=r"failed: 403"):
        bulk_index(client, "idx", docs, sleep=waits.append)
    assert len(client.payloads) == 1

    # a 400 for the whole request is narrowed down: the halves are sent alone, never retried
    client = _FakeSearch([_StatusError(400), _items(("a", 201)), _StatusError(400)])
    result = bulk_index(client, "idx", docs, sleep=waits.append)
    assert result.indexed == ["a"] and list(result.failed) == ["b"] and len(client.payloads) == 3
    assert "HTTP 400: the whole request was refused" in result.failed["b"]

    # documents answered 429 are sent again, alone; the old keyword names still work
    client = _FakeSearch([_items(("a", 201), ("b", 429)), _items(("b", 201))])
    result = bulk_index(client, "idx", docs, max_retries=2, backoff_s=0.0, sleep=waits.append)
    assert result.indexed == ["a", "b"] and result.retries == 1 and result.requests == 2
    assert b'"_id":"a"' not in client.payloads[1]

    # out of retries: the last 429 is reported per document, not raised
    client = _FakeSearch([_items(("a", 429), ("b", 201)), _items(("a", 429))])
    result = bulk_index(client, "idx", docs, retries=1, backoff=0.0, sleep=waits.append)
    assert result.indexed == ["b"] and result.failed["a"].startswith("HTTP 429")


def test_importing_dimse_leaves_pynetdicom_alone_until_an_association_starts():
    """DAG files import the core: pynetdicom's settings change only where DICOM networking starts."""
    code = """
import logging, json
from pynetdicom import _config
before = (_config.STORE_SEND_CHUNKED_DATASET, logging.getLogger("pynetdicom").level)
import airflow_provider_kaapana.core.net.dimse as dimse
import airflow_provider_kaapana.core.listener.server
after_import = (_config.STORE_SEND_CHUNKED_DATASET, logging.getLogger("pynetdicom").level)
dimse._ae(dimse.DimsePeer("127.0.0.1", 1))
dimse.configure_pynetdicom()  # idempotent
configured = (_config.STORE_SEND_CHUNKED_DATASET, logging.getLogger("pynetdicom").level)
dimse.configure_pynetdicom(log_events=False)
print(json.dumps([before, after_import, configured, _config.LOG_HANDLER_LEVEL]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    before, after_import, configured, handler_level = json.loads(out.stdout.strip().splitlines()[-1])
    assert after_import == before and before[0] is False
    assert configured == [True, logging.WARNING]
    assert handler_level == "none"
