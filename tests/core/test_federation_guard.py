"""The egress guard: small cells suppressed beyond recovery, identifiers refused, schema and size enforced."""

from __future__ import annotations

import copy
import itertools
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from airflow_provider_kaapana.core.federation import statistics as stats_module
from airflow_provider_kaapana.core.federation.cohort import COHORT_STATISTICS_V1, cohort_statistics
from airflow_provider_kaapana.core.federation.guard import (
    KnownIdentifiers,
    collect_known_identifiers,
    guard_egress,
    verify_received,
)
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.statistics import (
    AnalysisSpec,
    PayloadSchema,
    StatisticKind,
    StatisticSpec,
)
from airflow_provider_kaapana.exceptions import EgressRefused, PayloadSchemaError

JOB = FederatedJob.for_run(
    COHORT_STATISTICS_V1, "manual__2026-11-26T10:00:00+00:00", created="2026-11-26T10:00:00Z"
)
POLICY = SitePolicy(site="alpha", allowed_analyses={"cohort_statistics": ("1",)})
_SERIAL = itertools.count(1)


def index_doc(
    patient: str,
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    manufacturer: str = "SIEMENS",
    sex: str = "M",
    age: float | None = 45.0,
    thickness: float | None = 1.0,
    study: str | None = None,
    series: str | None = None,
    date: str = "2024-03-01",
    instances: int = 10,
) -> dict[str, Any]:
    """A series index document with the fields the cohort analysis reads (see core/index/document.py)."""
    series = series or f"1.2.826.0.1.3680043.10.1337.1.{next(_SERIAL)}"
    return {
        "PatientID": patient,
        "PatientName": f"Doe^{patient}",
        "PatientBirthDate": "1979-05-17",
        "PatientSex": sex,
        "StudyInstanceUID": study or f"1.2.826.0.1.3680043.10.1337.2.{next(_SERIAL)}",
        "SeriesInstanceUID": series,
        "StudyDate": date,
        "Modality": modality,
        "BodyPartExamined": body_part,
        "Manufacturer": manufacturer,
        "SliceThickness": thickness,
        "kaapana": {"modality": modality, "patient_age_years": age, "instance_count": instances},
    }


def site_docs(modalities: Mapping[str, int], *, unknown_age: int = 0) -> list[dict[str, Any]]:
    """One series per patient; ``modalities`` gives the number of patients per modality."""
    docs = []
    for modality, n in modalities.items():
        for i in range(n):
            patient = f"{modality}{i:04d}"
            age = None if len(docs) < unknown_age else 20.0 + (len(docs) * 7) % 60
            docs.append(index_doc(patient, modality=modality, age=age, body_part=("CHEST", "HEAD")[i % 2]))
    return docs


def guard(docs, **kwargs):
    document = cohort_statistics(docs, job_id=JOB.job_id, site="alpha")
    return guard_egress(document, job=JOB, policy=kwargs.pop("policy", POLICY), **kwargs)


# --------------------------------------------------------------------------------------------------
# the attacker: what can a coordinator compute from a released document?


def population_totals(document: Mapping[str, Any]) -> dict[str, int]:
    """Every population total that follows from the published values."""
    totals: dict[str, int] = {}
    for name, spec in COHORT_STATISTICS_V1.by_name.items():
        stat = document["statistics"][name]
        if stat["withheld"]:
            continue
        if spec.kind is StatisticKind.MOMENTS:
            totals[spec.population] = stat["n"]
        elif spec.kind is StatisticKind.COUNTS and stat["total"] is not None:
            totals[spec.population] = stat["total"]
        elif spec.kind is StatisticKind.HISTOGRAM and None not in stat["counts"]:
            totals[spec.population] = sum(stat["counts"])
    return totals


