"""A thin, flavor-neutral client for Elasticsearch and OpenSearch: template, bulk, indexing.

Cohort queries are in :mod:`airflow_provider_kaapana.core.index.cohort`.

The client follows the server: the official ``elasticsearch`` client for Elasticsearch and
``opensearch-py`` for OpenSearch. Both are wrapped in :class:`SearchClient`, which exposes only the
few calls this package needs, so the hook, operators and CLI never branch on the flavor.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import requests

from airflow_provider_kaapana.core.index.document import merge_series_documents
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX, build_index_template
from airflow_provider_kaapana.core.net.retry import BULK_RETRY, RetryPolicy, redact, split_url_credentials
from airflow_provider_kaapana.exceptions import SearchIndexError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.workspace import RunWorkspace

log = logging.getLogger(__name__)

Flavor = Literal["opensearch", "elasticsearch"]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: A whole bulk request refused with these is sent again in halves (one bad document, or too large).
SPLIT_STATUSES = frozenset({400, 413})
# merge_instances: how often a series document is merged again after a parallel write changed it
MERGE_ATTEMPTS = 20
#: index_series with worker processes: the largest bulk request, sent while the workers build on
STREAM_BYTES = 512 * 1024


def server_info(
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    api_key: str | None = None,
    verify: bool | str = True,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The server's ``GET /`` answer (name, distribution, ``version.number``)."""
    headers = {"Authorization": f"ApiKey {api_key}"} if api_key else None
    try:
        response = requests.get(
            url.rstrip("/") + "/", auth=auth, headers=headers, verify=verify, timeout=timeout
        )
        response.raise_for_status()
        info = response.json()
    except (requests.RequestException, ValueError) as exc:
        secrets = tuple(s for s in ((auth[1] if auth else None), api_key) if s)
        raise SearchIndexError(redact(f"search server {url}: GET / failed: {exc}", secrets)) from exc
    return info if isinstance(info, dict) else {}


def flavor_of(info: dict[str, Any]) -> Flavor:
    """``opensearch`` when a ``GET /`` answer says its distribution is OpenSearch, else ``elasticsearch``."""
    version = info.get("version") or {}
    if version.get("distribution") == "opensearch" or "opensearch" in str(info.get("tagline", "")).lower():
        return "opensearch"
    return "elasticsearch"


def detect_flavor(
    url: str, *, auth: tuple[str, str] | None = None, verify: bool | str = True, timeout: float = 10.0
) -> Flavor:
    """``GET /`` once: ``opensearch`` when the server says its distribution is OpenSearch."""
    return flavor_of(server_info(url, auth=auth, verify=verify, timeout=timeout))


#: the extras pinning the ``elasticsearch`` client to a server's major version
ELASTICSEARCH_EXTRAS = {8: "elasticsearch8", 9: "elasticsearch9"}


def _major(version: str) -> int | None:
    head = str(version).split(".", 1)[0]
    return int(head) if head.isdigit() else None


def elasticsearch_extra_hint(server_version: str | None) -> str:
    """``pip install ...`` naming the extra whose client fits an Elasticsearch server of that version."""
    major = _major(server_version) if server_version else None
    if major in ELASTICSEARCH_EXTRAS:
        return f"pip install 'airflow-provider-kaapana[{ELASTICSEARCH_EXTRAS[major]}]'"
    choices = " or ".join(
        f"'airflow-provider-kaapana[{extra}]' for a {m}.x server" for m, extra in ELASTICSEARCH_EXTRAS.items()
    )
    return f"pip install {choices}"


def check_elasticsearch_client(url: str, server_version: str, client_version: str) -> None:
    """Refuse an ``elasticsearch`` client the server will not talk to: the client sends
    ``compatible-with=<its major>`` on every request, and a server accepts only its own major and the
    one before (an 8.x client works with a 9.x server); any other it refuses with an error that does
    not say why. :class:`SearchIndexError` naming both versions and the extra to install."""
    server_major, client_major = _major(server_version), _major(client_version)
    if server_major is None or client_major is None or server_major - 1 <= client_major <= server_major:
        return
    raise SearchIndexError(
        f"Elasticsearch server {url} is version {server_version} but the installed elasticsearch client "
        f"is {client_version} (it sends compatible-with={client_major}, which a {server_major}.x server "
        f"refuses): {elasticsearch_extra_hint(server_version)}"
    )


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    meta = getattr(exc, "meta", None)
    status = getattr(meta, "status", None)
    return status if isinstance(status, int) else None


