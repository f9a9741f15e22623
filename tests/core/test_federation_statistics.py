"""The payload vocabulary: builders, labels, and the aggregate/v1 schema that refuses anything unknown."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from airflow_provider_kaapana.core.federation.cohort import (
    AGE_EDGES,
    COHORT_STATISTICS_V1,
    compute_cohort_statistics,
)
from airflow_provider_kaapana.core.federation.statistics import (
    OTHER,
    SCHEMA_AGGREGATE_V1,
    UNKNOWN,
    StatisticKind,
    StatisticSpec,
    canonical_json_bytes,
    counts,
    get_payload_schema,
    histogram,
    identifier_kind,
    moments,
    normalise_label,
    result_document,
    validate_aggregate_v1,
)
from airflow_provider_kaapana.exceptions import PayloadSchemaError


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("  ct ", "CT"),
        ("GE  Medical\tSystems", "GE MEDICAL SYSTEMS"),
        (["MR", "CT"], "MR"),
        (None, UNKNOWN),
        ("   ", UNKNOWN),
        ("Doe^John", OTHER),  # a person name
        ("1.2.840.113619.2.55", OTHER),  # a UID
        ("19700101", OTHER),  # a date
        ("x" * 65, OTHER),  # too long
        ('Evil"quote', OTHER),
    ],
)
def test_labels_are_normalised_and_unsafe_ones_folded(raw, label):
    assert normalise_label(raw) == label


def test_counts_builder_with_contributors_and_weights():
    stat = counts(["ct", "CT", "mr", None], who=["p1", "p1", "p2", "p3"], weights=[10, 5, 3, 1])
    assert stat == {
        "kind": "counts",
        "cells": {"CT": 15, "MR": 3, "UNKNOWN": 1},
        "total": 19,
        "contributors": {"CT": 1, "MR": 1, "UNKNOWN": 1},
        "total_contributors": 3,
    }


def test_counts_folds_the_smallest_categories_beyond_max_cells():
    labels = ["A"] * 5 + ["B"] * 4 + ["C"] * 2 + ["D"]
    stat = counts(labels, max_cells=3)
    assert stat["cells"] == {"A": 5, "B": 4, "OTHER": 3}


def test_moments_and_histogram_builders_match_numpy():
    rng = np.random.default_rng(0)
    values = list(rng.uniform(0, 120, 500))
    m = moments([*values, None])
    assert m["n"] == 500
    mean = m["sum"] / m["n"]
    var = (m["sum_sq"] - m["sum"] ** 2 / m["n"]) / (m["n"] - 1)
    assert math.isclose(mean, np.mean(values), rel_tol=1e-12)
    assert math.isclose(var, np.var(values, ddof=1), rel_tol=1e-9)
    h = histogram(values, AGE_EDGES)
    expected, _ = np.histogram(values, bins=AGE_EDGES)  # numpy: last bin closed, like ours
    assert h["counts"] == expected.tolist()
    assert histogram([120.0], AGE_EDGES)["counts"][-1] == 1
    with pytest.raises(ValueError, match="outside the histogram edges"):
        histogram([121.0], AGE_EDGES)


def test_there_is_no_min_or_max_kind():
    assert {k.value for k in StatisticKind} == {"counts", "moments", "histogram"}


def test_histogram_spec_needs_increasing_edges():
    with pytest.raises(ValueError, match="strictly increasing"):
        StatisticSpec("h", StatisticKind.HISTOGRAM, "p", "u", (0, 10, 5))


def site_document() -> dict:
    docs = [
        {
            "PatientID": f"P{i}",
            "Modality": "CT",
            "SliceThickness": 1.0,
            "kaapana": {"patient_age_years": 40.0},
        }
        for i in range(20)
    ]
    return result_document(
        job_id="kaapana_federated_cohort_statistics/r1",
        analysis=COHORT_STATISTICS_V1,
        site="alpha",
        statistics=compute_cohort_statistics(docs),
    )


def test_a_site_document_validates():
    doc = site_document()
    validate_aggregate_v1(doc, COHORT_STATISTICS_V1, "site")
    assert get_payload_schema(SCHEMA_AGGREGATE_V1).record_level is False


def _mutations():
    def unknown_top(d):
        d["note"] = "x"

    def unknown_stat_key(d):
        d["statistics"]["series_by_modality"]["min"] = 1

    def unknown_statistic(d):
        d["statistics"]["patient_ids"] = {"kind": "counts", "cells": {}, "total": 0}

    def wrong_kind(d):
        d["statistics"]["series_by_modality"]["kind"] = "minmax"

    def kind_mismatch(d):
        d["statistics"]["patient_age_moments"] = copy.deepcopy(d["statistics"]["series_by_modality"])

    def other_edges(d):
        d["statistics"]["patient_age_histogram"]["edges"][1] = 17.0

    def bad_total(d):
        d["statistics"]["series_by_modality"]["total"] += 1

    def bad_label(d):
        cells = d["statistics"]["series_by_modality"]["cells"]
        cells["ct lower"] = cells.pop("CT")

    def bool_count(d):
        d["statistics"]["series_by_modality"]["cells"]["CT"] = True

    def inconsistent_moments(d):
        d["statistics"]["patient_age_moments"]["sum_sq"] = 1.0

    def wrong_schema(d):
        d["schema"] = "kaapana.federated.records/v1"

    return [
        unknown_top,
        unknown_stat_key,
        unknown_statistic,
        wrong_kind,
        kind_mismatch,
        other_edges,
        bad_total,
        bad_label,
        bool_count,
        inconsistent_moments,
        wrong_schema,
    ]


@pytest.mark.parametrize("mutate", _mutations(), ids=lambda f: f.__name__)
def test_schema_refuses_unknown_keys_kinds_and_inconsistencies(mutate):
    doc = site_document()
    mutate(doc)
    with pytest.raises(PayloadSchemaError):
        validate_aggregate_v1(doc, COHORT_STATISTICS_V1, "site")


def test_schema_errors_never_show_unknown_keys_or_labels():
    doc = site_document()
    doc["statistics"]["series_by_modality"]["SMITH^JANE"] = 1
    with pytest.raises(PayloadSchemaError) as info:
        validate_aggregate_v1(doc, COHORT_STATISTICS_V1, "site")
    assert "SMITH" not in str(info.value)


def test_canonical_bytes_are_sorted_compact_ascii():
    assert canonical_json_bytes({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'
    with pytest.raises(PayloadSchemaError):
        canonical_json_bytes({"x": float("inf")})


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "DICOM UID"),
        ("see 2.25.1234567 here", "DICOM UID"),
        ("DOE^JOHN", "person name"),
        ("19700101", "date"),
        ("1970-01-01", "date"),
        ("1.25", None),  # a decimal, not a UID
        ("1.2.3", None),  # too few components
        ("2026", None),
        ("GE MEDICAL SYSTEMS", None),
        ("12345678", None),  # eight digits but not a date
    ],
)
def test_identifier_patterns(text, kind):
    assert identifier_kind(text) == kind
