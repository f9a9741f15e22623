"""DICOM UID validation: a UID is checked before it becomes part of a filesystem path."""

from __future__ import annotations

import re
from pathlib import Path

from airflow_provider_kaapana.exceptions import InvalidUIDError

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component,
# at most 64 characters in all.
# UID_PATTERN is also the JSON-schema pattern of the DAG forms' UID fields.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
_UID_RE = re.compile(UID_PATTERN)


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


def validate_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` stripped of DICOM padding if it is a valid UID, else raise :class:`InvalidUIDError`."""
    if isinstance(value, str):
        value = value.strip().rstrip("\x00")
    if not is_valid_uid(value):
        raise InvalidUIDError(
            f"{what} {value!r} is not a valid DICOM UID (digits and dots, at most 64 characters)"
        )
    return value  # type: ignore[return-value]


def uid_path(base: str | Path, *uids: str) -> Path:
    """``base/uid1/uid2/...`` after validating every UID, so no UID can escape ``base``."""
    path = Path(base)
    for uid in uids:
        path = path / validate_uid(uid)
    return path