def _is_connection_error(exc: BaseException) -> bool:
    return type(exc).__name__ in {"ConnectionError", "ConnectionTimeout", "TransportError"} and (
        _status_of(exc) in (None, "N/A")
    )


class SearchClient:
    """The calls this package makes, over either official client library.

    ``raw`` is the underlying ``elasticsearch.Elasticsearch`` or ``opensearchpy.OpenSearch``.
    ``retry``: the policy of :func:`bulk_index` with this client (None: :data:`BULK_RETRY`).
    """

    def __init__(self, raw: Any, flavor: Flavor, url: str, retry: RetryPolicy | None = None) -> None:
        self.raw = raw
        self.flavor = flavor
        self.url = url
        self.retry = retry

    def __repr__(self) -> str:  # never shows credentials
        return f"SearchClient({self.flavor}, {self.url})"

    def info(self) -> dict[str, Any]:
        return dict(self.raw.info())

    def put_index_template(self, name: str, body: dict[str, Any]) -> None:
        self.raw.indices.put_index_template(name=name, body=body)

    def get_index_template(self, name: str) -> dict[str, Any] | None:
        try:
            response = self.raw.indices.get_index_template(name=name)
        except Exception as exc:
            if _status_of(exc) == 404:
                return None
            raise
        templates = dict(response).get("index_templates", [])
        return templates[0]["index_template"] if templates else None

    def bulk(self, payload: bytes, *, refresh: bool | str = False) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if refresh:
            params["refresh"] = "true" if refresh is True else refresh
        if self.flavor == "elasticsearch":
            return dict(self.raw.bulk(body=payload, **params))
        return dict(self.raw.bulk(body=payload, params=params))

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.raw.search(index=index, body=body))

    def count(self, index: str, query: dict[str, Any] | None = None) -> int:
        body = {"query": query} if query else None
        return int(dict(self.raw.count(index=index, body=body))["count"])

    def refresh(self, index: str) -> None:
        self.raw.indices.refresh(index=index)

    def get(self, index: str, doc_id: str) -> dict[str, Any] | None:
        found = self.get_versioned(index, doc_id)
        return found[0] if found is not None else None

    def get_versioned(self, index: str, doc_id: str) -> tuple[dict[str, Any], dict[str, int]] | None:
        """The document and the condition that writes over exactly this version of it
        (``{"if_seq_no", "if_primary_term"}``), or None when there is none."""
        try:
            found = dict(self.raw.get(index=index, id=doc_id))
        except Exception as exc:
            if _status_of(exc) == 404:
                return None
            raise
        return found["_source"], {"if_seq_no": found["_seq_no"], "if_primary_term": found["_primary_term"]}

    def delete_index(self, index: str) -> None:
        try:
            self.raw.indices.delete(index=index)
        except Exception as exc:
            if _status_of(exc) != 404:
                raise


