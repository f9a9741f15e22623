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
