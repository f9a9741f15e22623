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
    DEFAULT_TIMEOUT,
    TIMEOUT_EXTRAS,
    DimsePeer,
    RetrieveResult,
    StoreResult,
)
from airflow_provider_kaapana.core.net.retry import DEFAULT_RETRY, RetryPolicy
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.exceptions import PacsError

CONN_TYPE = "kaapana_pacs"
RETRIEVE_METHODS = ("c-get", "c-move", "wado-rs")

# Declarative connection form (Airflow >= 3.2 reads these from provider info; older versions call
# get_connection_form_widgets / get_ui_field_behaviour, which are built from the same table).
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "called_ae": {
        "label": "Called AE title",
        "description": "The PACS's AE title (dcm4chee: DCM4CHEE, Orthanc: ORTHANC)",
        "schema": {"type": ["string", "null"], "default": "DCM4CHEE"},
    },
    "calling_ae": {
        "label": "Calling AE title",
        "description": "Our AE title as the PACS knows it",
        "schema": {"type": ["string", "null"], "default": "KAAPANA"},
    },
    "dicomweb_url": {
        "label": "DICOMweb base URL",
        "description": "e.g. http://HOST:8080/dcm4chee-arc/aets/DCM4CHEE/rs or http://HOST:8042/dicom-web",
        "schema": {"type": ["string", "null"]},
    },
    "auth_type": {
        "label": "HTTP auth",
        "description": "basic (login/password), bearer (password holds the token) or none",
        "schema": {"type": ["string", "null"], "default": "basic", "enum": ["basic", "bearer", "none"]},
    },
    "move_destination": {
        "label": "C-MOVE destination AE",
        "description": "AE title the PACS sends C-MOVE results to (must be configured in the PACS)",
        "schema": {"type": ["string", "null"]},
    },
    "move_port": {
        "label": "C-MOVE receive port",
        "description": "local port on which a retrieve by C-MOVE listens for the PACS",
        "schema": {"type": ["integer", "null"]},
    },
    "dimse_tls": {
        "label": "DIMSE over TLS",
        "description": "wrap associations in TLS (the PACS's TLS port)",
        "schema": {"type": ["boolean", "null"], "default": False},
    },
    "tls_ca_file": {
        "label": "TLS CA bundle",
        "description": "CA certificates to verify the PACS (DIMSE and HTTP)",
        "schema": {"type": ["string", "null"]},
    },
    "tls_cert_file": {
        "label": "TLS client certificate",
        "description": "PEM client certificate (DIMSE and HTTP)",
        "schema": {"type": ["string", "null"]},
    },
    "tls_key_file": {
        "label": "TLS client key",
        "description": "PEM key of the client certificate",
        "schema": {"type": ["string", "null"]},
    },
    "http_verify": {
        "label": "Verify HTTPS certificates",
        "schema": {"type": ["boolean", "null"], "default": True},
    },
    "retries": {
        "label": "Retries",
        "description": "retries of each operation after the first attempt (transient failures only)",
        "schema": {"type": ["integer", "null"], "default": DEFAULT_RETRY.retries},
    },
    "backoff": {
        "label": "Retry backoff (s)",
        "description": "seconds before the first retry, doubled for each further one",
        "schema": {"type": ["number", "null"], "default": DEFAULT_RETRY.backoff},
    },
    "max_backoff": {
        "label": "Longest retry wait (s)",
        "schema": {"type": ["number", "null"], "default": DEFAULT_RETRY.max_backoff},
    },
    "acse_timeout": {
        "label": "ACSE timeout (s)",
        "description": "how long to wait for the PACS to answer an association request or release",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT},
    },
    "dimse_timeout": {
        "label": "DIMSE timeout (s)",
        "description": "how long to wait for the answer to one C-STORE/C-FIND/C-GET/C-MOVE/C-ECHO",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT},
    },
    "network_timeout": {
        "label": "Network timeout (s)",
        "description": "an association without any byte from the PACS for this long is aborted",
        "schema": {"type": ["number", "null"], "default": DEFAULT_TIMEOUT},
    },
}
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema"],
    "relabeling": {"port": "DIMSE port", "login": "HTTP user", "password": "HTTP password or token"},
    "placeholders": {
        "host": "pacs.example.org",
        "port": "11112",
        "called_ae": "DCM4CHEE",
        "calling_ae": "KAAPANA",
        "dicomweb_url": "http://pacs.example.org:8080/dcm4chee-arc/aets/DCM4CHEE/rs",
        "auth_type": "basic",
    },
}


def declarative_connection_type_info() -> dict[str, Any]:
    """A ``connection-types`` entry with the declarative form fields (Airflow >= 3.2 style)."""
    return {
        "connection-type": CONN_TYPE,
        "hook-class-name": "airflow_provider_kaapana.hooks.pacs.PacsHook",
        "hook-name": PacsHook.hook_name,
        "conn-fields": CONN_FIELDS,
        "ui-field-behaviour": {
            "hidden-fields": UI_FIELD_BEHAVIOUR["hidden_fields"],
            "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
            "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
        },
    }


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
        """Extra fields of the connection form (for Airflow versions without declarative conn-fields)."""
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField

        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            kind = spec["schema"]["type"][0]
            label = lazy_gettext(spec["label"])
            if kind == "boolean":
                widgets[name] = BooleanField(label, default=spec["schema"].get("default", False))
            elif kind == "integer":
                widgets[name] = IntegerField(label, widget=BS3TextFieldWidget())
            else:
                widgets[name] = StringField(label, widget=BS3TextFieldWidget())
        return widgets

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return dict(UI_FIELD_BEHAVIOUR)

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
        """C-ECHO, plus a QIDO-RS probe when a DICOMweb URL is configured (no retries: answers fast)."""
        try:
            peer = dataclasses.replace(self.dimse_peer, retries=0)
            dimse.echo(peer)
            message = f"C-ECHO to {peer} succeeded"
            if self.has_dicomweb:
                web = self.dicomweb
                saved, web.retries = web.retries, 0
                try:
                    web.qido("studies", limit=1)
                finally:
                    web.retries = saved
                message += f"; QIDO-RS at {web.base_url} answered"
            return True, message
        except Exception as exc:  # noqa: BLE001 - the UI shows the message
            return False, str(exc)
