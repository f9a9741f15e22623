"""select_cohort by Series Instance UIDs, and what it refuses (a fake client: the queries are covered
against a real server in test_index.py)."""

from __future__ import annotations

import pytest

from airflow_provider_kaapana.core.index.cohort import NOTHING_SELECTED, clean_filters, select_cohort


class FakeClient:
    url = "http://fake"

    def __init__(self, series: dict[str, str]) -> None:
        self.series = series  # series uid -> study uid
        self.bodies: list[dict] = []

    def search(self, index: str, body: dict) -> dict:
        self.bodies.append(body)
        wanted = body["query"].get("terms", {}).get("SeriesInstanceUID", list(self.series))
        uids = sorted(uid for uid in wanted if uid in self.series)[: body["size"]]
        hits = [
            {"_source": {"SeriesInstanceUID": u, "StudyInstanceUID": self.series[u]}, "sort": [u]}
            for u in uids
        ]
        return {"hits": {"hits": hits}}


def test_identifiers_keep_their_order_and_missing_ones_go_to_find_missing():
    client = FakeClient({"1.2.1": "1.1", "1.2.2": "1.1", "1.2.3": "1.9"})
    got = select_cohort(client, identifiers=["1.2.3", "1.2.9", "1.2.1"], limit=None,
                        find_missing=lambda uids: [{"series_instance_uid": u, "study_instance_uid": "7.7"} for u in uids])  # fmt: skip
    assert [g["series_instance_uid"] for g in got] == ["1.2.3", "1.2.9", "1.2.1"]
    assert got[1]["study_instance_uid"] == "7.7"
    assert [
        g["series_instance_uid"] for g in select_cohort(client, identifiers=["1.2.3", "1.2.1"], limit=1)
    ] == ["1.2.3"]
    with pytest.raises(ValueError, match="1.2.9"):
        select_cohort(client, identifiers=["1.2.1", "1.2.9"])


def test_one_selection_only_and_an_empty_one_only_when_allowed():
    client = FakeClient({"1.2.1": "1.1"})
    with pytest.raises(ValueError, match="query and filters"):
        select_cohort(client, query={"match_all": {}}, filters={"modality": "CT"})
    with pytest.raises(ValueError, match="identifiers and query"):
        select_cohort(client, identifiers=["1.2.1"], query={"match_all": {}})
    with pytest.raises(ValueError, match=NOTHING_SELECTED):
        select_cohort(client, require_selection=True)
    assert len(select_cohort(client)) == 1  # everything, when that is what the caller wants
    assert clean_filters({"modality": "CT", "body_part": None, "date_from": "", "x": [], "y": {}}) == {
        "modality": "CT"
    }


def test_evaluation_pairs_by_rule_match_study_and_image_series(osmem):
    """Every SEG of the test rule against every reference SEG of the same study and image series."""
    import uuid

    from airflow_provider_kaapana.core.index.client import (
        bulk_index,
        ensure_index_template,
        make_search_client,
    )
    from airflow_provider_kaapana.core.index.cohort import evaluation_pairs

    client = make_search_client(osmem.url, "opensearch")
    index = f"kaapana-pairs-{uuid.uuid4().hex[:8]}"
    ensure_index_template(client, index)

    def seg(series: str, study: str, image: str, description: str, model: str = "") -> tuple[str, dict]:
        return series, {
            "Modality": "SEG",
            "kaapana": {"modality": "SEG"},  # what the index document builder sets
            "SeriesInstanceUID": series,
            "StudyInstanceUID": study,
            "SeriesDescription": description,
            "ManufacturerModelName": model,
            "ReferencedSeriesSequence": [{"SeriesInstanceUID": image}],
        }

    docs = [
        seg("1.9.1", "1.8.1", "1.7.1", "Liver REFERENCE (expert)"),
        seg("1.9.2", "1.8.1", "1.7.1", "SEG nnunet", "nnunet 501"),
        seg("1.9.3", "1.8.1", "1.7.2", "reference of another image"),  # same study, other series
        seg("1.9.4", "1.8.2", "1.7.3", "SEG nnunet", "nnunet 501"),  # no reference in its study
        seg("1.9.5", "1.8.2", "1.7.3", "SEG other model", "unet 7"),
        ("1.7.1", {"Modality": "CT", "kaapana": {"modality": "CT"}, "SeriesInstanceUID": "1.7.1"}),
    ]
    assert not bulk_index(client, index, docs, refresh=True).failed
    pairs = evaluation_pairs(client, index, "*NNUNET 501*", "*reference*")
    assert pairs == [
        {
            "reference": {"series_instance_uid": "1.9.1", "study_instance_uid": "1.8.1"},
            "test": {"series_instance_uid": "1.9.2", "study_instance_uid": "1.8.1"},
        }
    ]
    assert evaluation_pairs(client, index, "*unet 7*", "*reference*") == []
