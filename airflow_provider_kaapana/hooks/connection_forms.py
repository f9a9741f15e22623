"""The connection forms of ``kaapana_pacs`` and ``kaapana_search``, declared once as plain data.

``get_provider_info`` hands these to Airflow (``conn-fields`` and ``ui-field-behaviour``: the Airflow 3
UI draws the form from them without importing a hook or any Flask code), and the hooks' legacy
``get_ui_field_behaviour`` / ``get_connection_form_widgets`` are built from the same tables. This module
imports nothing heavy, because Airflow loads provider info in every process.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_kaapana.core.net.retry import BULK_RETRY, DEFAULT_RETRY, RetryPolicy
from airflow_provider_kaapana.core.net.viewer import PRESETS as VIEWER_PRESETS

PACS_CONN_TYPE = "kaapana_pacs"
SEARCH_CONN_TYPE = "kaapana_search"


def _text(label: str, description: str | None = None, default: str | None = None, **schema: Any) -> dict:
    field: dict[str, Any] = {"label": label, "schema": {"type": ["string", "null"], **schema}}
    if default is not None:
        field["schema"]["default"] = default
    if description:
        field["description"] = description
    return field


def _typed(kind: str, label: str, description: str | None = None, default: Any = None) -> dict:
    field: dict[str, Any] = {"label": label, "schema": {"type": [kind, "null"]}}
    if default is not None:
        field["schema"]["default"] = default
    if description:
        field["description"] = description
    return field


def _retry_fields(policy: RetryPolicy) -> dict[str, dict[str, Any]]:
    return {
        "retries": _typed(
            "integer",
            "Retries",
            f"retries of each operation after the first attempt, transient failures only (default {policy.retries}; 0: try once)",
            policy.retries,
        ),
        "backoff": _typed(
            "number",
            "Retry backoff (s)",
            f"seconds before the first retry, doubled for each further one (default {policy.backoff})",
            policy.backoff,
        ),
        "max_backoff": _typed(
            "number",
            "Longest retry wait (s)",
            f"the longest single wait between two attempts (default {policy.max_backoff})",
            policy.max_backoff,
        ),
    }


PACS_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "called_ae": _text(
        "Called AE title", "The PACS's AE title (dcm4chee: DCM4CHEE, Orthanc: ORTHANC)", "DCM4CHEE"
    ),
    "calling_ae": _text("Calling AE title", "Our AE title as the PACS knows it", "KAAPANA"),
    "dicomweb_url": _text(
        "DICOMweb base URL",
        "Without /studies, e.g. http://HOST:8080/dcm4chee-arc/aets/DCM4CHEE/rs or http://HOST:8042/dicom-web. "
        "Empty: DIMSE only.",
    ),
    "auth_type": _text(
        "DICOMweb auth",
        "basic (login/password), bearer (the password field holds the token) or none",
        "basic",
        enum=["basic", "bearer", "none"],
    ),
    "move_destination": _text(
        "C-MOVE destination AE",
        "AE title the PACS sends C-MOVE results to (registered in the PACS; default: the calling AE)",
    ),
    "move_port": _typed("integer", "C-MOVE receive port", "Local port on which a C-MOVE retrieve listens"),
    "dimse_tls": _typed("boolean", "DIMSE over TLS", "Wrap associations in TLS (the PACS's TLS port)", False),
    "tls_ca_file": _text("TLS CA bundle", "CA certificates verifying the PACS (DIMSE and HTTPS)"),
    "tls_cert_file": _text("TLS client certificate", "PEM client certificate (DIMSE and HTTPS)"),
    "tls_key_file": _text("TLS client key", "PEM key of the client certificate"),
    "http_verify": _typed(
        "boolean",
        "Verify HTTPS certificates",
        "Off only for test systems with self-signed certificates",
        True,
    ),
    "viewer_url": _text(
        "Viewer URL",
        "A viewer link for the send/SEG/SR/index tasks and the series documents: a template with "
        "{study_uid}, {series_uid}, {sop_uid} (e.g. https://HOST/viewer?StudyInstanceUIDs={study_uid}), "
        "or the viewer's base URL when a viewer preset is chosen. Empty: no links.",
    ),
    "viewer": _text(
        "Viewer preset",
        f"custom (Viewer URL is the whole template), or {', '.join(VIEWER_PRESETS)} (Viewer URL is the "
        "viewer's base URL; the preset adds the path)",
        "custom",
        enum=["custom", *VIEWER_PRESETS],
    ),
    **_retry_fields(DEFAULT_RETRY),
    # DIMSE timeouts; the default is core.net.dimse.DEFAULT_TIMEOUT (not imported: it pulls pynetdicom)
    "acse_timeout": _typed(
        "number",
        "ACSE timeout (s)",
        "How long the PACS may take to answer an association request (default 30)",
        30.0,
    ),
    "dimse_timeout": _typed(
        "number",
        "DIMSE timeout (s)",
        "How long one C-STORE/C-FIND/C-GET/C-MOVE/C-ECHO may take (default 30)",
        30.0,
    ),
    "network_timeout": _typed(
        "number", "Network timeout (s)", "An association silent for this long is aborted (default 30)", 30.0
    ),
}
PACS_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "extra"],
    "relabeling": {
        "host": "DIMSE host",
        "port": "DIMSE port",
        "login": "DICOMweb user",
        "password": "DICOMweb password or bearer token",
    },
    "placeholders": {
        "host": "pacs.example.org",
        "port": "11112",
        "login": "empty with auth none",
        "called_ae": "DCM4CHEE",
        "calling_ae": "KAAPANA",
        "dicomweb_url": "http://pacs.example.org:8080/dcm4chee-arc/aets/DCM4CHEE/rs",
        "move_destination": "KAAPANA",
        "move_port": "11113",
        "tls_ca_file": "/etc/ssl/certs/pacs-ca.pem",
        "viewer_url": "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}",
    },
}

SEARCH_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "flavor": _text(
        "Server",
        "opensearch, elasticsearch, or auto (ask the server once, at the first task that needs it)",
        "auto",
        enum=["auto", "opensearch", "elasticsearch"],
    ),
    "use_ssl": _typed("boolean", "HTTPS", "Use https when Host is a bare name and Scheme is empty", False),
    "verify_certs": _typed("boolean", "Verify certificates", "Off only for test clusters", True),
    "ca_certs": _text("CA bundle", "CA certificates verifying the server"),
    "api_key": {
        "label": "API key",
        "description": "Instead of login/password (Elasticsearch: the base64 'id:key')",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "timeout": _typed("number", "Request timeout (s)", "Seconds per HTTP request (default 30)", 30.0),
    **_retry_fields(BULK_RETRY),
}
SEARCH_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["extra"],
    "relabeling": {"host": "Host or URL", "schema": "Scheme (http or https)"},
    "placeholders": {
        "host": "https://opensearch.example.org",
        "port": "9200",
        "schema": "https",
        "login": "admin",
        "ca_certs": "/etc/ssl/certs/search-ca.pem",
    },
}


def connection_type(
    conn_type: str, hook_class: str, hook_name: str, fields: dict[str, Any], behaviour: dict[str, Any]
) -> dict[str, Any]:
    """One ``connection-types`` entry of the provider info, with its declarative form."""
    return {
        "connection-type": conn_type,
        "hook-class-name": hook_class,
        "hook-name": hook_name,
        "conn-fields": fields,
        "ui-field-behaviour": behaviour,
    }


def legacy_field_behaviour(behaviour: dict[str, Any]) -> dict[str, Any]:
    """``get_ui_field_behaviour()``'s form of a ``ui-field-behaviour`` table (Airflow < 3.2)."""
    return {
        "hidden_fields": list(behaviour["hidden-fields"]),
        "relabeling": dict(behaviour["relabeling"]),
        "placeholders": dict(behaviour["placeholders"]),
    }


def legacy_form_widgets(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``get_connection_form_widgets()``'s WTForms fields for a ``conn-fields`` table (Airflow < 3.2 with
    the FAB UI; Flask is imported only here)."""
    from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, PasswordField, StringField

    widgets: dict[str, Any] = {}
    for name, spec in fields.items():
        kind = spec["schema"]["type"][0]
        label = lazy_gettext(spec["label"])
        if kind == "boolean":
            widgets[name] = BooleanField(label, default=spec["schema"].get("default", False))
        elif kind == "integer":
            widgets[name] = IntegerField(label, widget=BS3TextFieldWidget())
        elif spec["schema"].get("format") == "password":
            widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget())
        else:
            widgets[name] = StringField(label, widget=BS3TextFieldWidget())
    return widgets
