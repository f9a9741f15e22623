"""Cohort statistics at one site, from index documents built from real synthetic DICOM."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest

from airflow_provider_kaapana.core.federation.cohort import (
    COHORT_SOURCE_FIELDS,
    COHORT_STATISTICS_V1,
    cohort_statistics,
    compute_cohort_statistics,
)
from airflow_provider_kaapana.core.federation.statistics import validate_aggregate_v1
from airflow_provider_kaapana.testing.federation import synthetic_site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return synthetic_site(
        tmp_path_factory.mktemp("cohort"), "delta", n_patients=15, seed=7, unknown_age_patients=2
    )


def test_statistics_match_what_was_written(site):
    stats = compute_cohort_statistics(site.documents)
    truth = site.truth
    patients = {}
    for t in sorted(truth, key=lambda t: t.study_date):
        patients.setdefault(t.patient_id, t)
    assert stats["patients_by_sex"]["cells"] == dict(
        sorted(Counter(t.sex or "UNKNOWN" for t in patients.values()).items())
    )
    assert stats["patients_by_sex"]["total"] == 15
    assert stats["studies_by_year"]["total"] == len({t.study_instance_uid for t in truth})
    assert stats["series_by_modality"]["cells"] == dict(sorted(Counter(t.modality for t in truth).items()))
    assert stats["instances_by_modality"]["total"] == sum(t.instances for t in truth)
    assert stats["series_by_manufacturer"]["cells"].keys() <= {
        "SIEMENS",
        "GE MEDICAL SYSTEMS",
        "PHILIPS MEDICAL SYSTEMS",
        "CANON MEDICAL SYSTEMS",
    }
    # contributors are distinct patients
    by_modality = {
        m: len({t.patient_id for t in truth if t.modality == m}) for m in stats["series_by_modality"]["cells"]
    }
    assert stats["series_by_modality"]["contributors"] == by_modality
    assert stats["series_by_modality"]["total_contributors"] == 15
    # age: one value per patient (the first study), patients without age left out
    ages = [t.age_years for t in patients.values() if t.age_years is not None]
    assert len(ages) == 13
    assert stats["patient_age_moments"]["n"] == 13
    assert math.isclose(stats["patient_age_moments"]["sum"], sum(ages))
    assert sum(stats["patient_age_histogram"]["counts"]) == 13
    thickness = np.array([t.slice_thickness for t in truth])
    assert math.isclose(stats["slice_thickness_moments"]["sum_sq"], float((thickness**2).sum()))


def test_result_document_is_a_valid_site_document(site):
    document = cohort_statistics(
        site.documents, job_id="kaapana_federated_cohort_statistics/r1", site="delta"
    )
    validate_aggregate_v1(document, COHORT_STATISTICS_V1, "site")
    assert document["schema"] == "kaapana.federated.aggregate/v1"


def test_order_of_documents_does_not_matter(site):
    assert compute_cohort_statistics(site.documents) == compute_cohort_statistics(
        list(reversed(site.documents))
    )


def _project(document: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted in fields:
        src: Any = document
        for part in dotted.split("."):
            src = src.get(part) if isinstance(src, dict) else None
        if src is None:
            continue
        dst = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            dst = dst.setdefault(part, {})
        dst[parts[-1]] = src
    return out


def test_source_fields_are_all_the_analysis_reads(site):
    """A search query may fetch only COHORT_SOURCE_FIELDS (no names, no birth dates)."""
    projected = [_project(doc, COHORT_SOURCE_FIELDS) for doc in site.documents]
    assert all("PatientName" not in doc and "PatientBirthDate" not in doc for doc in projected)
    assert compute_cohort_statistics(projected) == compute_cohort_statistics(site.documents)


def test_labels_are_normalised_and_implausible_values_are_missing():
    docs = [
        {
            "PatientID": "A",
            "Modality": " mr ",
            "Manufacturer": "Doe^Jane",
            "kaapana": {"patient_age_years": 130.0},
        },
        {"PatientID": "B", "Modality": "CT", "BodyPartExamined": "", "SliceThickness": -1.0},
        {"PatientID": "B", "Modality": "CT", "PatientSex": "x", "SliceThickness": "2.5"},
    ]
    stats = compute_cohort_statistics(docs)
    assert stats["series_by_modality"]["cells"] == {"CT": 2, "MR": 1}
    assert stats["series_by_manufacturer"]["cells"] == {"OTHER": 1, "UNKNOWN": 2}
    assert stats["series_by_body_part"]["cells"] == {"UNKNOWN": 3}
    assert stats["patients_by_sex"]["cells"] == {"UNKNOWN": 2}
    assert stats["patient_age_moments"]["n"] == 0  # 130 years lies outside the agreed edges
    assert stats["slice_thickness_moments"]["n"] == 1 and stats["slice_thickness_moments"]["sum"] == 2.5
