"""``PacsHook``: one Airflow connection for a PACS's DIMSE and DICOMweb interfaces.

The hook turns the connection into a :class:`~airflow_provider_kaapana.core.net.dimse.DimsePeer` and a
:class:`~airflow_provider_kaapana.core.net.dicomweb.DicomWebClient` and delegates every operation to them;
nothing here talks DICOM itself.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.net.dimse import (
    TIMEOUT_EXTRAS,
    DimsePeer,
    RetrieveResult,
    StoreResult,
)
from airflow_provider_kaapana.core.net.retry import DEFAULT_RETRY, RetryPolicy
from airflow_provider_kaapana.core.net.viewer import ViewerTemplate, ViewerUrlError, viewer_template
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.exceptions import PacsError
from airflow_provider_kaapana.hooks.connection_forms import (
    PACS_CONN_FIELDS,
    PACS_CONN_TYPE,
    PACS_UI_FIELD_BEHAVIOUR,
    legacy_field_behaviour,
    legacy_form_widgets,
)

CONN_TYPE = PACS_CONN_TYPE
RETRIEVE_METHODS = ("c-get", "c-move", "wado-rs")


class PacsHook(BaseHook):
    """A PACS reached by DIMSE (host, port, AE titles) and DICOMweb (base URL, basic/bearer auth).

    :param pacs_conn_id: connection of type ``kaapana_pacs``
    :param retries: retries of each operation (default: extra ``retries``, else 3)
    :param backoff: seconds before the first retry, doubled each time (default: extra ``backoff``, else 1)
    :param max_backoff: the longest wait between retries (default: extra ``max_backoff``, else 60)
    """

    conn_name_attr = "pacs_conn_id"
    default_conn_name = "kaapana_pacs_default"
    conn_type = CONN_TYPE
    hook_name = "Kaapana PACS (DIMSE + DICOMweb)"

    def __init__(
        self,
        pacs_conn_id: str = default_conn_name,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pacs_conn_id = pacs_conn_id
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy of every operation: the arguments, else the connection's ``retries``,
        ``backoff`` and ``max_backoff`` extras, else 3 retries after 1, 2, 4 s."""
        from_connection = RetryPolicy.from_extra(
            self.connection.extra_dejson, DEFAULT_RETRY, prefix=f"extra__{CONN_TYPE}__"
        )
        return from_connection.updated(
            retries=self._retries, backoff=self._backoff, max_backoff=self._max_backoff
        )

    @property
    def retries(self) -> int:
        """Retries per operation: the argument, else the connection's ``retries`` extra, else 3."""
        return self.retry_policy.retries

    @property
    def backoff(self) -> float:
        """Seconds before the first retry (doubled each time): argument, ``backoff`` extra, else 1."""
        return self.retry_policy.backoff

    # --- connection form -------------------------------------------------------------------------

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields for Airflow < 3.2 (3.2+ reads ``conn-fields`` from the provider info)."""
        return legacy_form_widgets(PACS_CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return legacy_field_behaviour(PACS_UI_FIELD_BEHAVIOUR)

    # --- configuration ---------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.pacs_conn_id)

    def _extra(self, name: str, default: Any = None) -> Any:
        extra = self.connection.extra_dejson
        for key in (name, f"extra__{CONN_TYPE}__{name}"):
            if extra.get(key) not in (None, ""):
                return extra[key]
        return default

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self._extra("tls_ca_file"))
        if self._extra("tls_cert_file"):
            context.load_cert_chain(self._extra("tls_cert_file"), self._extra("tls_key_file"))
        return context

    @cached_property
    def dimse_peer(self) -> DimsePeer:
        """The PACS as a DIMSE peer (``called_ae@host:port``)."""
        conn = self.connection
        if not conn.host:
            raise PacsError(f"connection {self.pacs_conn_id!r} has no host")
        policy = self.retry_policy
        return DimsePeer(
            host=conn.host,
            port=int(conn.port or 11112),
            called_ae=str(self._extra("called_ae", "DCM4CHEE")),
            calling_ae=str(self._extra("calling_ae", "KAAPANA")),
            tls=self._ssl_context()
            if parse_bool(self._extra("dimse_tls") or None, "extra dimse_tls", default=False)
            else None,
            retries=policy.retries,
            backoff=policy.backoff,
            max_backoff=policy.max_backoff,
            **self._timeouts(),
        )

    def _timeouts(self) -> dict[str, float]:
        """The ``acse_timeout``, ``dimse_timeout`` and ``network_timeout`` extras that are set (seconds)."""
        timeouts: dict[str, float] = {}
        for name in TIMEOUT_EXTRAS:
            value = self._extra(name)
            if value is not None:
                try:
                    timeouts[name] = float(value)
                except (TypeError, ValueError):
                    raise PacsError(
                        f"connection {self.pacs_conn_id!r}: extra {name} must be seconds, not {value!r}"
                    ) from None
        return timeouts

    @cached_property
    def dicomweb(self) -> DicomWebClient:
        """The PACS's DICOMweb client; :class:`PacsError` when the connection has no DICOMweb URL."""
        url = self._extra("dicomweb_url")
        if not url:
            raise PacsError(f"connection {self.pacs_conn_id!r} has no dicomweb_url")
        conn = self.connection
        auth_type = str(self._extra("auth_type", "basic")).lower()
        auth: tuple[str, str] | str | None = None
        if auth_type == "basic" and conn.login:
            auth = (conn.login, conn.password or "")
        elif auth_type == "bearer" and conn.password:
            auth = conn.password
        verify: bool | str = parse_bool(self._extra("http_verify") or None, "extra http_verify", default=True)
        if verify and self._extra("tls_ca_file"):
            verify = self._extra("tls_ca_file")
        cert = None
        if self._extra("tls_cert_file"):
            cert = (self._extra("tls_cert_file"), self._extra("tls_key_file"))
        policy = self.retry_policy
        return DicomWebClient(
            url,
            auth=auth,
            verify=verify,
            cert=cert,
            retries=policy.retries,
            backoff=policy.backoff,
            max_backoff=policy.max_backoff,
        )

    @cached_property
    def viewer(self) -> ViewerTemplate | None:
        """The viewer URL template of the ``viewer_url`` (and ``viewer`` preset) extras; None when unset.

        A template naming an unknown placeholder (or an unknown preset) is a :class:`PacsError`.
        """
        try:
            return viewer_template(self._extra("viewer_url"), self._extra("viewer"))
        except ViewerUrlError as exc:
            raise PacsError(f"connection {self.pacs_conn_id!r}: {exc}") from None

    @property
    def has_dicomweb(self) -> bool:
        """Whether the connection names a DICOMweb base URL."""
        return bool(self._extra("dicomweb_url"))

    def get_conn(self) -> DimsePeer:
        return self.dimse_peer

    # --- DIMSE -----------------------------------------------------------------------------------

    def echo(self) -> None:
        dimse.echo(self.dimse_peer)

    def find(
        self,
        level: str = "study",
        query: Mapping[str, Any] | None = None,
        return_keys: Sequence[str] | None = None,
    ) -> list[Any]:
        """C-FIND at study/series/instance level (pydicom Datasets)."""
        return dimse.find(self.dimse_peer, level, query, return_keys)

    def get(
        self,
        dest_dir: str | Path,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uids: Sequence[str] | None = None,
    ) -> RetrieveResult:
        return dimse.get(
            self.dimse_peer, dest_dir, study_instance_uid, series_instance_uid, sop_instance_uids
        )

    def move(
        self,
        dest_dir: str | Path | None,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uids: Sequence[str] | None = None,
        move_destination: str | None = None,
        listen_port: int | None = None,
    ) -> RetrieveResult:
        """C-MOVE into ``dest_dir`` (a temporary SCP titled ``move_destination`` on ``listen_port``,
        both defaulting to the connection's extras), or to a running node when ``dest_dir`` is None."""
        destination = move_destination or self._extra("move_destination") or self.dimse_peer.calling_ae
        port = listen_port or self._extra("move_port")
        if dest_dir is not None and not port:
            raise PacsError(f"C-MOVE into a folder needs move_port in connection {self.pacs_conn_id!r}")
        return dimse.move(
            self.dimse_peer,
            destination,
            study_instance_uid,
            series_instance_uid,
            sop_instance_uids,
            dest_dir=dest_dir,
            listen_port=int(port) if dest_dir is not None else None,
        )

    def store(self, paths: Iterable[str | Path], raise_on_failure: bool = True) -> list[StoreResult]:
        """C-STORE many files over one association, per-file status."""
        return dimse.store(self.dimse_peer, paths, raise_on_failure=raise_on_failure)

    # --- DICOMweb --------------------------------------------------------------------------------

    def qido(
        self, level: str = "studies", query: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[dict]:
        return self.dicomweb.qido(level, query, **kwargs)

    def wado_series(
        self, study_instance_uid: str, series_instance_uid: str, dest_dir: str | Path
    ) -> RetrieveResult:
        return self.dicomweb.retrieve_series(study_instance_uid, series_instance_uid, dest_dir)

    def stow(
        self, paths: Iterable[str | Path], raise_on_failure: bool = True, batch_size: int = 50
    ) -> list[StoreResult]:
        return self.dicomweb.stow(paths, raise_on_failure=raise_on_failure, batch_size=batch_size)

    # --- by method -------------------------------------------------------------------------------

    def retrieve_series(
        self, study_instance_uid: str, series_instance_uid: str, dest_dir: str | Path, method: str = "c-get"
    ) -> RetrieveResult:
        """Fetch one series into ``dest_dir/<SOPInstanceUID>.dcm`` by ``c-get``, ``c-move`` or ``wado-rs``."""
        method = method.lower()
        if method == "c-get":
            return self.get(dest_dir, study_instance_uid, series_instance_uid)
        if method == "c-move":
            return self.move(dest_dir, study_instance_uid, series_instance_uid)
        if method == "wado-rs":
            return self.wado_series(study_instance_uid, series_instance_uid, dest_dir)
        raise ValueError(f"retrieve method {method!r} is not one of {', '.join(RETRIEVE_METHODS)}")

    def test_connection(self) -> tuple[bool, str]:
        """Check every interface the connection configures, once each, without retries.

        DIMSE (when a host is set): a C-ECHO. DICOMweb (when ``dicomweb_url`` is set): a QIDO-RS probe
        (``/studies?limit=1``). The message names each check's result and each interface skipped; the
        answer is ``ok`` only when at least one was checked and every check passed.
        """
        results: list[str] = []
        failed = checked = 0
        for interface, configured, why_not, probe in (
            ("DIMSE", bool(self.connection.host), "no host", self._probe_dimse),
            ("DICOMweb", self.has_dicomweb, "no dicomweb_url", self._probe_dicomweb),
        ):
            if not configured:
                results.append(f"{interface} skipped ({why_not})")
                continue
            checked += 1
            try:
                results.append(probe())
            except Exception as exc:  # noqa: BLE001 - the UI shows the message
                failed += 1
                results.append(f"{interface} failed: {exc}")
        return checked > 0 and failed == 0, "; ".join(results)

    def _probe_dimse(self) -> str:
        peer = dataclasses.replace(self.dimse_peer, retries=0)
        dimse.echo(peer)
        return f"C-ECHO to {peer} succeeded"

    def _probe_dicomweb(self) -> str:
        web = self.dicomweb
        saved, web.retries = web.retries, 0
        try:
            web.qido("studies", limit=1)
        finally:
            web.retries = saved
        return f"QIDO-RS at {web.base_url} answered"
