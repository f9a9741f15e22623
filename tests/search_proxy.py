"""A real HTTP proxy in front of osmem for the search tests.

* It rewrites Elasticsearch's versioned media types (``application/vnd.elasticsearch+json;
  compatible-with=9``) to plain ``application/json`` / ``application/x-ndjson`` in both directions —
  what an Elasticsearch server itself accepts — so the official ``elasticsearch`` client runs over
  real HTTP against a real server. Nothing else in the requests or answers is changed.
* It can answer the first ``fail_next`` requests whose path contains ``fail_path`` with
  ``fail_status`` (e.g. 429), or mark the first item of the next ``item_fail_next`` bulk answers as
  rejected with 429, to exercise retries against real HTTP behaviour.
* It can answer ``GET /`` with ``root_answer`` (e.g. an Elasticsearch 8 server's name and version)
  instead of osmem's own (OpenSearch 3.8), with osmem's headers.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_COMPAT = re.compile(r"application/vnd\.elasticsearch\+([a-z\-]+)\s*;\s*compatible-with=\d+")


class SearchProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.fail_path = ""
        self.fail_next = 0
        self.fail_status = 429
        self.item_fail_next = 0  # answer the first item of that many _bulk responses with 429
        self.seen_content_types: list[str] = []
        self.request_count = 0
        self.root_answer: dict | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.request_count += 1
                if proxy.fail_next > 0 and proxy.fail_path in self.path:
                    proxy.fail_next -= 1
                    payload = (
                        b'{"error":{"type":"es_rejected_execution_exception","reason":"injected"},"status":%d}'
                        % (proxy.fail_status)
                    )
                    self.send_response(proxy.fail_status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {}
                for key, value in self.headers.items():
                    if key.lower() in ("host", "content-length", "connection"):
                        continue
                    if key.lower() in ("content-type", "accept"):
                        proxy.seen_content_types.append(value)
                        value = _COMPAT.sub(r"application/\1", value)
                    headers[key] = value
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                if proxy.root_answer is not None and self.command == "GET" and self.path.split("?")[0] == "/":
                    data = json.dumps(proxy.root_answer).encode()
                if proxy.item_fail_next > 0 and "_bulk" in self.path and response.status == 200:
                    proxy.item_fail_next -= 1
                    answer = json.loads(data)
                    first = answer["items"][0]
                    op = first.get("index") or first.get("create")
                    op["status"] = 429
                    op["error"] = {"type": "es_rejected_execution_exception", "reason": "injected item 429"}
                    answer["errors"] = True
                    data = json.dumps(answer).encode()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in ("content-length", "connection", "transfer-encoding"):
                        continue
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> SearchProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
