"""One search document per DICOM series, built from the headers of ALL its instances.

Field names are DICOM keywords and values are typed from the VR (see :mod:`.search_template` for the
matching index template). Bulk binary values (pixel data, OB/OW/UN...) are never read into a document.
A malformed value never fails the document: its raw text goes to ``kaapana.invalid.<Keyword>`` and a
problem naming the file and keyword is returned. Derived fields live under ``kaapana.*``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.dicom.elements import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    ElementWalker,
    TruncatedDatasetError,
    read_walkable_start,
)
from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.net.viewer import ViewerTemplate
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.exceptions import InvalidDicomError, InvalidUIDError

log = logging.getLogger(__name__)

# Values of these VRs are bulk binary data (or of unknown encoding): never indexed.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
INT_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV", "US or SS"})
# ASCII-only VRs we parse from the raw bytes ourselves (cheap, and a bad value cannot raise in pydicom)
_RAW_TEXT_VRS = frozenset({"DA", "DT", "TM", "DS", "IS", "AS"})

DEFAULT_PRIVATE_KEY = "private"
MAX_SEQUENCE_DEPTH = 4
MAX_SEQUENCE_ITEMS = 64
MAX_TEXT_CHARS = 4096

# Curated modality from the SOP class, where Modality is missing or generic.
_SOP_CLASS_MODALITY = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",
    "1.2.840.10008.5.1.4.1.1.128": "PT",
    "1.2.840.10008.5.1.4.1.1.130": "PT",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.104.1": "DOC",
}
_MODALITY_ALIASES = {"PET": "PT", "MRI": "MR", "CTA": "CT", "RTSS": "RTSTRUCT"}

_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?([+-]\d{4})?$")
_AS_RE = re.compile(r"^(\d{3})([DWMY])$")


@dataclass
class SeriesDocument:
    """A built document: ``doc_id`` is the SeriesInstanceUID, ``problems`` name file and keyword."""

    doc_id: str
    document: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    thumbnail_path: str | None = None  # the PNG written into the run workspace
    thumbnail_refused: str | None = None  # why the series has no thumbnail


# --------------------------------------------------------------------------------------------------
# value conversion


def _iso_date(text: str) -> str:
    m = _DA_RE.match(text)
    if not m:
        raise ValueError("not a DICOM date (YYYYMMDD)")
    year, month, day = (int(x) for x in m.groups())
    return _dt.date(year, month, day).isoformat()


def _iso_time(text: str) -> str:
    m = _TM_RE.match(text)
    if not m:
        raise ValueError("not a DICOM time (HHMMSS.FFFFFF)")
    hh, mm, ss, frac = m.groups()
    hour, minute, second = int(hh), int(mm or 0), int(ss or 0)
    if hour > 23 or minute > 59 or second > 60:
        raise ValueError("time out of range")
    out = f"{hour:02d}:{minute:02d}:{min(second, 59):02d}"
    return f"{out}.{frac}" if frac else out


def _iso_datetime(text: str) -> str:
    m = _DT_RE.match(text)
    if not m:
        raise ValueError("not a DICOM date-time (YYYYMMDDHHMMSS.FFFFFF&ZZXX)")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    value = _dt.datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        min(int(second or 0), 59),
        int((frac or "0").ljust(6, "0")),
    )
    out = value.isoformat(timespec="milliseconds")
    if offset:
        out += f"{offset[:3]}:{offset[3:]}"
    return out


def _number(text: str, vr: str) -> float | int:
    if vr in INT_VRS:
        value = float(text) if vr == "IS" and "." in text else int(text)
        if vr == "IS" and isinstance(value, float):
            if not value.is_integer():
                raise ValueError("IS value is not an integer")
            value = int(value)
        return value
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


_CONVERTERS = {"DA": _iso_date, "TM": _iso_time, "DT": _iso_datetime}


def _split_raw(raw: bytes) -> list[str]:
    text = raw.decode("latin-1").strip("\x00 ")
    return [part.strip("\x00 ") for part in text.split("\\")]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _collapse(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


# raw_object: what converts from element bytes exactly as pydicom's value does after dataset_object's strip
_RAW_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_RAW_STRING_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UI", "UR", "UT"})
_SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UR", "UT"})  # pydicom splits the others on backslashes
# ASCII without ESC (ISO 2022 code extensions); AE (pydicom strips all whitespace) and UR also without
# control characters, which pydicom's str.strip()/rstrip() would remove and dataset_object's strip keeps
_PLAIN_TEXT = re.compile(rb"[\x00-\x1a\x1c-\x7f]*")
_CONTROL = re.compile(rb"[\x01-\x1f\x7f]")
# character sets in which ASCII bytes decode as ASCII in every codec pydicom picks for them
_ASCII_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6", "ISO 2022 IR 100"})
_REFUSED = object()


def _ascii_charset(raw: bytes) -> bool:
    try:
        names = raw.decode("ascii").split("\\")
    except UnicodeDecodeError:
        return False
    return all(name.strip("\x00 ") in _ASCII_CHARSETS for name in names)


def _raw_numbers(raw: bytes, vr: str) -> Any:
    """Binary numbers as dataset_object gives pydicom's values: None when empty, ``_REFUSED`` for a length
    that is no multiple of the value size or a value that is not finite (pydicom's way reports those)."""
    if not raw:
        return None
    fmt = _RAW_NUMBER_FORMATS[vr]
    size = struct.calcsize(fmt)
    if len(raw) % size:
        return _REFUSED
    numbers = struct.unpack(f"<{len(raw) // size}{fmt}", raw)
    if vr in FLOAT_VRS and not all(math.isfinite(n) for n in numbers):
        return _REFUSED
    return _collapse(list(numbers))


class _Converter:
    """Turns one dataset into a JSON object; collects invalid raw values and problems."""

    def __init__(self, source_name: str, private_key: str) -> None:
        self.source_name = source_name
        self.private_key = private_key
        self.invalid: dict[str, str] = {}
        self.problems: list[str] = []

    def problem(self, keyword: str, message: str) -> None:
        self.problems.append(f"{self.source_name}: {keyword}: {message}")

    def raw_text_value(self, raw_value: Any, vr: str, path: str) -> Any:
        """The JSON value of a DA/DT/TM/DS/IS/AS element from its raw bytes (None: empty or invalid)."""
        if raw_value is None:
            return None
        if isinstance(raw_value, bytes):
            parts = [p for p in _split_raw(raw_value) if p != ""]
        else:  # already converted by pydicom (e.g. a dataset built in memory)
            parts = [str(p).strip() for p in _as_list(raw_value) if str(p).strip() != ""]
        if not parts:
            return None
        out: list[Any] = []
        for part in parts:
            try:
                if vr in _CONVERTERS:
                    out.append(_CONVERTERS[vr](part))
                elif vr in ("DS", "IS"):
                    out.append(_number(part, vr))
                else:  # AS
                    if not _AS_RE.match(part):
                        raise ValueError("not a DICOM age string (nnnD/W/M/Y)")
                    out.append(part)
            except (ValueError, OverflowError) as exc:
                raw_text = "\\".join(parts)
                self.invalid[path] = raw_text[:MAX_TEXT_CHARS]
                self.problem(path, f"invalid {vr} value {raw_text[:64]!r}: {exc}")
                return None
        return _collapse(out)

    def element_value(self, ds: Dataset, tag: Any, vr: str, keyword: str, path: str, depth: int) -> Any:
        """The JSON value of one element, or ``None`` when it is empty, binary or invalid."""
        if vr in _RAW_TEXT_VRS:
            return self.raw_text_value(getattr(ds.get_item(tag), "value", None), vr, path)

        try:
            elem = ds[tag]
        except Exception as exc:  # pydicom could not decode the value at all
            raw = ds.get_item(tag)
            raw_value = getattr(raw, "value", b"")
            if isinstance(raw_value, bytes):
                self.invalid[path] = raw_value.decode("latin-1", "replace")[:MAX_TEXT_CHARS]
            self.problem(path, f"undecodable {vr} value: {exc}")
            return None
        value = elem.value
        if value is None or value == "" or value == b"":
            return None
        actual_vr = elem.VR or vr
        if actual_vr in BINARY_VRS or isinstance(value, (bytes, bytearray)):
            return None
        if actual_vr == "SQ":
            if depth >= MAX_SEQUENCE_DEPTH:
                return None
            items = [self.dataset_object(item, path, depth + 1) for item in list(value)[:MAX_SEQUENCE_ITEMS]]
            items = [item for item in items if item]
            return items or None
        values = _as_list(value)
        if actual_vr in FLOAT_VRS or actual_vr in INT_VRS:
            out_numbers: list[Any] = []
            for v in values:
                try:
                    number = float(v) if actual_vr in FLOAT_VRS else int(v)
                except (TypeError, ValueError, OverflowError) as exc:
                    self.invalid[path] = str(value)[:MAX_TEXT_CHARS]
                    self.problem(path, f"invalid {actual_vr} value {str(v)[:64]!r}: {exc}")
                    return None
                if isinstance(number, float) and not math.isfinite(number):
                    self.invalid[path] = str(value)[:MAX_TEXT_CHARS]
                    self.problem(path, f"non-finite {actual_vr} value {v!r}")
                    return None
                out_numbers.append(number)
            return _collapse(out_numbers)
        if actual_vr == "AT":
            return _collapse([f"{int(v):08X}" for v in values])
        texts = [str(v).strip("\x00 ")[:MAX_TEXT_CHARS] for v in values]
        texts = [t for t in texts if t != ""]
        return _collapse(texts) if texts else None

    def raw_object(self, path: Path) -> dict[str, Any] | None:
        """:meth:`dataset_object` of a plain file's top level, from its element bytes instead of pydicom's
        dataset; None (read it with pydicom) for anything but what converts the same way both ways: a
        little-endian Part-10 file of public, named elements of the VRs in ``_RAW_*`` (no sequence, no
        private or ambiguous VR, no UN/AT), ASCII values, an ASCII-compatible SpecificCharacterSet.

        Only the first instance of a series becomes its document, but reading and converting it with
        pydicom was a third of the client's CPU time for 20-slice series (0.21 of 0.69 CPU-s per 250
        series, docs/guides/benchmarks_index.rst). ``test_index_fast`` builds documents both ways.
        """
        try:
            with open(path, "rb") as fh:
                head = read_walkable_start(fh)
                if head is None:
                    return None
                data, start, syntax = head
                implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
                try:
                    elements = list(ElementWalker(data, implicit, stop=_PIXEL_TAGS).spans(start))
                except TruncatedDatasetError:
                    data += fh.read()
                    elements = list(ElementWalker(data, implicit, stop=_PIXEL_TAGS).spans(start))
        except (OSError, ValueError, UnicodeDecodeError, InvalidDicomError):
            return None
        obj: dict[str, Any] = {}
        for tag, raw_vr, _start, value_at, end, undefined_length in elements:
            group = tag >> 16
            if undefined_length or group & 1:
                return None  # sequences, private elements: pydicom
            if not tag & 0xFFFF or group == 0x0002 or tag == 0x7FE00010:
                continue  # group lengths, file meta, pixel data (as dataset_object)
            if raw_vr is None or raw_vr == b"UN":
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    return None
            else:
                vr = raw_vr.decode("ascii")
            if vr in BINARY_VRS:
                continue
            keyword = keyword_for_tag(tag)
            if not keyword:
                return None
            raw = data[value_at:end]
            if tag == 0x00080005 and not _ascii_charset(raw):
                return None
            if vr in _RAW_TEXT_VRS:
                if end - value_at > _DEFER_SIZE:
                    return None  # pydicom defers it and hands dataset_object its converted value
                value = self.raw_text_value(raw, vr, keyword)
            elif vr in _RAW_NUMBER_FORMATS:
                value = _raw_numbers(raw, vr)
                if value is _REFUSED:
                    return None
            elif vr in _RAW_STRING_VRS:
                if not _PLAIN_TEXT.fullmatch(raw) or (vr in ("AE", "UR") and _CONTROL.search(raw)):
                    return None
                text = raw.decode("ascii")
                parts = [text] if vr in _SINGLE_VALUE_VRS else text.split("\\")
                texts = [t for t in (p.strip("\x00 ")[:MAX_TEXT_CHARS] for p in parts) if t != ""]
                value = _collapse(texts) if texts else None
            else:
                return None  # SQ, AT, an ambiguous VR ("US or SS"), UN of an unknown tag: pydicom
            if value is not None:
                obj[keyword] = value
        return obj

    def dataset_object(self, ds: Dataset, prefix: str, depth: int) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        private: dict[str, Any] = {}
        for tag in ds.keys():
            if tag.element == 0 or tag.group in (0x0002, 0xFFFE) or tag == 0x7FE00010:
                continue  # group lengths, file meta, item delimiters, pixel data
            raw = ds.get_item(tag)
            vr = getattr(raw, "VR", None)
            keyword = "" if tag.is_private else keyword_for_tag(tag)
            if not vr or vr == "UN":
                try:
                    vr = dictionary_VR(tag)
                except KeyError:
                    vr = "UN"
            if vr in BINARY_VRS:
                continue
            tag_key = f"{tag:08X}"
            path = f"{prefix}.{keyword or tag_key}" if prefix else (keyword or tag_key)
            value = self.element_value(ds, tag, vr, keyword or tag_key, path, depth)
            if value is None:
                continue
            if keyword:
                obj[keyword] = value
            else:
                # private and unknown tags: stored as text, keyed by tag, under one object
                if vr == "SQ":
                    # private sequences: kept as JSON text so the private object stays flat text
                    private[tag_key] = json.dumps(value, sort_keys=True)[:MAX_TEXT_CHARS]
                else:
                    private[tag_key] = [str(v) for v in value] if isinstance(value, list) else str(value)
        if private:
            obj[self.private_key] = private
        return obj


# --------------------------------------------------------------------------------------------------
# reading


def read_header(path: Path) -> Dataset:
    """The header of one DICOM file (no pixel data); raises :class:`InvalidDicomError` naming it."""
    forced = False
    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024)
        except PydicomInvalidDicomError:
            # no preamble/file meta (raw dataset): accepted only if it carries a SeriesInstanceUID
            forced = True
            ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024, force=True)
    except (PydicomInvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise InvalidDicomError(f"{path}: not a DICOM file ({exc})") from exc
    except Exception as exc:  # pydicom raises assorted errors on corrupt files
        raise InvalidDicomError(f"{path}: not a DICOM file ({type(exc).__name__}: {exc})") from exc
    if 0x0020000E not in ds:
        if forced:
            raise InvalidDicomError(f"{path}: not a DICOM file (no DICM preamble and no DICOM header)")
        raise InvalidDicomError(f"{path}: has no SeriesInstanceUID (0020,000E)")
    return ds


# dcmread(stop_before_pixels=True) stops at the first of these; pydicom defers values longer than this
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_DEFER_SIZE = 1024
# sequences that segment_labels() reads item by item: files holding them go to pydicom
_LABEL_SEQUENCES = frozenset({0x00620002, 0x30060020})


class RawHeader:
    """The top-level elements of one file as :func:`read_raw_header` found them: ``values`` maps each tag
    to its raw value bytes as ``dcmread(stop_before_pixels=True, defer_size=1024)`` holds them (None for a
    value over 1024 bytes); an undefined-length element holds its whole encoded items, delimiter
    included (its tag in ``undefined_length``), so two are equal when their encodings are.
    ``transfer_syntax_uid`` from the file meta."""

    __slots__ = ("transfer_syntax_uid", "undefined_length", "values")

    def __init__(
        self, values: dict[int, bytes | None], transfer_syntax_uid: str, undefined_length: frozenset[int]
    ) -> None:
        self.values = values
        self.transfer_syntax_uid = transfer_syntax_uid
        self.undefined_length = undefined_length

    def __contains__(self, tag: object) -> bool:
        return tag in self.values


def read_raw_header(path: Path, chunk: int = 1 << 16) -> RawHeader | None:
    """The header of a little-endian Part-10 file walked by the shared element walker, or None for anything
    else (no preamble, big endian, deflated, a SEG/RTSTRUCT whose labels are read, no SeriesInstanceUID, a
    structure the walker refuses): :func:`read_header` (pydicom) reads those, with its error messages.

    Indexing reads every instance's header for the aggregates and the varying keywords, but only the first
    instance's becomes the document: pydicom's ``dcmread`` spent two thirds of the indexing time building
    datasets of the others (measured: 5,000 instances, see docs/guides/benchmarks_index.rst).
    """
    try:
        with open(path, "rb") as fh:
            head = read_walkable_start(fh, chunk)
            if head is None:
                return None
            data, start, syntax = head
            implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
            walker = ElementWalker(data, implicit, stop=_PIXEL_TAGS)
            try:  # pydicom never defers undefined-length values: the walker keeps them whole
                values, undefined = walker.top_level_values(start, _DEFER_SIZE)
                # a first chunk that ends exactly between two elements walks cleanly: only a stop tag
                # or the end of the file proves that nothing was left unread
                complete = walker.stopped is not None or len(data) < chunk
            except TruncatedDatasetError:
                complete = False
            if not complete:
                data += fh.read()  # the header goes on past the first chunk: the whole file
                walker = ElementWalker(data, implicit, stop=_PIXEL_TAGS)
                values, undefined = walker.top_level_values(start, _DEFER_SIZE)
    except (OSError, ValueError, UnicodeDecodeError, InvalidDicomError):
        return None
    if 0x0020000E not in values or not _LABEL_SEQUENCES.isdisjoint(values):
        return None
    return RawHeader(values, syntax, frozenset(undefined))


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """Every file below folders (any name; DICOMDIR media by their records); a missing path stays, to be
    reported as unreadable with the others."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(dicom_files(p) if p.exists() else [p])
    return files


# --------------------------------------------------------------------------------------------------
# aggregates


@functools.cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _raw(ds: Dataset, keyword: str) -> Any:
    """A value read straight from the raw element bytes (text VRs), without pydicom's conversion.

    The aggregates read a handful of attributes of every instance; converting them through pydicom
    costs more than parsing the whole header. Returns a str, a list of str for multi-values, the
    already-converted value when pydicom converted it before, or None.
    """
    tag = _tag(keyword)
    if isinstance(ds, RawHeader):
        value = ds.values.get(tag)
        if value is None:
            return None
        parts = _split_raw(value)
        return parts[0] if len(parts) == 1 else parts
    if tag not in ds:
        return None
    value = getattr(ds.get_item(tag), "value", None)
    if isinstance(value, bytes):
        parts = _split_raw(value)
        return parts[0] if len(parts) == 1 else parts
    return value


def _raw_values(ds: Dataset) -> Iterable[tuple[int, Any]]:
    """``(tag, raw value)`` of every top-level element without converting anything.

    Reads pydicom's element store directly (``Dataset._dict``, stable across pydicom 2 and 3): going
    through ``get_item`` for every element of every instance cost a third of the indexing time.
    """
    if isinstance(ds, RawHeader):
        return ds.values.items()
    store = getattr(ds, "_dict", None)
    if not isinstance(store, dict):
        return [(int(tag), getattr(ds.get_item(tag), "value", None)) for tag in ds.keys()]
    return ((tag, getattr(elem, "value", None)) for tag, elem in store.items())


def _safe_get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        try:
            f = float(value)
            return int(f) if f.is_integer() else None
        except (TypeError, ValueError):
            return None


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in _as_list(value)]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _instance_number_summary(numbers: list[int | None]) -> dict[str, Any]:
    present = sorted(n for n in numbers if n is not None)
    summary: dict[str, Any] = {"missing_value_count": len(numbers) - len(present)}
    if present:
        lo, hi = present[0], present[-1]
        unique = set(present)
        missing: list[int] = []
        if hi - lo <= 100_000:
            missing = [n for n in range(lo, hi + 1) if n not in unique]
        summary.update(
            {
                "min": lo,
                "max": hi,
                "missing": missing[:1000],
                "missing_count": len(missing),
                "duplicate_count": len(present) - len(unique),
            }
        )
        summary["complete"] = (
            not missing and summary["duplicate_count"] == 0 and summary["missing_value_count"] == 0
        )
    else:
        summary["complete"] = False
    return summary


def _normal(iop: Sequence[float]) -> tuple[float, float, float]:
    r, c = iop[:3], iop[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _instance_facts(datasets: Sequence[Dataset]) -> tuple[list[dict[str, Any]], list[float] | None, bool]:
    """Per-instance facts the aggregates need, the reference orientation, and mixed orientation.

    Each fact: ``sop`` (SOPInstanceUID), ``n`` (InstanceNumber), ``z`` (position along the slice
    normal of the first instance's orientation, mm), ``t`` (acquisition date-time), ``c`` (SOP class).
    Kept in the document (``kaapana.instances``, stored, not indexed) so partial arrivals can be merged.
    """
    iop: list[float] | None = None
    normal: tuple[float, float, float] | None = None
    mixed = False
    facts: list[dict[str, Any]] = []
    for ds in datasets:
        o = _floats(_raw(ds, "ImageOrientationPatient"), 6)
        p = _floats(_raw(ds, "ImagePositionPatient"), 3)
        z = None
        if o is not None and p is not None:
            if iop is None:
                iop, normal = o, _normal(o)
            elif max(abs(a - b) for a, b in zip(o, iop, strict=True)) > 1e-4:
                mixed = True
            z = round(sum(a * b for a, b in zip(p, normal, strict=True)), 4)  # type: ignore[arg-type]
        sop = _raw(ds, "SOPInstanceUID")
        sop_class = _raw(ds, "SOPClassUID")
        facts.append(
            {
                "sop": str(sop).strip() if sop else None,
                "n": _int_or_none(_raw(ds, "InstanceNumber")),
                "z": z,
                "t": _acquisition_datetime(ds),
                "c": str(sop_class).strip() if sop_class else None,
            }
        )
    return facts, iop, mixed


def _slice_spacing_summary(positions: list[float], mixed: bool) -> dict[str, Any] | None:
    if not positions:
        return None
    positions = sorted(positions)
    gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    summary: dict[str, Any] = {"positions": len(positions), "mixed_orientation": mixed}
    if gaps:
        nonzero = [g for g in gaps if g > 1e-3]
        summary["duplicate_positions"] = len(gaps) - len(nonzero)
        if nonzero:
            summary.update(
                {
                    "min": round(min(nonzero), 4),
                    "max": round(max(nonzero), 4),
                    "mean": round(sum(nonzero) / len(nonzero), 4),
                }
            )
            summary["uniform"] = (max(nonzero) - min(nonzero)) <= max(0.01, 0.01 * min(nonzero))
        summary["extent"] = round(positions[-1] - positions[0], 4)
    return summary


def _aggregates(facts: list[dict[str, Any]], mixed: bool) -> dict[str, Any]:
    """The ``kaapana.*`` aggregates over all instances of a series."""
    out: dict[str, Any] = {
        "instance_count": len(facts),
        "instance_number": _instance_number_summary([f["n"] for f in facts]),
        "sop_class_uids": sorted({f["c"] for f in facts if f["c"]}),
    }
    spacing = _slice_spacing_summary([f["z"] for f in facts if f["z"] is not None], mixed)
    if spacing:
        out["slice_spacing"] = spacing
    times = sorted(f["t"] for f in facts if f["t"])
    if times:
        out["acquisition"] = {"start": times[0], "end": times[-1]}
    return out


def _acquisition_datetime(ds: Dataset) -> str | None:
    dt = _raw(ds, "AcquisitionDateTime")
    try:
        if dt:
            return _iso_datetime(str(dt).strip())[:23]
        date = _raw(ds, "AcquisitionDate") or _raw(ds, "ContentDate")
        time = _raw(ds, "AcquisitionTime") or _raw(ds, "ContentTime")
        if date and time:
            return f"{_iso_date(str(date).strip())}T{_iso_time(str(time).strip())[:12]}"
    except ValueError:
        return None
    return None


def _age_years(document: Mapping[str, Any]) -> float | None:
    age = document.get("PatientAge")
    if isinstance(age, str):
        m = _AS_RE.match(age)
        if m:
            n, unit = int(m.group(1)), m.group(2)
            return round(n / {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[unit], 2)
    birth, study = document.get("PatientBirthDate"), document.get("StudyDate")
    if isinstance(birth, str) and isinstance(study, str):
        days = (_dt.date.fromisoformat(study) - _dt.date.fromisoformat(birth)).days
        if days >= 0:
            return round(days / 365.25, 2)
    return None


def curated_modality(modality: Any, sop_class_uids: Sequence[str]) -> str | None:
    """One modality per series: the upper-cased Modality, else derived from the SOP class."""
    if isinstance(modality, list):
        modality = modality[0] if modality else None
    value = str(modality).strip().upper() if modality else ""
    value = _MODALITY_ALIASES.get(value, value)
    if value and value not in ("OT",):
        return value
    for uid in sop_class_uids:
        if uid in _SOP_CLASS_MODALITY:
            return _SOP_CLASS_MODALITY[uid]
    return value or None


def segment_labels(ds: Dataset) -> list[str]:
    """SEG SegmentSequence labels and RTSTRUCT StructureSetROISequence ROI names."""
    labels: list[str] = []
    for seq_kw, label_kw in (("SegmentSequence", "SegmentLabel"), ("StructureSetROISequence", "ROIName")):
        if _tag(seq_kw) not in ds:
            continue
        for item in _safe_get(ds, seq_kw) or []:
            label = _safe_get(item, label_kw)
            if label and str(label).strip():
                labels.append(str(label).strip())
    return labels


# Keys of a ``kaapana.segment-statistics/v1`` segment copied to ``kaapana.segments`` (typed in the template)
SEGMENT_NUMBER_KEYS = (
    "volume_ml", "mesh_volume_ml", "surface_mm2", "sphericity", "elongation", "flatness",
    "mean", "sd", "min", "max", "median", "p05", "p25", "p75", "p95",
)  # fmt: skip
STATISTICS_SCHEMA = "kaapana.segment-statistics/v1"


def load_statistics(statistics: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A statistics document (or the JSON file holding one), checked to be ``kaapana.segment-statistics/v1``."""
    name = "statistics"
    if not isinstance(statistics, Mapping):
        name = str(statistics)
        try:
            statistics = json.loads(Path(statistics).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidDicomError(f"{name}: cannot read the statistics JSON: {exc}") from exc
    if not isinstance(statistics, Mapping) or statistics.get("schema") != STATISTICS_SCHEMA:
        raise InvalidDicomError(f"{name}: not a {STATISTICS_SCHEMA} document")
    return dict(statistics)


def statistics_series_uid(statistics: Mapping[str, Any]) -> str | None:
    """The series whose document carries the statistics: the SEG's, else (label map) the image's."""
    source = statistics.get("source") or {}
    return source.get("segmentation_series_instance_uid") or source.get("image_series_instance_uid")


def segment_fields(statistics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``kaapana.segments``: one flat, typed entry per segment of a statistics document.

    Per segment: number, label, code (scheme/value/meaning), empty, voxel count, the shape and intensity
    numbers of ``SEGMENT_NUMBER_KEYS`` (``null`` ones left out), the intensity unit, the centroid and the
    image series measured. A nested field: one query can ask for label *and* volume of the same segment.
    """
    image = statistics.get("image") or {}
    image_series = (statistics.get("source") or {}).get("image_series_instance_uid")
    out = []
    for segment in statistics.get("segments") or []:
        entry: dict[str, Any] = {
            "segment_number": int(segment["segment_number"]),
            "label": str(segment.get("label") or ""),
            "empty": bool(segment.get("empty")),
            "voxel_count": int(segment.get("voxel_count") or 0),
        }
        if segment.get("code"):
            entry["code"] = {k: str(v) for k, v in segment["code"].items() if v is not None}
        for key in SEGMENT_NUMBER_KEYS:
            value = segment.get(key)
            if value is not None and math.isfinite(float(value)):
                entry[key] = float(value)
        if segment.get("centroid_lps_mm"):
            entry["centroid_lps_mm"] = [float(x) for x in segment["centroid_lps_mm"]]
        if image.get("intensity_unit"):
            entry["intensity_unit"] = str(image["intensity_unit"])
        if image_series:
            entry["image_series_instance_uid"] = str(image_series)
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------
# documents


def _datetime_iso(value: _dt.datetime | str | None) -> str:
    if value is None:
        value = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.isoformat(timespec="milliseconds")


def _series_document(
    series_uid: str,
    members: list[tuple[Path, Dataset | RawHeader]],
    *,
    received_at: _dt.datetime | str | None,
    source: Mapping[str, Any] | None,
    location: Mapping[str, Any] | None,
    private_key: str,
    extra_problems: list[str],
    viewer: ViewerTemplate | None = None,
) -> SeriesDocument:
    numbers = [_int_or_none(_raw(ds, "InstanceNumber")) for _, ds in members]
    order = sorted(
        range(len(members)), key=lambda i: (numbers[i] is None, numbers[i] or 0, str(members[i][0]))
    )
    members = [members[i] for i in order]
    if not all(isinstance(ds, RawHeader) for _, ds in members):
        # some files only pydicom reads (big endian, deflated, no preamble): compare like with like
        members = [(p, read_header(p) if isinstance(ds, RawHeader) else ds) for p, ds in members]
    first_path, first_header = members[0]
    # the document is the first instance's header as pydicom reads it (or, where that converts the same
    # way, as raw_object reads its bytes); the others only add aggregates
    first_dataset: list[Dataset] = [] if isinstance(first_header, RawHeader) else [first_header]

    def first() -> Dataset:
        if not first_dataset:
            first_dataset.append(read_header(first_path))
        return first_dataset[0]

    # which attributes differ between instances: compare raw value bytes before any conversion
    varying: set[str] = set()
    first_raw = {int(tag): value for tag, value in _raw_values(first_header)}
    missing = object()
    varying_tags: set[int] = set()
    by_pydicom: dict[Path, dict[int, Any]] = {}

    def pydicom_value(path: Path, tag: int) -> Any:
        if path not in by_pydicom:
            by_pydicom[path] = dict(_raw_values(first() if path == first_path else read_header(path)))
        return by_pydicom[path].get(tag, missing)

    first_items = first_raw.items()
    for path, ds in members[1:]:
        # raw headers hold bytes (or None): the pairs that differ from the first instance's come from one
        # set difference in C instead of a comparison per element in Python (a third of the varying-keyword
        # time, docs/guides/benchmarks_index.rst); pydicom's values need not be hashable: element by element
        differing = ds.values.items() - first_items if isinstance(ds, RawHeader) else _raw_values(ds)
        for tag, value in differing:
            if tag in varying_tags or tag & 0x10000 or not tag & 0xFFFF:
                continue  # already known, private (odd group) or a group length
            if value != first_raw.get(tag, missing):
                if (
                    isinstance(ds, RawHeader)
                    and tag in ds.undefined_length
                    and tag in first_raw
                    and pydicom_value(path, tag) == pydicom_value(first_path, tag)
                ):
                    continue  # encoded differently, the same items as pydicom compares them
                varying_tags.add(tag)
    for tag in varying_tags:
        kw = keyword_for_tag(tag)
        if kw:
            varying.add(kw)

    converter = _Converter(str(first_path), private_key)
    document = converter.raw_object(first_path) if isinstance(first_header, RawHeader) else None
    if document is None:
        converter = _Converter(str(first_path), private_key)
        document = converter.dataset_object(first(), "", 0)
    document.pop("PixelData", None)

    facts, orientation, mixed = _instance_facts([ds for _, ds in members])
    aggregates = _aggregates(facts, mixed)
    sop_classes = aggregates["sop_class_uids"]
    transfer_syntaxes = sorted(
        {
            str(uid)
            for uid in (
                ds.transfer_syntax_uid
                if isinstance(ds, RawHeader)
                else _raw(getattr(ds, "file_meta", None) or Dataset(), "TransferSyntaxUID")
                for _, ds in members
            )
            if uid
        }
    )
    labels: list[str] = []
    for _, ds in members:
        for label in segment_labels(ds):
            if label not in labels:
                labels.append(label)

    kaapana: dict[str, Any] = {
        "received_at": _datetime_iso(received_at),
        "indexed_at": _datetime_iso(None),
        **aggregates,
        "transfer_syntax_uids": transfer_syntaxes,
        "varying_keywords": sorted(varying),
    }
    modality = curated_modality(document.get("Modality"), sop_classes)
    if modality:
        kaapana["modality"] = modality
    age = None
    try:
        age = _age_years(document)
    except ValueError:
        age = None
    if age is not None:
        kaapana["patient_age_years"] = age
    if orientation is not None:
        kaapana["orientation"] = orientation
    kaapana["instances"] = facts
    if isinstance(document.get("StudyDate"), str):
        study_dt = document["StudyDate"]
        if isinstance(document.get("StudyTime"), str):
            study_dt += "T" + document["StudyTime"][:12]
        kaapana["study_datetime"] = study_dt
    if labels:
        kaapana["segment_labels"] = labels
    if source:
        src = {k: str(v) for k, v in source.items() if v is not None and str(v) != ""}
        kaapana["source"] = src
        aes = [v for k, v in src.items() if k.endswith("ae_title") or k.endswith("_ae")]
        if aes:
            kaapana["source_aes"] = sorted(set(aes))
    loc = {k: str(v) for k, v in (location or {}).items() if v is not None}
    if loc:
        kaapana["location"] = loc
    if viewer is not None:
        study_uid, sop_uid = document.get("StudyInstanceUID"), document.get("SOPInstanceUID")
        url = viewer.url_or_none(
            study_uid if isinstance(study_uid, str) else None,
            series_uid,
            sop_uid if isinstance(sop_uid, str) else None,
        )
        if url:
            kaapana["viewer_url"] = url
    problems = extra_problems + converter.problems
    if converter.invalid:
        kaapana["invalid"] = converter.invalid
    if problems:
        kaapana["problems"] = problems[:100]
    kaapana["problem_count"] = len(problems)
    document["kaapana"] = kaapana
    return SeriesDocument(series_uid, document, problems, [p for p, _ in members])


def build_series_documents(
    paths: Iterable[str | Path],
    *,
    received_at: _dt.datetime | str | None = None,
    source: Mapping[str, Any] | None = None,
    location: Mapping[str, Any] | None = None,
    private_key: str = DEFAULT_PRIVATE_KEY,
    statistics: Mapping[str, Any] | str | Path | None = None,
    viewer_url: str | None = None,
    thumbnails: RunWorkspace | None = None,
) -> tuple[list[SeriesDocument], list[str]]:
    """Documents for every series found in ``paths`` (files or folders, grouped by SeriesInstanceUID).

    Returns ``(documents, file_errors)``: a file that is not DICOM or has no SeriesInstanceUID is
    reported in ``file_errors`` (message names the file) and the rest goes on. ``statistics`` (a
    ``kaapana.segment-statistics/v1`` document or its JSON file) becomes ``kaapana.segments`` of the
    document of its segmentation's series; statistics that are unreadable or match none of the series
    are a file error too (the documents are still indexed, without them).

    ``viewer_url`` (a :mod:`~airflow_provider_kaapana.core.net.viewer` template) fills
    ``kaapana.viewer_url``. With ``thumbnails`` (the run workspace), each series' thumbnail is written to
    ``<series>/index/thumbnail.png`` there and carried as ``kaapana.thumbnail`` (a PNG data URL); a
    series without one (not an image, not decodable) is logged and indexed all the same.
    """
    viewer = ViewerTemplate(viewer_url) if viewer_url else None
    groups: dict[str, list[tuple[Path, Dataset | RawHeader]]] = {}
    file_errors: list[str] = []
    for path in _expand(paths):
        try:
            ds = read_raw_header(path) or read_header(path)
            uid = _raw(ds, "SeriesInstanceUID")
            uid = (uid if isinstance(uid, str) else str(uid or "")).strip().rstrip("\x00")
            if not uid:
                raise InvalidDicomError(f"{path}: empty SeriesInstanceUID")
            # the SeriesInstanceUID is the document id: an invalid one ('1.2.3/../../_bulk', 600
            # characters) is refused here, for this file only, instead of sinking the bulk request
            uid = validate_uid(uid, f"{path}: SeriesInstanceUID")
        except (InvalidDicomError, InvalidUIDError) as exc:
            file_errors.append(str(exc))
            continue
        groups.setdefault(uid, []).append((path, ds))
    loc_default = dict(location or {})
    documents = []
    for uid, members in groups.items():
        loc = dict(loc_default)
        if "series_dir" not in loc:
            parents = {str(p.parent) for p, _ in members}
            if len(parents) == 1:
                loc["series_dir"] = parents.pop()
        documents.append(
            _series_document(
                uid,
                members,
                received_at=received_at,
                source=source,
                location=loc,
                private_key=private_key,
                extra_problems=[],
                viewer=viewer,
            )
        )
        if thumbnails is not None:
            _attach_thumbnail(documents[-1], thumbnails)
    if statistics is not None and documents:
        _attach_statistics(documents, statistics, file_errors)
    return documents, file_errors


def _attach_thumbnail(doc: SeriesDocument, workspace: RunWorkspace) -> None:
    """``kaapana.thumbnail`` and the PNG in the workspace's ``index`` step folder; a refusal is logged."""
    from airflow_provider_kaapana.core.index.thumbnail import (
        ThumbnailError,
        series_thumbnail,
        slice_thumbnail,
        write_thumbnail,
    )

    label = f"series {doc.doc_id}"
    kaapana = doc.document["kaapana"]
    facts = kaapana.get("instances") or []
    positions = [f.get("z") for f in facts]
    try:
        if (
            len(facts) == len(doc.files) > 1
            and None not in positions
            and not (kaapana.get("slice_spacing") or {}).get("mixed_orientation")
        ):
            # the positions along the normal are in the facts (one per file, in the same order): read
            # one file again instead of every header (measured on a loaded 2-core machine, 60 slices of
            # 512 x 512: 36 ms instead of 146 ms, best of 5; the document itself took about 300 ms)
            order = sorted(range(len(facts)), key=lambda i: positions[i])
            middle = len(order) // 2
            thumbnail = slice_thumbnail(doc.files[order[middle]], middle, len(order), label=label)
        else:
            thumbnail = series_thumbnail(doc.files, label=label)
    except ThumbnailError as exc:
        log.info("no thumbnail: %s", exc)
        doc.thumbnail_refused = str(exc)
        return
    path = write_thumbnail(thumbnail, workspace.step_dir(doc.doc_id, "index"))
    doc.thumbnail_path = str(path)
    data_url = thumbnail.data_url()
    if data_url:
        doc.document["kaapana"]["thumbnail"] = data_url
        doc.document["kaapana"]["thumbnail_of"] = thumbnail.as_dict()


def _attach_statistics(
    documents: list[SeriesDocument], statistics: Mapping[str, Any] | str | Path, file_errors: list[str]
) -> None:
    name = "statistics" if isinstance(statistics, Mapping) else str(statistics)
    try:
        loaded = load_statistics(statistics)
    except InvalidDicomError as exc:
        file_errors.append(str(exc))
        return
    uid = statistics_series_uid(loaded)
    target = next((d for d in documents if d.doc_id == uid), None)
    if target is None:
        found = ", ".join(d.doc_id for d in documents[:5])
        file_errors.append(f"{name}: statistics of series {uid} match none of the indexed series ({found})")
        return
    target.document["kaapana"]["segments"] = segment_fields(loaded)


def build_series_document(
    files_or_series_dir: str | Path | Sequence[str | Path],
    *,
    received_at: _dt.datetime | str | None = None,
    source: Mapping[str, Any] | None = None,
    location: Mapping[str, Any] | None = None,
    private_key: str = DEFAULT_PRIVATE_KEY,
) -> tuple[str, dict[str, Any], list[str]]:
    """``(doc_id, document, problems)`` for ONE series (a folder or a list of its files).

    Unreadable files become problems; raises :class:`InvalidDicomError` when no file is usable or the
    files belong to more than one series.
    """
    paths = (
        [files_or_series_dir] if isinstance(files_or_series_dir, (str, Path)) else list(files_or_series_dir)
    )
    documents, file_errors = build_series_documents(
        paths, received_at=received_at, source=source, location=location, private_key=private_key
    )
    if not documents:
        detail = "; ".join(file_errors[:5]) or "no files"
        raise InvalidDicomError(f"{', '.join(map(str, paths[:3]))}: no usable DICOM instance ({detail})")
    if len(documents) > 1:
        uids = ", ".join(d.doc_id for d in documents[:5])
        raise InvalidDicomError(
            f"{', '.join(map(str, paths[:3]))}: files of {len(documents)} series ({uids}); index them "
            "with build_series_documents"
        )
    doc = documents[0]
    problems = file_errors + doc.problems
    if file_errors:
        doc.document["kaapana"]["problems"] = problems[:100]
        doc.document["kaapana"]["problem_count"] = len(problems)
    return doc.doc_id, doc.document, problems


def _slice_count(kaapana: Mapping[str, Any]) -> int:
    return int((kaapana.get("thumbnail_of") or {}).get("slice_count") or 0)


def merge_series_documents(existing: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """One document for a series that arrived in parts: ``new`` merged into the indexed ``existing``.

    Instances are united by SOPInstanceUID (the newer facts win), so merging the same files again
    changes nothing; the aggregates are recomputed over the union. Attribute values come from
    ``new``; ``received_at`` keeps the first arrival; varying keywords, labels and problems are united.
    A document without ``kaapana.instances`` (or of another series) is simply replaced by ``new``.
    """
    old_k, new_k = existing.get("kaapana") or {}, new.get("kaapana") or {}
    if (
        not isinstance(old_k.get("instances"), list)
        or not isinstance(new_k.get("instances"), list)
        or existing.get("SeriesInstanceUID") != new.get("SeriesInstanceUID")
    ):
        return dict(new)
    by_sop: dict[str, dict[str, Any]] = {}
    # instances without a SOP UID are united by their facts, so merging the same files again adds nothing
    anonymous: dict[str, dict[str, Any]] = {}
    for fact in [*old_k["instances"], *new_k["instances"]]:
        if fact.get("sop"):
            by_sop[fact["sop"]] = fact
        else:
            anonymous[json.dumps(fact, sort_keys=True, default=str)] = fact
    facts = [*by_sop.values(), *anonymous.values()]
    old_o, new_o = old_k.get("orientation"), new_k.get("orientation")
    mixed = bool((old_k.get("slice_spacing") or {}).get("mixed_orientation")) or bool(
        (new_k.get("slice_spacing") or {}).get("mixed_orientation")
    )
    if old_o and new_o and max(abs(a - b) for a, b in zip(old_o, new_o, strict=False)) > 1e-4:
        mixed = True  # positions along different normals cannot be compared
    merged = dict(new)
    kaapana = dict(new_k)
    for key in ("slice_spacing", "acquisition"):
        kaapana.pop(key, None)
    kaapana.update(_aggregates(facts, mixed))
    kaapana["instances"] = facts
    kaapana["received_at"] = min(
        str(old_k.get("received_at") or new_k["received_at"]), str(new_k["received_at"])
    )
    if "segments" not in kaapana and old_k.get("segments"):
        kaapana["segments"] = old_k["segments"]  # a later arrival without statistics keeps them
    if old_k.get("thumbnail") and (
        not kaapana.get("thumbnail") or _slice_count(old_k) > _slice_count(kaapana)
    ):  # the picture of the arrival with more slices: a late single instance is no series' middle
        kaapana["thumbnail"], kaapana["thumbnail_of"] = old_k["thumbnail"], old_k.get("thumbnail_of")
    if "viewer_url" not in kaapana and old_k.get("viewer_url"):
        kaapana["viewer_url"] = old_k["viewer_url"]
    for key in ("varying_keywords", "segment_labels", "transfer_syntax_uids", "source_aes"):
        values = [*(old_k.get(key) or []), *(new_k.get(key) or [])]
        if values:
            kaapana[key] = sorted(set(values)) if key != "segment_labels" else list(dict.fromkeys(values))
    problems = list(dict.fromkeys([*(old_k.get("problems") or []), *(new_k.get("problems") or [])]))
    if problems:
        kaapana["problems"] = problems[:100]
    kaapana["problem_count"] = len(problems)
    kaapana["merged_arrivals"] = int(old_k.get("merged_arrivals") or 1) + 1
    merged["kaapana"] = kaapana
    return merged
