"""The de-identification site key from an Airflow connection: the one place the operator and the
listener read it, through Airflow's own secrets backends. The key is never logged or put in a message.

Connection (any type, default id ``kaapana_deid_key``): *password* = the site key (at least 32 bytes),
or extra ``key`` when the password is empty; extra ``reid_public_key`` = the X25519 public key that
re-identification maps are sealed to. Resolved by ``airflow.sdk.BaseHook.get_connection``: in a task
through the worker's backends; in another process (``kaapana listen``) from ``AIRFLOW_CONN_<ID>`` (URI or
JSON) and the secrets backend configured in ``[secrets] backend`` (Vault, AWS...), and the metadata
database only where Airflow's server context is set (``_AIRFLOW_PROCESS_CONTEXT=server``).
"""

from __future__ import annotations

from typing import Any

from airflow_provider_kaapana.core.deid.pseudonyms import check_key
from airflow_provider_kaapana.exceptions import KaapanaError

DEFAULT_KEY_CONN_ID = "kaapana_deid_key"


def _connection(conn_id: str) -> Any:  # noqa: ANN401 - Airflow's Connection
    try:
        from airflow.sdk import BaseHook
    except ImportError as exc:  # kaapana listen --deid-key-conn in an install without Airflow
        raise KaapanaError(
            f"connection {conn_id!r} (the de-identification key, --deid-key-conn) needs Apache Airflow "
            f"installed ({exc.name or 'airflow'} cannot be imported), or use --deid-key-file for development"
        ) from None

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - a backend's message may quote what it parsed
        if type(exc).__name__ == "AirflowNotFoundException":
            env = "AIRFLOW_CONN_" + conn_id.upper()
            raise KaapanaError(
                f"connection {conn_id!r} (the de-identification key) is not defined: set {env} or "
                "add it to the secrets backend"
            ) from None
        raise KaapanaError(
            f"connection {conn_id!r} (the de-identification key) cannot be read: {type(exc).__name__}"
        ) from None


def site_key(conn_id: str = DEFAULT_KEY_CONN_ID) -> bytes:
    """The site key: the password of connection ``conn_id`` (else its extra ``key``), checked to be at
    least 32 bytes. Raises :class:`KaapanaError` naming the connection, never the value."""
    conn = _connection(conn_id)
    secret = conn.password
    if not secret:
        try:
            secret = (conn.extra_dejson or {}).get("key")
        except Exception:  # noqa: BLE001 - extra that is not JSON: no key there
            secret = None
    if not secret or not isinstance(secret, str):
        raise KaapanaError(
            f"connection {conn_id!r} holds no password or extra 'key' (the de-identification key)"
        )
    try:
        return check_key(secret.encode("utf-8"))
    except ValueError as exc:
        raise KaapanaError(f"connection {conn_id!r}: {exc}") from None


def reid_public_key(conn_id: str = DEFAULT_KEY_CONN_ID) -> str | None:
    """The public key re-identification maps are sealed to: extra ``reid_public_key`` (None if absent)."""
    return (_connection(conn_id).extra_dejson or {}).get("reid_public_key") or None