def recover_small_cells(document: Mapping[str, Any], k: int) -> dict[tuple[str, Any], int]:
    """Cells below k that the published values determine exactly.

    A suppressed cell is recovered when it is the only unknown of a statistic whose population total is
    known from any statistic of the same population; a nested population's difference to its parent is
    a cell too (e.g. patients without a known age).
    """
    totals = population_totals(document)
    recovered: dict[tuple[str, Any], int] = {}
    for name, spec in COHORT_STATISTICS_V1.by_name.items():
        stat = document["statistics"][name]
        if spec.kind is StatisticKind.MOMENTS or stat["withheld"] or spec.population not in totals:
            continue
        values = stat["cells"] if spec.kind is StatisticKind.COUNTS else dict(enumerate(stat["counts"]))
        unknown = [key for key, value in values.items() if value is None]
        if len(unknown) == 1:
            value = totals[spec.population] - sum(v for v in values.values() if v is not None)
            if 0 < value < k:
                recovered[(name, unknown[0])] = value
    for sub, parent in COHORT_STATISTICS_V1.nested_populations.items():
        if sub in totals and parent in totals and 0 < totals[parent] - totals[sub] < k:
            recovered[(f"{parent} minus {sub}", None)] = totals[parent] - totals[sub]
    return recovered


def test_a_single_small_cell_is_suppressed_with_a_complementary_cell():
    result = guard(site_docs({"CT": 30, "MR": 20, "PT": 3}))
    stat = result.document["statistics"]["series_by_modality"]
    assert stat["cells"] == {"CT": 30, "MR": None, "PT": None}
    assert stat["suppressed"] == ["MR", "PT"] and stat["total"] == 53
    kinds = {(a.statistic, a.cell): a.action for a in result.actions}
    assert kinds[("series_by_modality", "PT")] == "suppressed"
    assert kinds[("series_by_modality", "MR")] == "complementary"
    assert recover_small_cells(result.document, result.k) == {}
    verify_received(result.document, job=JOB, site="alpha")


def test_the_attacker_does_recover_a_cell_without_complementary_suppression():
    """The recovery test is real: with only primary suppression the small cell is computed back."""
    result = guard(site_docs({"CT": 30, "MR": 20, "PT": 3}))
    naive = copy.deepcopy(result.document)
    naive["statistics"]["series_by_modality"]["cells"]["MR"] = 20
    assert recover_small_cells(naive, result.k) == {("series_by_modality", "PT"): 3}
    # ... and from another statistic of the same population when the total itself is hidden
    naive["statistics"]["series_by_modality"]["total"] = None
    assert population_totals(naive)["series"] == 53
    assert ("series_by_modality", "PT") in recover_small_cells(naive, result.k)


def test_small_cells_follow_distinct_patients_not_series():
    """12 series of 2 patients are 2 individuals: below k although 12 >= k."""
    docs = site_docs({"CT": 30, "MR": 20})
    docs += [index_doc(f"PT{i % 2}", modality="PT", series=f"1.2.3.4.{i}") for i in range(12)]
    result = guard(docs)
    stat = result.document["statistics"]["series_by_modality"]
    assert stat["cells"]["PT"] is None and stat["cells"]["MR"] is None and stat["total"] == 62
    assert "contributors" not in stat and "total_contributors" not in stat
    assert recover_small_cells(result.document, result.k) == {}


def test_a_population_below_k_is_withheld_everywhere():
    result = guard(site_docs({"CT": 4, "MR": 2}))
    for name, stat in result.document["statistics"].items():
        assert stat["withheld"], name
    assert recover_small_cells(result.document, result.k) == {}
    verify_received(result.document, job=JOB, site="alpha")


def test_patients_of_unknown_age_below_k_withhold_the_age_statistics():
    result = guard(site_docs({"CT": 100, "MR": 20}, unknown_age=3))
    released = result.document["statistics"]
    assert released["patient_age_moments"]["withheld"] and released["patient_age_histogram"]["withheld"]
    assert released["patients_by_sex"]["total"] == 120  # the parent stays published
    assert recover_small_cells(result.document, result.k) == {}
    assert "patient_age_moments" in result.withheld


def test_moments_below_k_are_withheld_entirely():
    docs = site_docs({"CT": 30})
    for doc in docs[:25]:
        doc["SliceThickness"] = None  # only 5 series have a thickness
    result = guard(docs)
    moments = result.document["statistics"]["slice_thickness_moments"]
    assert moments == {"kind": "moments", "n": None, "sum": None, "sum_sq": None, "withheld": True}


