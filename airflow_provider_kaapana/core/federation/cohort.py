"""Analysis 1, cohort statistics: what a site holds, computed from its series index documents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_kaapana.core.federation.statistics import (
    SCHEMA_AGGREGATE_V1,
    AnalysisSpec,
    StatisticKind,
    StatisticSpec,
    bin_index,
    counts,
    histogram,
    moments,
    result_document,
)

# Pre-agreed edges: part of the analysis version, never taken from a job's parameters (a coordinator
# that could choose the bins could choose bins narrow enough to isolate one patient).
AGE_EDGES: tuple[float, ...] = (0, 18, 30, 40, 50, 60, 70, 80, 120)
SLICE_THICKNESS_EDGES: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 50)

_C, _H, _M = StatisticKind.COUNTS, StatisticKind.HISTOGRAM, StatisticKind.MOMENTS

COHORT_STATISTICS_V1 = AnalysisSpec(
    name="cohort_statistics",
    version="1",
    payload_schema=SCHEMA_AGGREGATE_V1,
    description="What a site holds: patients, studies, series and instances by category, age, slice thickness.",
    nested_populations={"patients_with_age": "patients", "series_with_slice_thickness": "series"},
    statistics=(
        StatisticSpec("patients_by_sex", _C, "patients", "patients", description="patients by PatientSex"),
        StatisticSpec(
            "studies_by_year", _C, "studies", "studies", description="studies by year of StudyDate"
        ),
        StatisticSpec("series_by_modality", _C, "series", "series", description="series by modality"),
        StatisticSpec(
            "series_by_body_part", _C, "series", "series", description="series by BodyPartExamined"
        ),
        StatisticSpec("series_by_manufacturer", _C, "series", "series", description="series by Manufacturer"),
        StatisticSpec(
            "series_by_acquisition_year", _C, "series", "series", description="series by acquisition year"
        ),
        StatisticSpec(
            "instances_by_modality", _C, "instances", "instances", description="instances by series modality"
        ),
        StatisticSpec(
            "patient_age_histogram",
            _H,
            "patients_with_age",
            "patients",
            AGE_EDGES,
            "patients by age (years) at their first study with a known age",
        ),
        StatisticSpec(
            "patient_age_moments", _M, "patients_with_age", "years", description="patient age (years)"
        ),
        StatisticSpec(
            "slice_thickness_histogram",
            _H,
            "series_with_slice_thickness",
            "series",
            SLICE_THICKNESS_EDGES,
            "series by SliceThickness (mm)",
        ),
        StatisticSpec(
            "slice_thickness_moments",
            _M,
            "series_with_slice_thickness",
            "mm",
            description="series SliceThickness (mm)",
        ),
    ),
)

# The index fields this analysis reads: fetch only these (``_source`` includes) from the search server.
COHORT_SOURCE_FIELDS: tuple[str, ...] = (
    "PatientID",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "SliceThickness",
    "kaapana.modality",
    "kaapana.patient_age_years",
    "kaapana.instance_count",
    "kaapana.acquisition.start",
)


def _get(document: Mapping[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _text(document: Mapping[str, Any], *fields: str) -> str | None:
    for name in fields:
        value = _get(document, name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _year(value: str | None) -> str | None:
    if value and len(value) >= 4 and value[:4].isdigit():
        return value[:4]
    return None


def _in_edges(value: float | None, edges: tuple[float, ...]) -> float | None:
    """The value if it lies within the edges; outside (implausible) values count as missing."""
    return value if value is not None and bin_index(value, edges) is not None else None


def patient_key(document: Mapping[str, Any]) -> str:
    # Without a PatientID each study is its own patient. Patient IDs of different issuers may collide;
    # that under-counts patients, which makes the k-threshold stricter, not weaker.
    pid = _text(document, "PatientID")
    if pid:
        return "patient:" + pid
    study = _text(document, "StudyInstanceUID") or _text(document, "SeriesInstanceUID") or "?"
    return "study:" + study


def compute_cohort_statistics(documents: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The statistics of :data:`COHORT_STATISTICS_V1` from series index documents (site stage).

    Every counts and histogram statistic carries ``contributors`` (distinct patients per cell), which
    the guard thresholds on and strips. The result does not depend on the order of ``documents``.
    """
    docs = sorted(
        documents,
        key=lambda d: (_text(d, "SeriesInstanceUID") or "", _text(d, "StudyInstanceUID") or ""),
    )
    series_patient: list[str] = []
    modality: list[str | None] = []
    body_part: list[str | None] = []
    manufacturer: list[str | None] = []
    acquisition_year: list[str | None] = []
    instances: list[int] = []
    thickness: list[float | None] = []
    studies: dict[str, tuple[str, str | None]] = {}  # study -> (patient, study date)
    sex: dict[str, str | None] = {}  # patient -> first non-empty PatientSex
    first_age: dict[str, tuple[str, float]] = {}  # patient -> (study date, age) of the earliest study

    for doc in docs:
        patient = patient_key(doc)
        series_patient.append(patient)
        modality.append(_text(doc, "kaapana.modality", "Modality"))
        body_part.append(_text(doc, "BodyPartExamined"))
        manufacturer.append(_text(doc, "Manufacturer"))
        acquisition_year.append(
            _year(_text(doc, "kaapana.acquisition.start", "AcquisitionDate", "SeriesDate", "StudyDate"))
        )
        count = _get(doc, "kaapana.instance_count")
        instances.append(
            count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else 1
        )
        thickness.append(_in_edges(_number(_get(doc, "SliceThickness")), SLICE_THICKNESS_EDGES))
        study_date = _text(doc, "StudyDate")
        study = _text(doc, "StudyInstanceUID") or "series:" + (_text(doc, "SeriesInstanceUID") or "?")
        studies.setdefault(study, (patient, study_date))
        if sex.get(patient) is None:
            sex[patient] = _text(doc, "PatientSex")
        age = _in_edges(_number(_get(doc, "kaapana.patient_age_years")), AGE_EDGES)
        if age is not None:
            candidate = (study_date or "9999-99-99", age)
            if patient not in first_age or candidate < first_age[patient]:
                first_age[patient] = candidate

    patients = sorted(sex)
    study_keys = sorted(studies)
    sex_labels = [_sex(sex[p]) for p in patients]
    ages = [first_age[p][1] if p in first_age else None for p in patients]
    return {
        "patients_by_sex": counts(sex_labels, who=patients),
        "studies_by_year": counts(
            [_year(studies[s][1]) for s in study_keys], who=[studies[s][0] for s in study_keys]
        ),
        "series_by_modality": counts(modality, who=series_patient),
        "series_by_body_part": counts(body_part, who=series_patient),
        "series_by_manufacturer": counts(manufacturer, who=series_patient),
        "series_by_acquisition_year": counts(acquisition_year, who=series_patient),
        "instances_by_modality": counts(modality, who=series_patient, weights=instances),
        "patient_age_histogram": histogram(ages, AGE_EDGES, who=patients),
        "patient_age_moments": moments(ages, who=patients),
        "slice_thickness_histogram": histogram(thickness, SLICE_THICKNESS_EDGES, who=series_patient),
        "slice_thickness_moments": moments(thickness, who=series_patient),
    }


def _sex(value: str | None) -> str | None:
    """M, F, O or None (-> UNKNOWN): DICOM's enumerated PatientSex, nothing else."""
    value = (value or "").strip().upper()
    return value if value in ("M", "F", "O") else None


def cohort_statistics(documents: Iterable[Mapping[str, Any]], *, job_id: str, site: str) -> dict[str, Any]:
    """The site's result document for one cohort-statistics job, before the egress guard."""
    return result_document(
        job_id=job_id,
        analysis=COHORT_STATISTICS_V1,
        site=site,
        statistics=compute_cohort_statistics(documents),
    )


__all__ = [
    "AGE_EDGES",
    "COHORT_SOURCE_FIELDS",
    "COHORT_STATISTICS_V1",
    "SLICE_THICKNESS_EDGES",
    "cohort_statistics",
    "compute_cohort_statistics",
]