def make_search_client(
    url: str,
    flavor: Literal["opensearch", "elasticsearch", "auto"] = "auto",
    *,
    auth: tuple[str, str] | None = None,
    api_key: str | None = None,
    verify_certs: bool = True,
    ca_certs: str | None = None,
    timeout: float = 30.0,
    client_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> SearchClient:
    """A :class:`SearchClient` for ``url``; ``flavor="auto"`` asks the server once (``GET /``).

    ``retry`` is the policy of bulk requests (default :data:`BULK_RETRY`)."""
    url, url_auth = split_url_credentials(url.rstrip("/"))  # the client's url (shown) holds no password
    auth = auth or url_auth
    info: dict[str, Any] | None = None

    def ask_server() -> dict[str, Any]:
        return server_info(url, auth=auth, api_key=api_key, verify=ca_certs or verify_certs, timeout=timeout)

    if flavor == "auto":
        info = ask_server()
        flavor = flavor_of(info)
    options = dict(client_options or {})
    if flavor == "opensearch":
        try:
            from opensearchpy import OpenSearch
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise SearchIndexError(
                "OpenSearch server but opensearch-py is not installed: "
                "pip install 'airflow-provider-kaapana[opensearch]'"
            ) from exc
        kwargs: dict[str, Any] = {
            "hosts": [url],
            "timeout": timeout,
            "verify_certs": verify_certs,
            "max_retries": 0,  # retries are ours (bulk_index, RetryPolicy)
        }
        if auth:
            kwargs["http_auth"] = auth
        if api_key:
            kwargs.setdefault("headers", {})["Authorization"] = f"ApiKey {api_key}"
        if ca_certs:
            kwargs["ca_certs"] = ca_certs
        kwargs.update(options)
        return SearchClient(OpenSearch(**kwargs), "opensearch", url, retry)
    if flavor == "elasticsearch":
        Elasticsearch = _elasticsearch_client_class(url, info, ask_server)
        kwargs = {"hosts": [url], "request_timeout": timeout, "max_retries": 0}
        if url.startswith("https"):
            kwargs["verify_certs"] = verify_certs
            if ca_certs:
                kwargs["ca_certs"] = ca_certs
        if auth:
            kwargs["basic_auth"] = auth
        if api_key:
            kwargs["api_key"] = api_key
        kwargs.update(options)
        return SearchClient(Elasticsearch(**kwargs), "elasticsearch", url, retry)
    raise ValueError(f"flavor must be 'opensearch', 'elasticsearch' or 'auto', not {flavor!r}")


def _elasticsearch_client_class(
    url: str, info: dict[str, Any] | None, ask_server: Callable[[], dict[str, Any]]
) -> Any:
    """The installed ``elasticsearch.Elasticsearch``, once the server (``GET /``, asked here unless
    ``info`` holds its answer) is known to speak its major version; a missing client or a major the
    server refuses is a :class:`SearchIndexError` naming the extra to install."""
    try:
        import elasticsearch
    except ImportError as exc:
        try:
            version = str(((info or ask_server()).get("version") or {}).get("number") or "") or None
        except SearchIndexError:
            version = None
        raise SearchIndexError(
            f"Elasticsearch server {url}{f' (version {version})' if version else ''} but the elasticsearch "
            f"client is not installed: {elasticsearch_extra_hint(version)}"
        ) from exc
    if info is None:
        try:
            info = ask_server()
        except SearchIndexError as exc:  # e.g. an API key without the monitor privilege: no GET /
            # a server that cannot be reached is reported once, by the first request (no warning here)
            unreachable = isinstance(exc.__cause__, requests.ConnectionError | requests.Timeout)
            log.log(
                logging.DEBUG if unreachable else logging.WARNING,
                "%s: the elasticsearch client's version is not checked against the server's",
                exc,
            )
            return elasticsearch.Elasticsearch
    if flavor_of(info) == "opensearch":
        log.warning("%s is OpenSearch: the connection asks for the elasticsearch client all the same", url)
        return elasticsearch.Elasticsearch
    server_version = str((info.get("version") or {}).get("number") or "")
    client_version = str(getattr(elasticsearch, "__versionstr__", "") or "")
    check_elasticsearch_client(url, server_version, client_version)
    return elasticsearch.Elasticsearch


def template_name(index: str) -> str:
    return f"{index}-template"


def ensure_index_template(
    client: SearchClient, index: str = DEFAULT_INDEX, *, explicit: Literal["core", "all"] = "core"
) -> bool:
    """Install the series-document template for ``index`` (pattern ``<index>*``); idempotent.

    Returns True when the template was (re)installed, False when an identical one was already there.
    """
    body = build_index_template(f"{index}*", explicit=explicit)
    name = template_name(index)
    try:
        current = client.get_index_template(name)
    except Exception as exc:  # a server that is down or refuses us: one clear error, no traceback
        raise SearchIndexError(f"{client.url}: reading index template {name!r} failed: {exc}") from exc
    if current is not None and _same_template(current, body):
        return False
    try:
        client.put_index_template(name, body)
    except Exception as exc:
        raise SearchIndexError(f"{client.url}: installing index template {name!r} failed: {exc}") from exc
    return True


def _same_template(current: dict[str, Any], body: dict[str, Any]) -> bool:
    meta = current.get("_meta") or {}
    if current.get("version") != body["version"] or meta.get("template_version") != body["version"]:
        return False
    mappings = (current.get("template") or {}).get("mappings") or {}
    want = body["template"]["mappings"]
    return sorted(mappings.get("properties", {})) == sorted(want["properties"]) and len(
        mappings.get("dynamic_templates", [])
    ) == len(want["dynamic_templates"])


@dataclass
class BulkResult:
    """Outcome of :func:`bulk_index`: ids indexed, ``{doc_id: reason}`` rejected, requests sent."""

    indexed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    conflicts: list[str] = field(default_factory=list)  # conditional writes refused (409): read again

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "failed": self.failed,
            "requests": self.requests,
            "retries": self.retries,
        }


