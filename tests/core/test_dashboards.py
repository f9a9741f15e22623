"""Kibana / OpenSearch Dashboards saved objects: in sync, parseable, consistent, and their
aggregations run against a real index."""

from __future__ import annotations

import json
import uuid

import pytest

from airflow_provider_kaapana.core.index import dashboards
from airflow_provider_kaapana.core.index.client import bulk_index, ensure_index_template, make_search_client
from airflow_provider_kaapana.core.index.document import build_series_documents
from airflow_provider_kaapana.core.index.template import build_index_template


def _load(target: str) -> list[dict]:
    text = (dashboards.DATA_DIR / dashboards.FILES[target]).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("target", sorted(dashboards.FILES))
def test_shipped_files_are_current(target):
    shipped = (dashboards.DATA_DIR / dashboards.FILES[target]).read_text(encoding="utf-8")
    assert shipped == dashboards.to_ndjson(dashboards.build_saved_objects(target)), (
        "regenerate with: python -m airflow_provider_kaapana.core.index.dashboards"
    )


def _agg_fields(objects: list[dict]) -> set[str]:
    fields = set()
    for obj in objects:
        if obj["type"] == "visualization":
            for agg in json.loads(obj["attributes"]["visState"])["aggs"]:
                if "field" in agg["params"]:
                    fields.add(agg["params"]["field"])
    return fields


