"""Keyed pseudonyms: HMAC-SHA256 UIDs (``2.25.<int>``), patient IDs and per-patient date shifts."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from functools import lru_cache

MIN_KEY_BYTES = 32
# dates move back by 1 to 3650 days, the same for every date of one patient
MAX_SHIFT_DAYS = 3650
# pseudonyms are pure functions of (key, value): a series repeats its study, series and frame of
# reference UIDs and its patient in every instance, so they are computed once (an HMAC is ~10 us)
_CACHE_SIZE = 4096


def check_key(key: bytes) -> bytes:
    """The key if it is at least 32 bytes; else ValueError (the key's value is never shown)."""
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the de-identification key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def _mac(key: bytes, purpose: bytes, value: str) -> bytes:
    return hmac.new(key, purpose + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()


@lru_cache(maxsize=_CACHE_SIZE)
def pseudonym_uid(key: bytes, uid: str) -> str:
    """``2.25.<integer of HMAC-SHA256(key, uid)>``: a valid UID of at most 64 characters.

    The 256-bit MAC is cut to 128 bits (as a UUID-derived 2.25 UID, PS3.5 B.2), so that the decimal
    integer (at most 39 digits) keeps the UID within 64 characters.
    """
    digest = _mac(key, b"uid", uid.strip())
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@lru_cache(maxsize=_CACHE_SIZE)
def pseudonym_patient_id(key: bytes, patient_id: str) -> str:
    """A keyed pseudonym for a patient ID (16 characters: fits SH, LO and PN)."""
    return "P" + _mac(key, b"patient", patient_id.strip()).hex()[:15].upper()


@lru_cache(maxsize=_CACHE_SIZE)
def date_shift_days(key: bytes, patient_id: str) -> int:
    """Days to subtract from every date of this patient (1..3650), from HMAC(key, patient id)."""
    digest = _mac(key, b"date-shift", patient_id.strip())
    return 1 + int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS


def shift_date(value: str, days: int) -> str | None:
    """A DA value ``YYYYMMDD`` moved back ``days``; None when it is not a full date."""
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None
    try:
        return (day - dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value moved back ``days`` (its date part; time and offset unchanged); None if it has no full date."""
    value = value.strip()
    shifted = shift_date(value[:8], days)
    if shifted is None:
        return None
    return shifted + value[8:]
