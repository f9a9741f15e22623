"""Segmentation statistics, the second federated analysis: per-label volumes and HU from SEG documents."""

from __future__ import annotations

import math
import random
import statistics as pystats
from typing import Any

import pytest

from airflow_provider_kaapana.core.federation.aggregate import SiteResult, aggregate_results
from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.segmentation import (
    SEGMENTATION_STATISTICS_V1,
    compute_segmentation_statistics,
    segmentation_statistics,
)
from airflow_provider_kaapana.core.federation.site import analyse, site_documents
from airflow_provider_kaapana.core.federation.statistics import validate_aggregate_v1

JOB = FederatedJob.for_run(
    SEGMENTATION_STATISTICS_V1,
    "manual__2026-12-01T10:00:00+00:00",
    parameters={"label": "Liver"},
    created="2026-12-01T10:00:00Z",
)


def seg_document(patient: str, series: str, segments: list[dict[str, Any]]) -> dict[str, Any]:
    """A SEG series document as the index holds it (``kaapana.segments`` from the statistics step)."""
    return {
        "PatientID": patient,
        "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1337.7.{series}.1",
        "SeriesInstanceUID": f"1.2.826.0.1.3680043.10.1337.7.{series}.2",
        "Modality": "SEG",
        "kaapana": {"segments": segments},
    }


def site_documents_for(name: str, n_patients: int, seed: int) -> tuple[list[dict[str, Any]], list[tuple]]:
    """SEG documents of ``n_patients`` (a liver on CT for each, a spleen for some, an empty kidney), and
    the truth: (patient, volume, HU mean or None) of every liver."""
    rng = random.Random(seed)
    documents, livers = [], []
    for p in range(n_patients):
        patient = f"{name.upper()}{p:04d}"
        volume = round(rng.uniform(900, 2200), 3)
        ct = p % 4 != 0  # every fourth patient's segmentation is on MR: no HU
        mean = round(rng.uniform(40, 70), 3) if ct else round(rng.uniform(200, 900), 3)
        liver = {
            "segment_number": 1,
            "label": "liver" if p % 3 else "Organ 1",  # a third name it only in the code meaning
            "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"},
            "empty": False,
            "volume_ml": volume,
            "mean": mean,
            "intensity_unit": "HU" if ct else "",
        }
        segments = [liver, {"segment_number": 3, "label": "kidney", "empty": True, "voxel_count": 0}]
        if p % 2:
            segments.append(
                {"segment_number": 2, "label": "spleen", "empty": False, "volume_ml": 180.0, "mean": 45.0}
            )
        documents.append(seg_document(patient, f"{seed}{p}", segments))
        livers.append((patient, volume, mean if ct else None))
    return documents, livers


def test_statistics_match_the_segments_written():
    documents, livers = site_documents_for("alpha", 24, seed=1)
    stats = compute_segmentation_statistics(documents, "  LIVER ")
    volumes = [v for _, v, _ in livers]
    assert stats["label_volume_moments"]["n"] == 24
    assert math.isclose(stats["label_volume_moments"]["sum"], math.fsum(volumes))
    assert math.isclose(stats["label_volume_moments"]["sum_sq"], math.fsum(v * v for v in volumes))
    assert stats["label_volume_moments"]["contributors"] == 24
    assert sum(stats["label_volume_histogram"]["counts"]) == 24
    hu = [m for _, _, m in livers if m is not None]
    assert stats["label_mean_hu_moments"]["n"] == len(hu) == 18  # MR means are not HU
    assert math.isclose(stats["label_mean_hu_moments"]["sum"], math.fsum(hu))
    # every label the site holds, by name; empty segments are not counted
    assert stats["segments_by_label"]["cells"] == {"LIVER": 16, "ORGAN 1": 8, "SPLEEN": 12}
    assert stats["segments_by_label"]["contributors"]["SPLEEN"] == 12


def test_order_of_documents_does_not_matter():
    documents, _ = site_documents_for("beta", 15, seed=2)
    assert compute_segmentation_statistics(documents, "liver") == compute_segmentation_statistics(
        list(reversed(documents)), "liver"
    )