# A document to index: (doc_id, document), or (doc_id, document, condition) where condition is
# {"if_seq_no", "if_primary_term"} (write over that version only) or {"op_type": "create"} (only if
# there is none yet); a write whose condition no longer holds comes back in BulkResult.conflicts.
BulkDocument = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]


def _action_lines(
    index: str, doc_id: str, document: dict[str, Any], condition: dict[str, Any] | None = None
) -> bytes:
    condition = dict(condition or {})
    op = "create" if condition.pop("op_type", None) == "create" else "index"
    action = json.dumps({op: {"_index": index, "_id": doc_id, **condition}}, separators=(",", ":"))
    source = json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{action}\n{source}\n".encode()


def _batches(
    index: str, docs: Iterable[BulkDocument], max_bytes: int
) -> Iterator[tuple[list[tuple[str, bytes]], bool]]:
    """Requests of at most ``max_bytes`` (one document may be more), each with whether it is the last."""
    batch: list[tuple[str, bytes]] = []
    size = 0
    for doc_id, document, *condition in docs:
        lines = _action_lines(index, doc_id, document, condition[0] if condition else None)
        if batch and size + len(lines) > max_bytes:
            yield batch, False
            batch, size = [], 0
        batch.append((doc_id, lines))
        size += len(lines)
    if batch:
        yield batch, True


class _RetryDocuments(Exception):
    """Some documents of a bulk request were answered 429/5xx: send those again."""


def _bulk_retryable(exc: BaseException) -> bool:
    if isinstance(exc, _RetryDocuments):
        return True
    status = _status_of(exc)
    return status in RETRY_STATUSES or (status is None and _is_connection_error(exc))


def _bulk_problem(exc: BaseException) -> str:
    if isinstance(exc, _RetryDocuments):
        return str(exc)
    return f"answered {_status_of(exc) or exc}"


def _bulk_policy(client: SearchClient, **given: Any) -> RetryPolicy:
    """The client's policy (else :data:`BULK_RETRY`) with the caller's non-None values."""
    base = getattr(client, "retry", None) or BULK_RETRY
    return base.updated(**given)


def bulk_index(
    client: SearchClient,
    index: str,
    docs: Iterable[BulkDocument],
    *,
    max_bytes: int = 8 * 1024 * 1024,
    retries: int | None = None,
    backoff: float | None = None,
    max_backoff: float | None = None,
    refresh: bool | str = False,
    sleep: Callable[[float], None] = time.sleep,
    max_retries: int | None = None,
    backoff_s: float | None = None,
    max_backoff_s: float | None = None,
) -> BulkResult:
    """Index ``(doc_id, document)`` pairs in bulk requests of at most ``max_bytes``.

    A third element makes the write conditional (:data:`BulkDocument`); those refused because the
    document changed meanwhile (HTTP 409) are listed in ``BulkResult.conflicts``, not in ``failed``.

    A whole request answered 429/5xx (or a lost connection) is retried with exponential backoff and
    jitter; single documents rejected with 429/5xx inside a bulk response are retried the same way.
    Documents rejected for other reasons (mapping errors...) are reported in ``BulkResult.failed``
    with the server's reason. Raises :class:`SearchIndexError` only when retries run out for a whole
    request (or the final refresh fails).

    ``refresh`` (``True``/``"wait_for"``) goes with the request when there is only one; several requests
    are sent without it and the index is refreshed once after the last.

    ``retries``, ``backoff``, ``max_backoff`` change the client's retry policy (default
    :data:`BULK_RETRY`: 5 retries, 0.5 s doubling up to 30 s, with jitter); ``max_retries``,
    ``backoff_s`` and ``max_backoff_s`` are their former names.
    """
    policy = _bulk_policy(
        client,
        retries=retries if retries is not None else max_retries,
        backoff=backoff if backoff is not None else backoff_s,
        max_backoff=max_backoff if max_backoff is not None else max_backoff_s,
    )
    result = BulkResult()
    # One request carries ``refresh`` itself (as before); several are sent without it and the index is
    # refreshed once after the last: a refresh (or a wait for one) per request cost each request a wait
    # on a real cluster (``refresh_interval``), which streaming smaller requests would multiply.
    # (_batches yields a batch as soon as the next document does not fit: never held back for this)
    sent = 0
    for batch, last in _batches(index, docs, max_bytes):
        _bulk_batch_or_split(
            client, index, batch, policy, result, refresh if last and not sent else False, sleep
        )
        sent += 1
    if sent > 1 and refresh:
        try:
            client.refresh(index)
        except Exception as exc:
            raise SearchIndexError(
                f"{client.url}: refreshing {index!r} after the bulk requests failed: {exc}"
            ) from exc
    return result


