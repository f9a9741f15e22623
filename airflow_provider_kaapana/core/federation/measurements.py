"""Analysis 3, segment measurements: one row per case and segment, for a consortium's pooled table.

Where the segmentation statistics publish moments and histograms, a consortium fitting its own model
(volume against age, a reference range by sex) needs the rows. This analysis reads the same per-segment
statistics from the SEG series documents (``kaapana.segments``) and writes one record per non-empty
segment with the job's label: patient, study and SEG series (originals at the site; keyed pseudonyms
once the guard has passed them through the de-identification core), age and sex (released only when
the job asks, as a ten-year band and M/F/O), the segment's label, its volume (mL) and, on CT, its mean
intensity (HU). The payload is ``kaapana.federated.records/v1``; see :mod:`.records`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_kaapana.core.federation.cohort import _get, _number
from airflow_provider_kaapana.core.federation.records import QUASI_PARAMETER, SCHEMA_RECORDS_V1
from airflow_provider_kaapana.core.federation.segmentation import (
    LABEL_PARAMETER,
    SEGMENTATION_SOURCE_FIELDS,
    VOLUME_EDGES_ML,
    _finite,
    _matches,
    _segments,
    required_label,
)
from airflow_provider_kaapana.core.federation.statistics import (
    AnalysisSpec,
    ColumnRole,
    ColumnSpec,
    bin_index,
    normalise_label,
)

PARAMETERS = frozenset({LABEL_PARAMETER, QUASI_PARAMETER, "body_part", "date_from", "date_to", "query"})

_P, _U, _Q, _L, _M = (
    ColumnRole.PATIENT,
    ColumnRole.UID,
    ColumnRole.QUASI,
    ColumnRole.LABEL,
    ColumnRole.MEASUREMENT,
)

SEGMENT_MEASUREMENTS_V1 = AnalysisSpec(
    name="segment_measurements",
    version="1",
    payload_schema=SCHEMA_RECORDS_V1,
    parameters=PARAMETERS,
    description=(
        "One de-identified row per case and segment with the job's label: keyed patient, study and series "
        "pseudonyms, the segment's volume (mL) and mean CT intensity (HU), and on request age band and sex."
    ),
    statistics=(),
    columns=(
        ColumnSpec("patient", _P, "PatientID", description="keyed patient pseudonym"),
        ColumnSpec("study_uid", _U, "StudyInstanceUID", description="keyed study UID pseudonym"),
        ColumnSpec("series_uid", _U, "SeriesInstanceUID", description="keyed SEG series UID pseudonym"),
        ColumnSpec("age_band", _Q, "PatientAge", "years", "age at the study, ten-year band (90+)"),
        ColumnSpec("sex", _Q, "PatientSex", description="M, F, O or null"),
        ColumnSpec("label", _L, "SegmentLabel", description="the segment's label, normalised"),
        ColumnSpec("volume_ml", _M, unit="mL", description="segment volume"),
        ColumnSpec("mean_hu", _M, unit="HU", description="mean intensity on CT (null otherwise)"),
    ),
)

# The index fields this analysis reads, besides those of the segmentation statistics.
MEASUREMENT_SOURCE_FIELDS: tuple[str, ...] = (
    *SEGMENTATION_SOURCE_FIELDS,
    "kaapana.segments.segment_number",
    "PatientSex",
    "kaapana.patient_age_years",
)


def _text(document: Mapping[str, Any], name: str) -> str | None:
    value = _get(document, name)
    return str(value).strip() or None if value is not None else None


def _segment_order(segment: Mapping[str, Any]) -> tuple[float, str]:
    """Segment 2 before segment 10 (the number as the index holds it: int or text); unnumbered last."""
    number = segment.get("segment_number")
    try:
        key = float(number) if not isinstance(number, bool) else math.inf
    except (TypeError, ValueError):
        key = math.inf
    return (key if math.isfinite(key) else math.inf, str(segment.get("label") or ""))


def compute_segment_measurements(documents: Iterable[Mapping[str, Any]], label: str) -> list[dict[str, Any]]:
    """The site records (originals: never sent as they are) of the segments with ``label``.

    A series without a PatientID contributes nothing (its pseudonym would merge unrelated patients);
    an empty segment or one without a plausible volume neither. Ordered by series, then segment.
    """
    wanted = normalise_label(label)
    records: list[dict[str, Any]] = []
    docs = sorted(documents, key=lambda d: str(d.get("SeriesInstanceUID") or ""))
    for document in docs:
        patient = _text(document, "PatientID")
        if patient is None:
            continue
        for segment in sorted(_segments(document), key=_segment_order):
            if segment.get("empty") or not _matches(segment, wanted):
                continue
            volume = _finite(segment.get("volume_ml"))
            if volume is None or bin_index(volume, VOLUME_EDGES_ML) is None:
                continue
            is_hu = str(segment.get("intensity_unit") or "").upper() == "HU"
            raw_label = segment.get("label")
            records.append(
                {
                    "patient": patient,
                    "study_uid": _text(document, "StudyInstanceUID"),
                    "series_uid": _text(document, "SeriesInstanceUID"),
                    "age_band": _number(_get(document, "kaapana.patient_age_years")),
                    "sex": _text(document, "PatientSex"),
                    "label": str(raw_label) if raw_label is not None else None,
                    "volume_ml": volume,
                    "mean_hu": _finite(segment.get("mean")) if is_hu else None,
                }
            )
    return records


def segment_measurements(
    documents: Iterable[Mapping[str, Any]],
    *,
    job_id: str,
    site: str,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The site's (not yet de-identified) record document for one segment-measurements job."""
    label = required_label(parameters, "segment_measurements")
    spec = SEGMENT_MEASUREMENTS_V1
    return {
        "schema": spec.payload_schema,
        "job_id": job_id,
        "analysis": spec.name,
        "analysis_version": spec.version,
        "site": site,
        "records": compute_segment_measurements(documents, label),
    }


__all__ = [
    "MEASUREMENT_SOURCE_FIELDS",
    "SEGMENT_MEASUREMENTS_V1",
    "compute_segment_measurements",
    "segment_measurements",
]