@pytest.mark.parametrize("target", sorted(dashboards.FILES))
def test_references_are_consistent(target):
    objects = _load(target)
    by_key = {(o["type"], o["id"]) for o in objects}
    assert len(by_key) == len(objects), "duplicate ids"
    kinds = [o["type"] for o in objects]
    assert (
        kinds.count("index-pattern") == 1
        and kinds.count("dashboard") == 1
        and kinds.count("visualization") >= 5
    )
    for obj in objects:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in by_key, f"{obj['id']} references missing {ref}"
        names = {ref["name"] for ref in obj["references"]}
        if obj["type"] == "visualization":
            source = json.loads(obj["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
            assert source["indexRefName"] in names
        if obj["type"] == "dashboard":
            panels = json.loads(obj["attributes"]["panelsJSON"])
            assert {p["panelRefName"] for p in panels} == names
    # every aggregated field is typed by the index template (never left to dynamic guessing)
    props = build_index_template()["template"]["mappings"]["properties"]
    for field in _agg_fields(objects):
        node = props
        for part in field.split("."):
            node = node[part]
            node = node.get("properties", node)
        assert "type" in node, field


@pytest.mark.parametrize("target", sorted(dashboards.FILES))
def test_series_list_shows_thumbnail_as_image_and_viewer_url_as_link(target, synthetic_series, tmp_path):
    from airflow_provider_kaapana.core.workspace import RunWorkspace

    objects = {o["id"]: o for o in _load(target)}
    formats = json.loads(objects[dashboards.INDEX_PATTERN_ID]["attributes"]["fieldFormatMap"])
    assert (
        formats["kaapana.thumbnail"]["id"] == "url"
        and formats["kaapana.thumbnail"]["params"]["type"] == "img"
    )
    assert (
        formats["kaapana.viewer_url"]["id"] == "url"
        and formats["kaapana.viewer_url"]["params"]["type"] == "a"
    )
    series_list = objects[dashboards.SERIES_LIST_ID]
    assert series_list["type"] == "search"
    source = json.loads(series_list["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    assert source["indexRefName"] in {r["name"] for r in series_list["references"]}
    dashboard = objects[dashboards.DASHBOARD_ID]
    assert {"type": "search", "id": dashboards.SERIES_LIST_ID} in [
        {"type": r["type"], "id": r["id"]} for r in dashboard["references"]
    ]
    # every column and formatted field is one a series document has (thumbnail and link when configured)
    series = synthetic_series(slices=3)
    docs, _ = build_series_documents(
        [series.series_dir],
        viewer_url="https://v.example/viewer?StudyInstanceUIDs={study_uid}",
        thumbnails=RunWorkspace(tmp_path / "ws", "d", "r"),
    )
    for field in [*series_list["attributes"]["columns"], *formats]:
        node = docs[0].document
        for part in field.split("."):
            node = node[part]
        assert node not in (None, "", []), field


def _es_aggs(vis_state: dict) -> dict:
    out = {}
    for agg in vis_state["aggs"]:
        params = agg["params"]
        if agg["type"] == "terms":
            out[agg["id"]] = {"terms": {"field": params["field"], "size": params["size"]}}
        elif agg["type"] == "date_histogram":
            out[agg["id"]] = {"date_histogram": {"field": params["field"], "calendar_interval": "month"}}
        elif agg["type"] == "sum":
            out[agg["id"]] = {"sum": {"field": params["field"]}}
    return out


def test_visualization_aggregations_run_on_real_index(osmem, synthetic_series):
    client = make_search_client(osmem.url, "opensearch")
    index = f"kaapana-dash-{uuid.uuid4().hex[:8]}"
    ensure_index_template(client, index)
    series = [
        synthetic_series(seed=71, slices=3, body_part="HEAD", modality="MR", study_date="20250110"),
        synthetic_series(seed=72, slices=3, body_part="CHEST", study_date="20250320"),
        synthetic_series(seed=73, slices=3, body_part="CHEST", study_date="20250321"),
    ]
    docs, _ = build_series_documents([s.series_dir for s in series])
    assert not bulk_index(client, index, [(d.doc_id, d.document) for d in docs], refresh=True).failed
    results = {}
    for obj in _load("opensearch-dashboards"):
        if obj["type"] != "visualization":
            continue
        vis_state = json.loads(obj["attributes"]["visState"])
        if vis_state["type"] == "vega":
            continue  # sends its own request: test_segment_volume_panel_runs_on_real_index
        response = client.search(index, {"size": 0, "aggs": _es_aggs(vis_state)})
        results[obj["id"]] = response["aggregations"]
    modality = {b["key"]: b["doc_count"] for b in results["kaapana-series-by-modality"]["2"]["buckets"]}
    assert modality == {"CT": 2, "MR": 1}
    body = {b["key"]: b["doc_count"] for b in results["kaapana-series-by-body-part"]["2"]["buckets"]}
    assert body == {"CHEST": 2, "HEAD": 1}
    months = [b["doc_count"] for b in results["kaapana-series-by-date"]["2"]["buckets"] if b["doc_count"]]
    assert months == [1, 2]
    assert results["kaapana-totals"]["1"]["value"] == 9
    complete = results["kaapana-series-completeness"]["2"]["buckets"]
    assert [(b.get("key_as_string", b["key"]), b["doc_count"]) for b in complete] in (
        [("true", 3)],
        [(1, 3)],
    )


def test_segment_volume_panel_runs_on_real_index(osmem):
    """The Vega panel's own request (a nested aggregation) against documents with ``kaapana.segments``,
    and the fields its transforms read are in the answer."""
    client = make_search_client(osmem.url, "opensearch")
    index = f"kaapana-dash-{uuid.uuid4().hex[:8]}"
    ensure_index_template(client, index)
    livers = [1000.0, 1500.0, 2000.0, 2500.0, 3000.0]
    docs = []
    for n, volume in enumerate(livers):
        segments = [{"segment_number": 1, "label": "liver", "empty": False, "volume_ml": volume}]
        segments.append(
            {"segment_number": 2, "label": "spleen", "empty": n > 0, "volume_ml": 200.0 if n == 0 else 0.0}
        )
        docs.append((f"1.2.{n}", {"Modality": "SEG", "kaapana": {"segments": segments}}))
    assert not bulk_index(client, index, docs, refresh=True).failed

    for target in sorted(dashboards.FILES):
        [panel] = [o for o in _load(target) if o["id"] == "kaapana-segment-volumes"]
        spec = json.loads(json.loads(panel["attributes"]["visState"])["params"]["spec"])
        assert spec["data"]["url"]["index"] == "kaapana-dicom*"
    spec = dashboards.segment_volume_spec(index)
    answer = client.search(index, spec["data"]["url"]["body"])
    node = answer
    for part in spec["data"]["format"]["property"].split("."):
        node = node[part]
    by_label = {b["key"]: b for b in node}
    assert by_label["liver"]["doc_count"] == 5 and by_label["spleen"]["doc_count"] == 1  # empty ones left out
    for transform in spec["transform"]:  # datum.volume.values['25.0'] -> p25
        key = transform["calculate"].split("'")[1]
        value = by_label["liver"]["volume"]["values"][key]
        assert min(livers) <= value <= max(livers)
    assert by_label["liver"]["volume"]["values"]["50.0"] == pytest.approx(2000.0)


def test_evaluation_panel_runs_on_real_index(osmem):
    """The evaluations panel's own request against summaries as the evaluation DAG indexes them; the
    fields its transforms read are in every hit."""
    from airflow_provider_kaapana.core.quant.summary import evaluation_index_document

    client = make_search_client(osmem.url, "opensearch")
    index = f"kaapana-evaluations-{uuid.uuid4().hex[:8]}"
    liver = {"segment_number": 1, "label": "liver", "cases": 3}
    for metric in ("dice", "hd95_mm"):
        liver[metric] = {"n": 3, "mean": 0.9 if metric == "dice" else 2.5, "median": 0.91}
    docs = [
        evaluation_index_document(
            {"cases": 3, "segments": [liver]}, dag_id="eval", run_id=f"r{n}", created="x"
        )
        for n in range(3)
    ]
    assert not bulk_index(client, index, docs, refresh=True).failed
    spec = dashboards.evaluation_table_spec(index)
    hits = client.search(index, spec["data"]["url"]["body"])["hits"]["hits"]
    assert len(hits) == 3
    for hit in hits:
        source = hit["_source"]
        assert source["run_id"].startswith("r") and source["cases"] == 3
        [segment] = source["segments"]
        assert segment["label"] == "liver" and segment["dice_mean"] == 0.9 and segment["hd95_mm_mean"] == 2.5
    for target in sorted(dashboards.FILES):
        [panel] = [o for o in _load(target) if o["id"] == "kaapana-segmentation-evaluations"]
        shipped = json.loads(json.loads(panel["attributes"]["visState"])["params"]["spec"])
        assert shipped["data"]["url"]["index"] == "kaapana-evaluations"  # not matched by "kaapana-dicom*"