def _bulk_batch_or_split(
    client: SearchClient,
    index: str,
    batch: list[tuple[str, bytes]],
    policy: RetryPolicy,
    result: BulkResult,
    refresh: bool | str,
    sleep: Callable[[float], None],
) -> None:
    """:func:`_bulk_batch`; a whole request refused outright (HTTP 400/413, e.g. one id over 512 bytes)
    is sent again in halves, so one bad document is reported in ``failed`` and never sinks the others."""
    try:
        _bulk_batch(client, index, batch, policy, result, refresh, sleep)
    except SearchIndexError as exc:
        status = _status_of(exc.__cause__) if exc.__cause__ is not None else None
        if status not in SPLIT_STATUSES:  # the server is down, or refuses us (401/403): stop
            raise
        if len(batch) == 1:
            result.failed[batch[0][0]] = f"HTTP {status}: the whole request was refused: {exc.__cause__}"
            return
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            _bulk_batch_or_split(client, index, part, policy, result, refresh, sleep)


def _bulk_batch(
    client: SearchClient,
    index: str,
    batch: list[tuple[str, bytes]],
    policy: RetryPolicy,
    result: BulkResult,
    refresh: bool | str,
    sleep: Callable[[float], None],
) -> None:
    """One batch: the whole request and then the documents answered 429/5xx, under ``policy``."""
    pending = batch
    attempt_number = 0

    def attempt() -> None:
        nonlocal pending, attempt_number
        attempt_number += 1
        if attempt_number > 1:
            result.retries += 1
        payload = b"".join(lines for _, lines in pending)
        result.requests += 1
        response = client.bulk(payload, refresh=refresh)
        retry: list[tuple[str, bytes]] = []
        by_id = dict(pending)
        for item in response.get("items", []):
            op = item.get("index") or item.get("create") or {}
            doc_id = str(op.get("_id"))
            status = int(op.get("status", 0))
            if 200 <= status < 300:
                result.indexed.append(doc_id)
                result.failed.pop(doc_id, None)
            elif status == 409:
                result.conflicts.append(doc_id)
            elif status in RETRY_STATUSES and attempt_number <= policy.retries and doc_id in by_id:
                retry.append((doc_id, by_id[doc_id]))
            else:
                error = op.get("error")
                reason = error.get("reason") if isinstance(error, dict) else str(error)
                kind = error.get("type") if isinstance(error, dict) else ""
                result.failed[doc_id] = f"HTTP {status} {kind}: {reason}".strip()
        pending = retry
        if retry:
            raise _RetryDocuments(f"{len(retry)} documents answered 429/5xx")

    try:
        policy.call(
            attempt,
            _bulk_retryable,
            operation=f"bulk request to {index!r} at {client.url}",
            describe=_bulk_problem,
            sleep=sleep,
            logger=log,
        )
    except _RetryDocuments:  # pragma: no cover - the last attempt never asks for another
        pass
    except Exception as exc:
        status = _status_of(exc)
        done = attempt_number - 1
        raise SearchIndexError(
            f"{client.url}: bulk request of {len(pending)} documents to {index!r} failed"
            f"{f' after {done} retries' if done else ''}: {status or ''} {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------------
# the whole step: headers -> documents -> bulk


@dataclass
class IndexReport:
    """Outcome of :func:`index_series`; ``as_dict()`` is the operator's XCom and the CLI's output."""

    index: str
    indexed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    file_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    instances: int = 0
    requests: int = 0
    retries: int = 0
    thumbnails: dict[str, str] = field(default_factory=dict)  # series UID -> PNG in the run workspace
    no_thumbnail: dict[str, str] = field(default_factory=dict)  # series UID -> why not
    viewer_urls: dict[str, str] = field(default_factory=dict)  # series UID -> kaapana.viewer_url
    # merge_instances: conditional writes refused (HTTP 409) because a parallel run wrote the series
    # document between this run's read and write; each was read, merged and written again
    merge_conflicts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "indexed": self.indexed,
            "failed": self.failed,
            "file_errors": self.file_errors,
            "problems": self.problems[:200],
            "instances": self.instances,
            "thumbnails": self.thumbnails,
            "no_thumbnail": self.no_thumbnail,
            "viewer_urls": self.viewer_urls,
            "merge_conflicts": self.merge_conflicts,
        }


