"""DICOM UID validation: a UID is checked before it is stored, indexed or becomes part of a path.

Two rules. The **lenient** one (the default) is what intake accepts: components of digits separated by
dots, at most 64 characters. Legacy data carries components with a leading zero (``1.2.03.4``); such
files are stored, indexed and converted like any other. The lenient character set (digits and dots, no
empty component) can never spell ``..``, a separator or an absolute path, so a lenient UID is also a
safe path component. The **strict** rule (PS3.5 9.1: no leading zero in a multi-digit component) is for
UIDs we make or are asked for in a form (``UID_PATTERN`` is the DAG forms' JSON-schema pattern).
"""

from __future__ import annotations

import re
from pathlib import Path

from airflow_provider_kaapana.core.paths import path_under
from airflow_provider_kaapana.exceptions import InvalidUIDError

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component,
# at most 64 characters in all.
# UID_PATTERN is also the JSON-schema pattern of the DAG forms' UID fields.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
_UID_RE = re.compile(UID_PATTERN)
# legacy data: the same, leading zeros allowed
_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object, *, strict: bool = False) -> bool:
    """Digits and dots, at most 64 characters; ``strict``: no leading zero in a component either."""
    if not isinstance(value, str) or len(value) > MAX_UID_LENGTH:
        return False
    return bool((_UID_RE if strict else _LENIENT_UID_RE).match(value))


def validate_uid(value: object, what: str = "UID", *, strict: bool = False) -> str:
    """Return ``value`` stripped of DICOM padding if it is a valid UID, else raise :class:`InvalidUIDError`.

    ``what`` names the value and where it came from (``"SeriesInstanceUID of /in/x.dcm"``).
    """
    if isinstance(value, str):
        value = value.strip().rstrip("\x00")
    if not is_valid_uid(value, strict=strict):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else f"{value[:60]!r}..."
        length = f" ({len(value)} characters)" if isinstance(value, str) and len(value) > 64 else ""
        rule = "no leading zeros, " if strict else ""
        raise InvalidUIDError(
            f"{what} {shown}{length} is not a valid DICOM UID (digits and dots, {rule}at most 64 characters)"
        )
    return value  # type: ignore[return-value]


def uid_path(base: str | Path, *uids: str, what: str = "UID") -> Path:
    """``base/uid1/uid2/...`` after validating every UID, so no UID can escape ``base``."""
    return path_under(base, *(validate_uid(uid, what) for uid in uids), source=what)
