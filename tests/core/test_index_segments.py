"""Per-segment statistics on the SEG's series document (``kaapana.segments``, nested) in a real osmem-server:
"liver volume > X ml" finds the right SEG, aggregations per label equal the JSON's numbers."""

from __future__ import annotations

import json
import math

import pytest

from airflow_provider_kaapana.core.index.client import index_series, make_search_client
from airflow_provider_kaapana.core.index.document import build_series_documents, merge_series_documents
from airflow_provider_kaapana.core.quant.statistics import segment_statistics
from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.testing.synthetic import Shape
from tests.core.test_index import unique_index
from tests.core.test_quant import _config
from tests.core.test_seg import save_label_map


def _measured_seg(synthetic_series, tmp_path, name: str, radius: float, seed: int, tumor: float = 0.0):
    series = synthetic_series(
        name, rows=48, columns=48, slices=48, slice_spacing=1.0, origin=(-24.0, -24.0, -24.0), seed=seed,
        patient_id=f"IDX-{name}", shapes=[Shape(1, (0.0, 0.0, 0.0), radius=radius, intensity=1040.0)]
        + ([Shape(2, (-12.0, -12.0, 12.0), radius=tumor)] if tumor else []),
    )  # fmt: skip
    out = tmp_path / f"{name}-out"
    out.mkdir()
    seg_path = out / "seg.dcm"
    export_seg(save_label_map(series, out / "l.nii.gz"), series.series_dir, _config(tmp_path), seg_path)
    stats = segment_statistics(series.series_dir, seg_path)
    stats_path = out / "statistics.json"
    stats_path.write_text(json.dumps(stats))
    return series, seg_path, stats, stats_path


def test_statistics_land_on_the_seg_document_and_answer_nested_queries(osmem, synthetic_series, tmp_path):
    big = _measured_seg(synthetic_series, tmp_path, "big", 12.0, 1)  # liver ~7.2 ml
    small = _measured_seg(synthetic_series, tmp_path, "small", 6.0, 2, tumor=8.0)  # liver ~0.9, tumor ~2.1 ml
    client = make_search_client(osmem.url, "opensearch")
    index = unique_index()
    report = index_series(
        client,
        index,
        [(seg_path, {"statistics": str(stats_path)}) for _, seg_path, _, stats_path in (big, small)],
        refresh=True,
    )
    assert not report.failed and not report.file_errors
    mapping = client.raw.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    segments_mapping = mapping["kaapana"]["properties"]["segments"]
    assert segments_mapping["type"] == "nested"
    assert segments_mapping["properties"]["volume_ml"]["type"] == "double"

    seg_uid = big[2]["source"]["segmentation_series_instance_uid"]
    document = client.get(index, seg_uid)
    by_label = {s["label"]: s for s in document["kaapana"]["segments"]}
    liver = next(s for s in big[2]["segments"] if s["label"] == "liver")
    assert by_label["liver"]["volume_ml"] == pytest.approx(liver["volume_ml"])
    assert by_label["liver"]["code"]["value"] == liver["code"]["value"]
    assert by_label["liver"]["image_series_instance_uid"] == big[0].series_instance_uid
    assert by_label["tumor"]["empty"] is True and "mean" not in by_label["tumor"]  # null is left out

    # "liver volume > X ml": label and volume of the SAME segment (the small case's 2.1 ml tumor must not
    # make its 0.9 ml liver match 1.5 ml: that is what the nested mapping is for)
    def liver_larger_than(ml: float) -> list[str]:
        body = {
            "query": {
                "nested": {
                    "path": "kaapana.segments",
                    "query": {
                        "bool": {
                            "filter": [
                                {"term": {"kaapana.segments.label": "liver"}},
                                {"range": {"kaapana.segments.volume_ml": {"gt": ml}}},
                            ]
                        }
                    },
                }
            }
        }
        return [hit["_id"] for hit in client.search(index, body)["hits"]["hits"]]

    assert liver_larger_than(3.0) == [seg_uid]
    assert liver_larger_than(1.5) == [seg_uid]
    assert sorted(liver_larger_than(0.5)) == sorted(
        [seg_uid, small[2]["source"]["segmentation_series_instance_uid"]]
    )
    assert liver_larger_than(10.0) == []

    # the distribution per label, as a dashboard asks for it
    body = {
        "size": 0,
        "aggs": {
            "segments": {
                "nested": {"path": "kaapana.segments"},
                "aggs": {
                    "label": {
                        "terms": {"field": "kaapana.segments.label"},
                        "aggs": {"volume": {"stats": {"field": "kaapana.segments.volume_ml"}}},
                    }
                },
            }
        },
    }
    buckets = client.search(index, body)["aggregations"]["segments"]["label"]["buckets"]
    volume = {b["key"]: b["volume"] for b in buckets}
    livers = [next(s["volume_ml"] for s in m[2]["segments"] if s["label"] == "liver") for m in (big, small)]
    assert volume["liver"]["count"] == 2
    assert volume["liver"]["avg"] == pytest.approx(sum(livers) / 2)
    assert volume["liver"]["max"] == pytest.approx(4 / 3 * math.pi * 12.0**3 / 1000, rel=0.03)


def test_statistics_of_another_series_are_a_named_error_and_merging_keeps_them(synthetic_series, tmp_path):
    series, seg_path, stats, stats_path = _measured_seg(synthetic_series, tmp_path, "a", 8.0, 3)
    docs, errors = build_series_documents([series.series_dir], statistics=stats_path)
    assert "segments" not in docs[0].document["kaapana"]  # the image series is not the SEG's
    assert len(errors) == 1 and str(stats_path) in errors[0]
    assert stats["source"]["segmentation_series_instance_uid"] in errors[0]

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something/v9"}')
    _, errors = build_series_documents([seg_path], statistics=bad)
    assert len(errors) == 1 and "bad.json" in errors[0] and "kaapana.segment-statistics/v1" in errors[0]

    with_stats, _ = build_series_documents([seg_path], statistics=stats_path)
    without, _ = build_series_documents([seg_path])
    merged = merge_series_documents(with_stats[0].document, without[0].document)
    assert merged["kaapana"]["segments"] == with_stats[0].document["kaapana"]["segments"]
