"""SearchHook: one connection to an Elasticsearch or OpenSearch server for the DICOM metadata index.

Accepts our own ``kaapana_search`` connections and connections of the official Airflow
``elasticsearch`` and ``opensearch`` provider types (read field by field here, so neither provider
needs to be installed). The client follows the server: ``opensearch-py`` for OpenSearch, the official
``elasticsearch`` client for Elasticsearch, decided by the connection (type or ``flavor`` extra) or by
one ``GET /`` the first time a client is needed — never at DAG parse time. Neither client is a
requirement of the package: each comes with an extra (``opensearch``, ``elasticsearch8``,
``elasticsearch9``), and a missing one, or an Elasticsearch client of a major the server
refuses (above its own, or more than one below), is an error naming the extra to install.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from airflow_provider_kaapana.core.index.client import BULK_RETRY, SearchClient, make_search_client
from airflow_provider_kaapana.core.net.retry import RetryPolicy
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.hooks.connection_forms import (
    SEARCH_CONN_FIELDS,
    SEARCH_CONN_TYPE,
    SEARCH_UI_FIELD_BEHAVIOUR,
    legacy_field_behaviour,
    legacy_form_widgets,
)

_FLAVOR_BY_CONN_TYPE = {"elasticsearch": "elasticsearch", "opensearch": "opensearch"}


def connection_url(conn: Any) -> str:
    """``scheme://host:port`` from an Airflow connection (host may already carry the scheme)."""
    extra = conn.extra_dejson or {}
    host = (conn.host or "localhost").strip().rstrip("/")
    if "://" in host:
        scheme, _, rest = host.partition("://")
    else:
        use_ssl = parse_bool(extra.get("use_ssl") or None, "extra use_ssl", default=False)
        scheme = (conn.schema if conn.schema in ("http", "https") else None) or (
            "https" if use_ssl else "http"
        )
        rest = host
    if conn.port and ":" not in rest.split("/", 1)[0]:
        head, sep, tail = rest.partition("/")
        rest = f"{head}:{conn.port}{sep}{tail}"
    return f"{scheme}://{rest}"


class SearchHook(BaseHook):
    """Elasticsearch/OpenSearch access for indexing series documents and selecting cohorts.

    :param search_conn_id: an Airflow connection of type ``kaapana_search``, ``elasticsearch`` or
        ``opensearch``. Extras: ``flavor`` (``opensearch``/``elasticsearch``/``auto``), ``verify_certs``,
        ``ca_certs``, ``api_key``, ``use_ssl``, ``timeout``, and the retry policy of bulk requests:
        ``retries``, ``backoff``, ``max_backoff`` (default 5 retries, 0.5 s doubling up to 30 s).
    """

    conn_name_attr = "search_conn_id"
    default_conn_name = "kaapana_search_default"
    conn_type = SEARCH_CONN_TYPE
    hook_name = "Kaapana search (Elasticsearch / OpenSearch)"

    def __init__(self, search_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.search_conn_id = search_conn_id

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields for Airflow < 3.2 (3.2+ reads ``conn-fields`` from the provider info)."""
        return legacy_form_widgets(SEARCH_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return legacy_field_behaviour(SEARCH_UI_FIELD_BEHAVIOUR)

    @staticmethod
    def _retry_policy_of(conn: Any) -> RetryPolicy:
        return RetryPolicy.from_extra(
            conn.extra_dejson or {}, BULK_RETRY, prefix=f"extra__{conn.conn_type}__"
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        """The bulk retry policy: the connection's ``retries``, ``backoff``, ``max_backoff`` extras,
        else 5 retries after 0.5 s doubling up to 30 s, with jitter."""
        return self._retry_policy_of(self.get_connection(self.search_conn_id))

    def _settings(self) -> dict[str, Any]:
        conn = self.get_connection(self.search_conn_id)
        extra = conn.extra_dejson or {}
        flavor = str(extra.get("flavor") or _FLAVOR_BY_CONN_TYPE.get(conn.conn_type or "", "auto")).lower()
        auth = (conn.login, conn.password or "") if conn.login else None
        return {
            "url": connection_url(conn),
            "flavor": flavor,
            "auth": auth,
            "api_key": extra.get("api_key") or None,
            "verify_certs": parse_bool(extra.get("verify_certs") or None, "extra verify_certs", default=True),
            "ca_certs": extra.get("ca_certs") or None,
            "timeout": float(extra.get("timeout") or 30.0),
            "retry": self._retry_policy_of(conn),
        }

    @cached_property
    def client(self) -> SearchClient:
        settings = self._settings()
        url = settings.pop("url")
        flavor = settings.pop("flavor")
        return make_search_client(url, flavor, **settings)  # type: ignore[arg-type]

    def get_conn(self) -> SearchClient:
        """The :class:`~airflow_provider_kaapana.core.index.client.SearchClient` (created once)."""
        return self.client

    def get_client(self) -> SearchClient:
        return self.client

    def test_connection(self) -> tuple[bool, str]:
        """One ``GET /`` (the server's name and version): the search server speaks HTTP only, nothing is skipped."""
        try:
            client = self.get_conn()
            info = client.info()
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, f"search server: {type(exc).__name__}: {exc}"
        version = info.get("version", {})
        return True, f"{client.flavor} {version.get('number', '?')} at {client.url} answered"
