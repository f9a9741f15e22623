"""Analysis 2, segmentation statistics: per-label volumes and intensities from the site's SEG documents.

A site's segmentations carry their per-segment statistics in the search index (``kaapana.segments`` on
the SEG's series document, written by the segmentation DAG from ``kaapana.segment-statistics/v1``; see
:doc:`/interfaces`). This analysis reads those numbers — it never opens an image — and publishes, for the
label the job names: how many segments, their volume (pooled mean and variance, a histogram with
pre-agreed edges) and, for CT, their mean intensity in HU. Which labels the site holds is published as
counts by label. Every cell counts distinct patients, so the guard's k applies to people, not segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_kaapana.core.federation.cohort import patient_key
from airflow_provider_kaapana.core.federation.statistics import (
    SCHEMA_AGGREGATE_V1,
    AnalysisSpec,
    StatisticKind,
    StatisticSpec,
    bin_index,
    counts,
    histogram,
    moments,
    normalise_label,
    result_document,
)

# Pre-agreed edges (mL): part of the analysis version, never taken from a job's parameters. The last
# edge is far beyond any organ, so the histogram and the moments count the same segments.
VOLUME_EDGES_ML: tuple[float, ...] = (0, 1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 1_000_000)
LABEL_PARAMETER = "label"
PARAMETERS = frozenset({LABEL_PARAMETER, "body_part", "date_from", "date_to", "query"})

_C, _H, _M = StatisticKind.COUNTS, StatisticKind.HISTOGRAM, StatisticKind.MOMENTS

SEGMENTATION_STATISTICS_V1 = AnalysisSpec(
    name="segmentation_statistics",
    version="1",
    payload_schema=SCHEMA_AGGREGATE_V1,
    parameters=PARAMETERS,
    description=(
        "Per-label segment volumes (mL) and mean CT intensities (HU) from the site's segmentations "
        "(the SEG documents' per-segment statistics), and which labels the site holds."
    ),
    nested_populations={"label_segments_hu": "label_segments"},
    statistics=(
        StatisticSpec(
            "segments_by_label", _C, "segments", "segments", description="non-empty segments by label"
        ),
        StatisticSpec(
            "label_volume_moments",
            _M,
            "label_segments",
            "mL",
            description="volume (mL) of the non-empty segments with the job's label",
        ),
        StatisticSpec(
            "label_volume_histogram",
            _H,
            "label_segments",
            "segments",
            VOLUME_EDGES_ML,
            "segments with the job's label by volume (mL)",
        ),
        StatisticSpec(
            "label_mean_hu_moments",
            _M,
            "label_segments_hu",
            "HU",
            description="mean intensity (HU) of the segments with the job's label measured on CT",
        ),
    ),
)

# The index fields this analysis reads (``_source`` includes): no names, no birth dates.
SEGMENTATION_SOURCE_FIELDS: tuple[str, ...] = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "kaapana.segments.label",
    "kaapana.segments.code.meaning",
    "kaapana.segments.empty",
    "kaapana.segments.volume_ml",
    "kaapana.segments.mean",
    "kaapana.segments.intensity_unit",
)


def segmentation_query(cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The cohort query narrowed to series documents that carry per-segment statistics."""
    has_segments = {
        "nested": {"path": "kaapana.segments", "query": {"exists": {"field": "kaapana.segments"}}}
    }
    return {"bool": {"filter": [dict(cohort), has_segments]}}


def _segments(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    kaapana = document.get("kaapana")
    segments = kaapana.get("segments") if isinstance(kaapana, Mapping) else None
    if isinstance(segments, Mapping):  # one nested object comes back as an object, not a list
        segments = [segments]
    return [s for s in segments or [] if isinstance(s, Mapping)]


def _label_of(segment: Mapping[str, Any]) -> str:
    return normalise_label(segment.get("label"))


def _matches(segment: Mapping[str, Any], wanted: str) -> bool:
    code = segment.get("code")
    meaning = code.get("meaning") if isinstance(code, Mapping) else None
    return wanted in (_label_of(segment), normalise_label(meaning))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def compute_segmentation_statistics(
    documents: Iterable[Mapping[str, Any]], label: str
) -> dict[str, dict[str, Any]]:
    """The statistics of :data:`SEGMENTATION_STATISTICS_V1` for ``label`` (matched, normalised, against a
    segment's label or its code meaning). Empty segments are not counted. Order-independent."""
    wanted = normalise_label(label)
    labels: list[str] = []
    label_who: list[str] = []
    volumes: list[float | None] = []
    hu_means: list[float | None] = []
    who: list[str] = []
    docs = sorted(documents, key=lambda d: (str(d.get("SeriesInstanceUID") or ""), patient_key(d)))
    for document in docs:
        patient = patient_key(document)
        for segment in sorted(_segments(document), key=lambda s: (_label_of(s), str(s.get("volume_ml")))):
            if segment.get("empty"):
                continue
            labels.append(_label_of(segment))
            label_who.append(patient)
            if not _matches(segment, wanted):
                continue
            volume = _finite(segment.get("volume_ml"))
            if volume is None or bin_index(volume, VOLUME_EDGES_ML) is None:
                continue  # not measured, or implausible: not in the label's population
            volumes.append(volume)
            who.append(patient)
            is_hu = str(segment.get("intensity_unit") or "").upper() == "HU"
            hu_means.append(_finite(segment.get("mean")) if is_hu else None)
    return {
        "segments_by_label": counts(labels, who=label_who),
        "label_volume_moments": moments(volumes, who=who),
        "label_volume_histogram": histogram(volumes, VOLUME_EDGES_ML, who=who),
        "label_mean_hu_moments": moments(hu_means, who=who),
    }


def required_label(parameters: Mapping[str, Any] | None, analysis: str) -> str:
    """The job's segment label parameter; ValueError naming ``analysis`` when it is missing or blank."""
    label = (parameters or {}).get(LABEL_PARAMETER)
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{analysis} needs the parameter {LABEL_PARAMETER!r} (a segment label)")
    return label


def segmentation_statistics(
    documents: Iterable[Mapping[str, Any]],
    *,
    job_id: str,
    site: str,
    parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The site's result document for one segmentation-statistics job, before the egress guard."""
    label = required_label(parameters, "segmentation_statistics")
    return result_document(
        job_id=job_id,
        analysis=SEGMENTATION_STATISTICS_V1,
        site=site,
        statistics=compute_segmentation_statistics(documents, label),
    )


__all__ = [
    "SEGMENTATION_SOURCE_FIELDS",
    "SEGMENTATION_STATISTICS_V1",
    "VOLUME_EDGES_ML",
    "compute_segmentation_statistics",
    "segmentation_query",
    "segmentation_statistics",
]