def _build_one(args: tuple[str, dict[str, Any]]) -> tuple[list[Any], list[str]]:
    from airflow_provider_kaapana.core.index.document import build_series_documents

    path, kwargs = args
    return build_series_documents([path], **kwargs)


def iter_series_documents(
    inputs: Sequence[tuple[str | Any, dict[str, Any]]], *, workers: int = 1
) -> Iterator[tuple[list[Any], list[str]]]:
    """``(documents, file_errors)`` per input ``(path, build kwargs)``; ``workers`` > 1 uses processes."""
    items = [(str(path), kwargs) for path, kwargs in inputs]
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield _build_one(item)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_build_one, items, chunksize=max(1, min(16, len(items) // (workers * 8) or 1)))


def index_series(
    client: SearchClient,
    index: str,
    inputs: Sequence[str | Any | tuple[str | Any, dict[str, Any]]],
    *,
    workers: int = 1,
    received_at: Any = None,
    source: dict[str, Any] | None = None,
    ensure_template: bool = True,
    max_bytes: int = 8 * 1024 * 1024,
    max_retries: int | None = None,
    backoff_s: float | None = None,
    refresh: bool | str = False,
    merge_instances: bool = False,
    retries: int | None = None,
    backoff: float | None = None,
    viewer_url: str | None = None,
    thumbnails: RunWorkspace | None = None,
) -> IndexReport:
    """Index series folders (or files) into ``index``: one document per SeriesInstanceUID.

    ``merge_instances=True`` merges each document into the one already indexed for its series
    (:func:`~airflow_provider_kaapana.core.index.document.merge_series_documents`: instances united by
    SOPInstanceUID, aggregates recomputed) — for series that arrive in parts. Default: replace. The
    merged document is written only over the version it was merged with (``if_seq_no`` /
    ``if_primary_term``; ``create`` for a new series): when a parallel run wrote the series meanwhile,
    the document is read, merged and written again (up to ``MERGE_ATTEMPTS`` times), so parallel runs
    of one series lose no instances; ``IndexReport.merge_conflicts`` counts those refused writes.

    ``inputs`` are paths, or ``(path, {"received_at":..., "source":..., "location":...})`` pairs to
    give each series its own derived fields. Unreadable files end up in ``file_errors``; documents the
    server rejects in ``failed``; nothing else stops the run. Raises :class:`SearchIndexError` only
    when the server keeps failing whole requests after the retries. ``retries``/``backoff`` (former
    names ``max_retries``/``backoff_s``) change the client's bulk retry policy (see :func:`bulk_index`).

    ``max_bytes`` bounds each bulk request; with ``workers`` > 1 requests of at most
    :data:`STREAM_BYTES` go out while the workers build the next documents. ``refresh`` goes with the
    request when there is one; after several, the index is refreshed once (see :func:`bulk_index`).

    ``viewer_url`` (a viewer URL template) gives each document ``kaapana.viewer_url``; ``thumbnails`` (the
    run workspace) a thumbnail (see :func:`~airflow_provider_kaapana.core.index.document.build_series_documents`);
    the report names each PNG written, and why a series has none.
    """
    if ensure_template:
        ensure_index_template(client, index)
    defaults = {"received_at": received_at, "source": source}
    if viewer_url:
        defaults["viewer_url"] = viewer_url
    if thumbnails is not None:
        defaults["thumbnails"] = thumbnails
    normalised: list[tuple[str | Any, dict[str, Any]]] = []
    for item in inputs:
        if isinstance(item, tuple):
            path, kwargs = item
            normalised.append((path, {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}))
        else:
            normalised.append((item, dict(defaults)))
    report = IndexReport(index=index)
    files_of: dict[str, list[Any]] = {}
    new_documents: dict[str, dict[str, Any]] = {}  # merge_instances: what this run adds, by series

    def merged(doc_id: str) -> BulkDocument:
        """This run's document merged into the indexed one, conditional on that very version."""
        try:
            found = client.get_versioned(index, doc_id)
        except Exception as exc:
            raise SearchIndexError(f"{client.url}: reading {doc_id} to merge failed: {exc}") from exc
        if found is None:
            return doc_id, new_documents[doc_id], {"op_type": "create"}
        existing, condition = found
        return doc_id, merge_series_documents(existing, new_documents[doc_id]), condition

    def documents() -> Iterator[BulkDocument]:
        for docs, errors in iter_series_documents(normalised, workers=workers):
            report.file_errors.extend(errors)
            for doc in docs:
                files_of[doc.doc_id] = list(doc.files)
                report.instances += len(doc.files)
                report.problems.extend(doc.problems)
                if doc.thumbnail_path:
                    report.thumbnails[doc.doc_id] = doc.thumbnail_path
                if doc.thumbnail_refused:
                    report.no_thumbnail[doc.doc_id] = doc.thumbnail_refused
                if doc.document.get("kaapana", {}).get("viewer_url"):
                    report.viewer_urls[doc.doc_id] = doc.document["kaapana"]["viewer_url"]
                if merge_instances:
                    new_documents[doc.doc_id] = doc.document
                    yield merged(doc.doc_id)
                else:
                    yield doc.doc_id, doc.document

    options: dict[str, Any] = {
        # with worker processes, requests go out while the workers build the next documents, so that the
        # search server indexes in parallel instead of after them (measured, 5,000 instances against
        # osmem-server, 2 workers, median of 5: 8 MiB in one request 5,549/s, 512 KiB 7,224/s;
        # docs/guides/benchmarks_index.rst)
        "max_bytes": min(max_bytes, STREAM_BYTES) if workers > 1 else max_bytes,
        "retries": retries if retries is not None else max_retries,
        "backoff": backoff if backoff is not None else backoff_s,
        "refresh": refresh,
    }
    result = bulk_index(client, index, documents(), **options)
    # Optimistic concurrency: another run wrote the series document between our read and our write
    # (parts of one series indexed by parallel runs): read it again, merge again, write again.
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        if not result.conflicts:
            break
        again, result.conflicts = sorted(set(result.conflicts)), []
        report.merge_conflicts += len(again)
        log.info("%d series documents changed while merging: merging again (%d)", len(again), attempt)
        retried = bulk_index(client, index, [merged(doc_id) for doc_id in again], **options)
        result.indexed += retried.indexed
        result.failed.update(retried.failed)
        result.conflicts = retried.conflicts
        result.requests += retried.requests
        result.retries += retried.retries
    for doc_id in result.conflicts:
        result.failed[doc_id] = f"still changing after {MERGE_ATTEMPTS} merges (HTTP 409 version conflict)"
    report.indexed = result.indexed
    report.failed = {
        uid: f"{_files_named(files_of.get(uid, []))}: {why}" for uid, why in result.failed.items()
    }
    report.requests, report.retries = result.requests, result.retries
    return report


def _files_named(files: Sequence[Any]) -> str:
    """``/in/a.dcm`` or ``/in/a.dcm and 11 more files``: which files a rejected document came from."""
    if not files:
        return "(no file)"
    more = f" and {len(files) - 1} more files" if len(files) > 1 else ""
    return f"{files[0]}{more}"
