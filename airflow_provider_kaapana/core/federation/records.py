"""Record-level payloads (``kaapana.federated.records/v1``): one row per case, de-identified at egress.

A site's analysis writes rows with the originals (patient ID, study and series UIDs, age in years,
PatientSex); they never leave. The egress guard passes every row through the de-identification core
(:func:`~airflow_provider_kaapana.core.deid.deidentify.deidentify`, the site's key, the analysis
version's fixed profile), so the released pseudonyms are exactly those ``kaapana deid`` writes into the
site's de-identified DICOM with the same key; it coarsens the quasi-identifiers the job asked for (age
band, sex), and suppresses rows whose quasi-identifier group has fewer than k patients. pydicom and
the de-identification core are imported on first use: DAG files import this module.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_kaapana.core.federation.statistics import (
    MAX_LABEL_CHARS,
    SAFE_LABEL_RE,
    AnalysisSpec,
    ColumnRole,
    ColumnSpec,
    PayloadSchema,
    Stage,
    canonical_json_bytes,
    normalise_label,
    register_payload_schema,
)
from airflow_provider_kaapana.exceptions import DeidentificationError, PayloadSchemaError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile

SCHEMA_RECORDS_V1 = "kaapana.federated.records/v1"
# The job parameter naming the quasi-identifier columns it asks for (none unless asked).
QUASI_PARAMETER = "quasi_identifiers"
MAX_RECORDS = 20_000
MAX_TEXT_CHARS = 256
# Ten-year bands, top-coded at 90 (HIPAA Safe Harbor: ages over 89 are one category).
AGE_BAND_WIDTH = 10
AGE_TOP_CODE = 90
AGE_BANDS: tuple[str, ...] = (
    *(f"{lo}-{lo + AGE_BAND_WIDTH - 1}" for lo in range(0, AGE_TOP_CODE, AGE_BAND_WIDTH)),
    f"{AGE_TOP_CODE}+",
)
SEXES = ("M", "F", "O")
# What a keyed pseudonym looks like (pseudonyms.pseudonym_patient_id / pseudonym_uid).
PATIENT_PSEUDONYM_RE = re.compile(r"^P[0-9A-F]{15}$")
UID_PSEUDONYM_RE = re.compile(r"^2\.25\.(?:0|[1-9][0-9]{0,38})$")

_SITE_ENVELOPE = {"schema", "job_id", "analysis", "analysis_version", "site", "records"}
_RELEASED_ENVELOPE = _SITE_ENVELOPE | {"k", "columns", "suppressed", "deidentification"}


# --------------------------------------------------------------------------------------------------
# the profile and the columns a job may ask for


def record_profile() -> DeidentificationProfile:
    """The profile every record passes through: the basic profile plus Retain Patient Characteristics
    (Patient's Sex and Age survive, to be coarsened; names, IDs, dates and other attributes do not).

    Fixed by the payload schema version: neither the coordinator nor the job chooses it.
    """
    from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option

    return DeidentificationProfile(frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS}))


def released_columns(analysis: AnalysisSpec, parameters: Mapping[str, Any]) -> tuple[ColumnSpec, ...]:
    """The columns a job's rows carry: every non-quasi column, plus the quasi-identifiers it names.

    Raises :class:`PayloadSchemaError` for a name that is not one of the analysis' quasi-identifier
    columns (a raw patient ID, a birth date...): the job cannot widen what leaves.
    """
    asked = parameters.get(QUASI_PARAMETER) or []
    if isinstance(asked, str) or not isinstance(asked, list) or not all(isinstance(a, str) for a in asked):
        raise PayloadSchemaError(f"parameter {QUASI_PARAMETER} must be a list of column names")
    quasi = {c.name for c in analysis.columns if c.role is ColumnRole.QUASI}
    unknown = sorted(set(asked) - quasi)
    if unknown:
        raise PayloadSchemaError(
            f"{analysis.name} v{analysis.version} releases no column {', '.join(u[:32] for u in unknown)} "
            f"(quasi-identifiers on offer: {', '.join(sorted(quasi)) or 'none'})"
        )
    return tuple(c for c in analysis.columns if c.role is not ColumnRole.QUASI or c.name in asked)


# --------------------------------------------------------------------------------------------------
# coarsening


def age_band(years: float | None) -> str | None:
    """The ten-year band of an age (``40-49``), ``90+`` from 90 on; None when unknown or implausible."""
    if years is None or not math.isfinite(years) or not 0 <= years < 150:
        return None
    lo = int(years) // AGE_BAND_WIDTH * AGE_BAND_WIDTH
    return AGE_BANDS[-1] if lo >= AGE_TOP_CODE else f"{lo}-{lo + AGE_BAND_WIDTH - 1}"


def _age_string(years: Any) -> str | None:
    """A DICOM AS value (``047Y``) for an age in years, None when there is none."""
    if isinstance(years, bool) or not isinstance(years, (int, float)) or not math.isfinite(years):
        return None
    return f"{int(years):03d}Y" if 0 <= years < 1000 else None


def _years_of(age: str) -> float | None:
    match = re.fullmatch(r"(\d{3})([DWMY])", age.strip())
    if not match:
        return None
    return int(match.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]


def _sex(value: str) -> str | None:
    value = value.strip().upper()
    return value if value in SEXES else None


# --------------------------------------------------------------------------------------------------
# de-identification of one record


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()[:MAX_TEXT_CHARS]


def _element(keyword: str, value: str) -> Any:
    """The data element of ``keyword`` holding ``value``, not validated: pydicom's value validation
    would log (or raise with) a non-conformant original, a UID for instance, verbatim."""
    from pydicom import config
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import DataElement

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


def deidentify_record(
    record: Mapping[str, Any],
    columns: Sequence[ColumnSpec],
    profile: DeidentificationProfile,
    key: bytes,
) -> dict[str, Any]:
    """One site record, released: its DICOM-valued columns as one dataset through
    :func:`~airflow_provider_kaapana.core.deid.deidentify.deidentify` (``profile``, ``key``), read back
    from the result; quasi-identifiers coarsened, labels normalised, measurements kept as numbers.

    Only ``columns`` are released. A column whose attribute the profile removes comes back null.
    Raises :class:`DeidentificationError` naming the column, never the value, for a value that cannot be
    put in the dataset.
    """
    from pydicom.dataset import Dataset

    from airflow_provider_kaapana.core.deid.deidentify import deidentify

    source = Dataset()
    for column in columns:
        if column.keyword is None:
            continue
        value = record.get(column.name)
        if column.keyword == "PatientAge":
            value = _age_string(value)
        elif value is not None:
            value = _text(value)
        if value not in (None, ""):
            try:
                source.add(_element(column.keyword, value))
            except Exception as exc:  # the message may quote the value
                raise DeidentificationError(
                    f"{column.name}: cannot be put in a dataset as {column.keyword} ({type(exc).__name__})"
                ) from None
    if "PatientID" not in source:
        source.PatientID = ""  # deidentify gives it the pseudonym of the empty ID
    out = deidentify(source, profile, key)
    released: dict[str, Any] = {}
    for column in columns:
        if column.role is ColumnRole.MEASUREMENT:
            released[column.name] = _measurement(record.get(column.name))
            continue
        assert column.keyword is not None
        value = out.get(column.keyword)  # by keyword: the value, None when the profile removed it
        text = "" if value is None else str(value).strip()
        if column.role in (ColumnRole.PATIENT, ColumnRole.UID):
            released[column.name] = text or None
        elif column.keyword == "PatientAge":
            released[column.name] = age_band(_years_of(text)) if text else None
        elif column.keyword == "PatientSex":
            released[column.name] = _sex(text)
        else:
            released[column.name] = normalise_label(text or None)
    return released


def _measurement(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------
# k-anonymity


def quasi_columns(columns: Iterable[ColumnSpec]) -> list[str]:
    return [c.name for c in columns if c.role is ColumnRole.QUASI]


def small_groups(
    records: Sequence[Mapping[str, Any]], quasi: Sequence[str], patient: str, k: int
) -> set[int]:
    """Indices of the records whose quasi-identifier group (equal values in every ``quasi`` column, null
    included) holds fewer than ``k`` distinct patients. With no quasi column all records are one group."""
    groups: dict[tuple[Any, ...], set[Any]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(q) for q in quasi), set()).add(record.get(patient))
    small = {key for key, people in groups.items() if len(people) < k}
    return {i for i, record in enumerate(records) if tuple(record.get(q) for q in quasi) in small}


def record_hashes(document: Mapping[str, Any]) -> list[str]:
    """The SHA-256 of every released record's canonical JSON, in order (what the audit log keeps)."""
    return [hashlib.sha256(canonical_json_bytes(r)).hexdigest() for r in document.get("records") or []]


# --------------------------------------------------------------------------------------------------
# validation


def _fail(where: str, message: str) -> PayloadSchemaError:
    return PayloadSchemaError(f"{where}: {message}")


def _check_envelope(document: Mapping[str, Any], analysis: AnalysisSpec, keys: set[str]) -> None:
    if not isinstance(document, Mapping):
        raise _fail("document", "must be a JSON object")
    unknown = set(document) - keys
    if unknown:
        raise _fail("document", f"{len(unknown)} unknown key(s) (not shown)")
    missing = keys - set(document)
    if missing:
        raise _fail("document", f"missing key(s) {', '.join(sorted(missing))}")
    if document["schema"] != SCHEMA_RECORDS_V1:
        raise _fail("document", f"schema must be {SCHEMA_RECORDS_V1}")
    if document["analysis"] != analysis.name or document["analysis_version"] != analysis.version:
        raise _fail("document", f"analysis must be {analysis.name} version {analysis.version}")
    if not analysis.columns:
        raise _fail("document", f"{analysis.name} v{analysis.version} declares no record columns")
    for key in ("job_id", "site"):
        if not isinstance(document[key], str) or not document[key]:
            raise _fail("document", f"{key} must be a non-empty string")
    records = document["records"]
    if not isinstance(records, list):
        raise _fail("records", "must be a list")
    if len(records) > MAX_RECORDS:
        raise _fail("records", f"{len(records)} records (at most {MAX_RECORDS})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_site_value(where: str, column: ColumnSpec, value: Any) -> None:
    if value is None:
        if column.role is ColumnRole.PATIENT:
            raise _fail(where, "a record needs its patient")
        return
    if column.role is ColumnRole.MEASUREMENT or column.keyword == "PatientAge":
        if not _is_number(value):
            raise _fail(where, "must be a finite number or null")
    elif not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise _fail(where, f"must be a string of at most {MAX_TEXT_CHARS} characters or null")


def _check_released_value(where: str, column: ColumnSpec, value: Any) -> None:
    role = column.role
    if role is ColumnRole.PATIENT:
        if not isinstance(value, str) or not PATIENT_PSEUDONYM_RE.match(value):
            raise _fail(where, "is not a keyed patient pseudonym")
    elif value is None:
        return
    elif role is ColumnRole.UID:
        if not isinstance(value, str) or not UID_PSEUDONYM_RE.match(value):
            raise _fail(where, "is not a keyed UID pseudonym (2.25.<integer>)")
    elif role is ColumnRole.MEASUREMENT:
        if not _is_number(value):
            raise _fail(where, "must be a finite number or null")
    elif column.keyword == "PatientAge":
        if value not in AGE_BANDS:
            raise _fail(where, "is not an age band")
    elif column.keyword == "PatientSex":
        if value not in SEXES:
            raise _fail(where, "must be M, F, O or null")
    elif not isinstance(value, str) or len(value) > MAX_LABEL_CHARS or not SAFE_LABEL_RE.match(value):
        raise _fail(where, "is not a safe category label")


def validate_records_v1(document: Mapping[str, Any], analysis: AnalysisSpec, stage: Stage) -> None:
    """Check a ``records/v1`` document against ``analysis``'s columns.

    Site stage: only declared columns, originals as strings, numbers finite. Released stage: exactly the
    listed ``columns`` in every record, pseudonyms in pseudonym form, age bands, M/F/O, safe labels.
    Errors name the record index and the column, never a value.
    """
    by_name = {c.name: c for c in analysis.columns}
    if stage == "site":
        _check_envelope(document, analysis, _SITE_ENVELOPE)
        for i, record in enumerate(document["records"]):
            if not isinstance(record, Mapping):
                raise _fail(f"records[{i}]", "must be a JSON object")
            unknown = [key for key in record if key not in by_name]
            if unknown:
                raise _fail(f"records[{i}]", f"{len(unknown)} unknown column(s) (not shown)")
            for column in analysis.columns:
                _check_site_value(f"records[{i}].{column.name}", column, record.get(column.name))
        return
    _check_envelope(document, analysis, _RELEASED_ENVELOPE)
    k = document["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise _fail("document", "k must be a positive integer")
    if not isinstance(document["suppressed"], bool):
        raise _fail("document", "suppressed must be true or false")
    method = document["deidentification"]
    if not isinstance(method, str) or not method or len(method) > 64:
        raise _fail("document", "deidentification must name the profile")
    names = document["columns"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _fail("document", "columns must be a list of column names")
    if len(set(names)) != len(names) or any(n not in by_name for n in names):
        raise _fail("document", "columns must be distinct columns of the analysis (unknown ones not shown)")
    required = [c.name for c in analysis.columns if c.role is not ColumnRole.QUASI]
    if any(n not in names for n in required):
        raise _fail("document", f"columns must include {', '.join(required)}")
    columns = [by_name[n] for n in names]
    for i, record in enumerate(document["records"]):
        if not isinstance(record, Mapping) or set(record) != set(names):
            raise _fail(f"records[{i}]", "must have exactly the document's columns")
        for column in columns:
            _check_released_value(f"records[{i}].{column.name}", column, record[column.name])


register_payload_schema(
    PayloadSchema(
        schema_id=SCHEMA_RECORDS_V1,
        description="per-case rows with keyed pseudonyms, coarsened quasi-identifiers and measurements",
        record_level=True,
        validate=validate_records_v1,
    )
)


__all__ = [
    "AGE_BANDS",
    "MAX_RECORDS",
    "QUASI_PARAMETER",
    "SCHEMA_RECORDS_V1",
    "age_band",
    "deidentify_record",
    "quasi_columns",
    "record_hashes",
    "record_profile",
    "released_columns",
    "small_groups",
    "validate_records_v1",
]