def test_histogram_with_too_many_bins_for_its_count_is_withheld():
    result = guard(site_docs({"CT": 60}))  # 8 age bins for 60 patients: above FLARE's 10 %
    assert result.document["statistics"]["patient_age_histogram"]["withheld"]
    assert result.document["statistics"]["patient_age_histogram"]["counts"] == [None] * 8
    assert not result.document["statistics"]["patient_age_moments"]["withheld"]  # not a privacy withholding
    relaxed = guard(site_docs({"CT": 60}), max_bins_fraction=0.2)
    assert not relaxed.document["statistics"]["patient_age_histogram"]["withheld"]


def test_site_k_floor_beats_a_lower_job_k():
    job = FederatedJob.for_run(COHORT_STATISTICS_V1, "r2", k=2, created="2026-11-26T10:00:00Z")
    document = cohort_statistics(site_docs({"CT": 30, "MR": 20, "PT": 3}), job_id=job.job_id, site="alpha")
    result = guard_egress(document, job=job, policy=POLICY)
    assert result.k == 10 and result.document["k"] == 10
    assert result.document["statistics"]["series_by_modality"]["cells"]["PT"] is None


# --------------------------------------------------------------------------------------------------
# identifiers


def with_label(document: dict, statistic: str, old: str, new: str) -> dict:
    """What buggy analysis code could produce: a category label replaced by ``new``."""
    document = copy.deepcopy(document)
    stat = document["statistics"][statistic]
    stat["cells"][new] = stat["cells"].pop(old)
    stat["contributors"][new] = stat["contributors"].pop(old)
    return document


@pytest.mark.parametrize(
    ("label", "what"),
    [
        ("1.2.826.0.1.3680043.10.1337.77", "DICOM UID"),
        ("DOE^JANE", "person name"),
        ("19790517", "date"),
        ("1979-05-17", "date"),
    ],
)
def test_identifier_patterns_are_refused_without_echoing_them(label, what):
    document = cohort_statistics(site_docs({"CT": 30, "MR": 20}), job_id=JOB.job_id, site="alpha")
    bad = with_label(document, "series_by_manufacturer", "SIEMENS", label)
    with pytest.raises(EgressRefused) as info:
        guard_egress(bad, job=JOB, policy=POLICY)
    assert info.value.code == "identifier"
    assert what in str(info.value)
    assert label not in str(info.value) and label[1:] not in str(info.value)


@pytest.mark.parametrize("label", ["CT0007", "DOE CT0007", "DOE, CT0007"])
def test_the_sites_own_identifiers_are_refused(label):
    docs = site_docs({"CT": 30, "MR": 20})
    document = cohort_statistics(docs, job_id=JOB.job_id, site="alpha")
    bad = with_label(document, "series_by_body_part", "HEAD", label)
    with pytest.raises(EgressRefused) as info:
        guard_egress(bad, job=JOB, policy=POLICY, known_identifiers=collect_known_identifiers(docs))
    assert info.value.code == "identifier" and "known identifier" in str(info.value)
    assert label not in str(info.value)


def test_no_false_positives_on_numbers_years_and_ordinary_labels():
    docs = site_docs({"CT": 30, "MR": 20})
    for doc in docs:
        doc["SliceThickness"] = 1.2345678  # sums such as 61.72839 are JSON numbers, never scanned
        doc["Manufacturer"] = "GE MEDICAL SYSTEMS"
    known = collect_known_identifiers(docs)
    assert len(known) > 100
    result = guard(docs, known_identifiers=known)
    assert result.document["statistics"]["series_by_manufacturer"]["cells"] == {"GE MEDICAL SYSTEMS": 50}
    assert result.document["statistics"]["studies_by_year"]["cells"] == {"2024": 50}


def test_known_identifiers_match_whole_tokens_and_both_date_forms():
    known = KnownIdentifiers(["Doe^John", "19700101", "AB", "12345"])
    assert known.found_in("DOE JOHN") and known.found_in("doe, john") and known.found_in("X 1970-01-01")
    assert not known.found_in("ABDOMEN")  # "AB" is too short to match at all
    assert not known.found_in("123456") and known.found_in("ID 12345")


# --------------------------------------------------------------------------------------------------
# schema, envelope, policy, size