def test_result_document_is_valid_and_needs_a_label():
    documents, _ = site_documents_for("gamma", 12, seed=3)
    document = segmentation_statistics(documents, job_id=JOB.job_id, site="gamma", parameters=JOB.parameters)
    validate_aggregate_v1(document, SEGMENTATION_STATISTICS_V1, "site")
    with pytest.raises(ValueError, match="label"):
        segmentation_statistics(documents, job_id=JOB.job_id, site="gamma", parameters={})
    assert get_analysis("segmentation_statistics", "1") is SEGMENTATION_STATISTICS_V1


def test_three_sites_pool_to_the_statistics_of_their_union():
    """Guarded at each site (k = 10), pooled at the coordinator: equal to the union computed at once."""
    # a quarter of each site's livers are on MR: at least k of them, or the guard would withhold the HU
    # moments (the patients without HU would be a published small cell)
    sites = {"alpha": (48, 11), "beta": (44, 12), "gamma": (40, 13)}
    results, all_livers = {}, []
    for name, (n, seed) in sites.items():
        documents, livers = site_documents_for(name, n, seed)
        all_livers += livers
        policy = SitePolicy.from_dict({"site": name, "allowed_analyses": {"segmentation_statistics": ["1"]}})
        outcome = analyse(JOB, policy, documents)
        assert outcome.status == "ok", outcome.reason
        assert "ALPHA0001" not in str(outcome.document)  # no patient identifier leaves
        results[name] = SiteResult(name, "ok", outcome.document)
    pooled = aggregate_results(JOB, results, expected_sites=sites).statistics
    volumes = [v for _, v, _ in all_livers]
    assert pooled["label_volume_moments"]["n"] == len(volumes) == 132
    assert math.isclose(pooled["label_volume_moments"]["mean"], pystats.fmean(volumes))
    assert math.isclose(pooled["label_volume_moments"]["sd"], pystats.stdev(volumes))
    hu = [m for _, _, m in all_livers if m is not None]
    assert math.isclose(pooled["label_mean_hu_moments"]["mean"], pystats.fmean(hu))


def test_a_small_site_withholds_what_fewer_than_k_patients_show():
    documents, _ = site_documents_for("delta", 8, seed=4)  # 8 patients < k = 10
    policy = SitePolicy.from_dict({"site": "delta", "allowed_analyses": {"segmentation_statistics": ["1"]}})
    outcome = analyse(JOB, policy, documents)
    assert outcome.status == "ok"
    released = outcome.document["statistics"]
    assert released["label_volume_moments"]["withheld"] is True
    assert "contributors" not in str(released)  # the guard strips who-counts before egress


class _RecordingClient:
    """Records the search body; answers with the given documents (one page)."""

    url = "http://search.invalid"

    def __init__(self, documents):
        self.documents = documents
        self.bodies = []

    def search(self, index, body):
        self.bodies.append(body)
        return {"hits": {"hits": [{"_source": d, "sort": [i]} for i, d in enumerate(self.documents)]}}


def test_site_reads_only_seg_documents_with_statistics_and_only_the_fields_it_needs():
    documents, _ = site_documents_for("alpha", 3, seed=5)
    client = _RecordingClient(documents)
    job = FederatedJob.for_run(
        SEGMENTATION_STATISTICS_V1,
        "manual__2026-12-01T11:00:00+00:00",
        parameters={"label": "liver", "body_part": "abdomen"},
        created="2026-12-01T11:00:00Z",
    )
    assert site_documents(job, SEGMENTATION_STATISTICS_V1.parameters, client, "kaapana-series") == documents
    body = client.bodies[0]
    filters = body["query"]["bool"]["filter"]
    assert {
        "nested": {"path": "kaapana.segments", "query": {"exists": {"field": "kaapana.segments"}}}
    } in filters
    assert "abdomen" in str(filters[0]).lower()  # the job's cohort parameter selects
    assert "label" not in str(filters[0])  # the label is not a cohort filter: it picks segments
    fields = body["_source"]
    assert "kaapana.segments.volume_ml" in fields and "kaapana.segments.label" in fields
    # identifiers are fetched only so the guard can refuse them; what the analysis does not read is not
    assert "PatientID" in fields and "kaapana.segments.centroid_lps_mm" not in fields