def test_unknown_statistic_or_key_is_refused():
    document = cohort_statistics(site_docs({"CT": 30}), job_id=JOB.job_id, site="alpha")
    extra_key = copy.deepcopy(document)
    extra_key["statistics"]["series_by_modality"]["max"] = 97
    with pytest.raises(EgressRefused) as info:
        guard_egress(extra_key, job=JOB, policy=POLICY)
    assert info.value.code == "schema"
    extra_stat = copy.deepcopy(document)
    extra_stat["statistics"]["age_max"] = {"kind": "moments", "n": 1, "sum": 97.0, "sum_sq": 9409.0}
    with pytest.raises(EgressRefused, match="not in cohort_statistics"):
        guard_egress(extra_stat, job=JOB, policy=POLICY)


def test_histogram_edges_must_be_the_pre_agreed_ones():
    document = cohort_statistics(site_docs({"CT": 100}), job_id=JOB.job_id, site="alpha")
    document["statistics"]["patient_age_histogram"]["edges"][3] = 41.0
    with pytest.raises(EgressRefused, match="pre-agreed edges"):
        guard_egress(document, job=JOB, policy=POLICY)


def test_document_of_another_job_or_site_is_refused():
    document = cohort_statistics(site_docs({"CT": 30}), job_id=JOB.job_id, site="beta")
    with pytest.raises(EgressRefused, match="site is not this job's"):
        guard_egress(document, job=JOB, policy=POLICY)


def test_guard_refuses_a_job_the_policy_refuses():
    document = cohort_statistics(site_docs({"CT": 30}), job_id=JOB.job_id, site="alpha")
    policy = SitePolicy(site="alpha", allowed_analyses={"cohort_statistics": ("2",)})
    with pytest.raises(EgressRefused) as info:
        guard_egress(document, job=JOB, policy=policy)
    assert info.value.code == "policy"


def test_size_limit():
    docs = site_docs({"CT": 30})
    for i, doc in enumerate(docs):
        doc["Manufacturer"] = f"VENDOR {i // 10}"  # 3 manufacturers of 10 patients each
    ok = guard(docs)
    size = len(ok.payload)
    assert guard(docs, policy=SitePolicy("alpha", {"cohort_statistics": "*"}, max_payload_bytes=size)).payload
    with pytest.raises(EgressRefused) as info:
        guard(docs, policy=SitePolicy("alpha", {"cohort_statistics": "*"}, max_payload_bytes=size - 1))
    assert info.value.code == "size" and str(size) in str(info.value)
    assert pickle.loads(pickle.dumps(info.value)).code == "size"  # crosses process boundaries intact


def test_record_level_payloads_are_refused_by_the_v1_guard(monkeypatch):
    schema = PayloadSchema(
        "kaapana.federated.records/v1", "rows", record_level=True, validate=lambda d, a, s: None
    )
    monkeypatch.setitem(stats_module._PAYLOAD_SCHEMAS, schema.schema_id, schema)
    spec = AnalysisSpec(
        name="cohort_statistics",
        version="1",
        payload_schema=schema.schema_id,
        statistics=(StatisticSpec("rows", StatisticKind.COUNTS, "series", "series"),),
    )
    document = {
        "schema": schema.schema_id,
        "job_id": JOB.job_id,
        "analysis": "cohort_statistics",
        "analysis_version": "1",
        "site": "alpha",
        "statistics": {},
    }
    with pytest.raises(EgressRefused, match="record-level"):
        guard_egress(document, job=JOB, policy=POLICY, analysis=spec)


def test_coordinator_check_drops_small_cells_and_identifiers():
    result = guard(site_docs({"CT": 30, "MR": 20, "PT": 3}))
    tampered = copy.deepcopy(result.document)
    tampered["statistics"]["series_by_modality"]["cells"]["PT"] = 3
    tampered["statistics"]["series_by_modality"]["suppressed"] = ["MR"]
    with pytest.raises(PayloadSchemaError, match="below k"):
        verify_received(tampered, job=JOB, site="alpha")
    uid = copy.deepcopy(result.document)
    cells = uid["statistics"]["series_by_body_part"]["cells"]
    cells["1.2.840.113619.2.55.3.1"] = cells.pop("HEAD")
    with pytest.raises(PayloadSchemaError, match="DICOM UID"):
        verify_received(uid, job=JOB, site="alpha")
    with pytest.raises(PayloadSchemaError, match="site is not beta"):
        verify_received(result.document, job=JOB, site="beta")
