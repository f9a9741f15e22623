"""Saved objects (NDJSON) for Kibana and OpenSearch Dashboards over the series index.

One data view (index pattern) and one dashboard of aggregation-based visualizations: series by
modality, by study date, by body part, by station, completeness, and totals; and one Vega panel, segment
volumes by label (aggregation-based visualizations cannot aggregate the nested ``kaapana.segments``,
a Vega spec sends its own nested aggregation); below them a saved search lists the newest series with
their thumbnail (``kaapana.thumbnail``, shown as an image) and viewer link (``kaapana.viewer_url``, a
link: both by the index pattern's field formats). Legacy ``visualization`` objects are used on purpose:
both Kibana 8/9 and OpenSearch Dashboards 2/3 import and migrate them. The shipped files under ``airflow_provider_kaapana/data/dashboards/`` are generated
by :func:`write_saved_objects` (a test keeps them in sync).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX

Target = Literal["kibana", "opensearch-dashboards"]
DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "dashboards"
FILES: dict[str, str] = {"kibana": "kibana.ndjson", "opensearch-dashboards": "opensearch-dashboards.ndjson"}

INDEX_PATTERN_ID = "kaapana-dicom-series"
DASHBOARD_ID = "kaapana-dicom-overview"
SERIES_LIST_ID = "kaapana-series-list"
_SEARCH_REF = "kibanaSavedObjectMeta.searchSourceJSON.index"
_MIGRATION = {"index-pattern": "7.6.0", "visualization": "7.10.0", "dashboard": "7.9.3", "search": "7.9.3"}

# How the index pattern shows the viewer link and the thumbnail (Url format: a link; an image)
FIELD_FORMATS: dict[str, dict[str, Any]] = {
    "kaapana.viewer_url": {"id": "url", "params": {"type": "a", "labelTemplate": "Open in viewer"}},
    "kaapana.thumbnail": {
        "id": "url",
        "params": {"type": "img", "labelTemplate": "middle slice", "width": 128, "height": 128},
    },
}
# The saved search of the dashboard's series list: thumbnail, what the series is, its viewer link
SERIES_LIST_COLUMNS = [
    "kaapana.thumbnail",
    "PatientID",
    "StudyDate",
    "kaapana.modality",
    "SeriesDescription",
    "kaapana.instance_count",
    "kaapana.viewer_url",
]


def _search_source() -> str:
    return json.dumps(
        {"query": {"query": "", "language": "kuery"}, "filter": [], "indexRefName": _SEARCH_REF},
        sort_keys=True,
    )


def _count() -> dict[str, Any]:
    return {"id": "1", "enabled": True, "type": "count", "schema": "metric", "params": {}}


def _terms(field: str, size: int, schema: str = "segment", missing: bool = True) -> dict[str, Any]:
    return {
        "id": "2",
        "enabled": True,
        "type": "terms",
        "schema": schema,
        "params": {
            "field": field,
            "size": size,
            "order": "desc",
            "orderBy": "1",
            "otherBucket": True,
            "otherBucketLabel": "Other",
            "missingBucket": missing,
            "missingBucketLabel": "Missing",
        },
    }


def _bar_params(kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "addTooltip": True,
        "addLegend": False,
        "legendPosition": "right",
        "times": [],
        "addTimeMarker": False,
        "grid": {"categoryLines": False},
        "categoryAxes": [
            {
                "id": "CategoryAxis-1",
                "type": "category",
                "position": "left" if kind == "horizontal_bar" else "bottom",
                "show": True,
                "scale": {"type": "linear"},
                "labels": {"show": True, "truncate": 100},
                "title": {},
            }
        ],
        "valueAxes": [
            {
                "id": "ValueAxis-1",
                "name": "LeftAxis-1",
                "type": "value",
                "position": "bottom" if kind == "horizontal_bar" else "left",
                "show": True,
                "scale": {"type": "linear", "mode": "normal"},
                "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                "title": {"text": "Series"},
            }
        ],
        "seriesParams": [
            {
                "show": True,
                "type": "histogram",
                "mode": "normal",
                "data": {"label": "Series", "id": "1"},
                "valueAxis": "ValueAxis-1",
                "drawLinesBetweenPoints": True,
                "showCircles": True,
            }
        ],
    }


SEGMENT_VOLUME_PERCENTS = (5.0, 25.0, 50.0, 75.0, 95.0)


def segment_volume_spec(index: str = DEFAULT_INDEX) -> dict[str, Any]:
    """Vega-Lite box plot of ``kaapana.segments.volume_ml`` per label: whiskers 5-95 %, box 25-75 %, median.

    The data request is a nested terms aggregation with percentiles; ``%context%`` lets the dashboard's
    query and filters apply. Empty segments (volume 0, ``empty: true``) are left out.
    """
    body = {
        "size": 0,
        "aggs": {
            "segments": {
                "nested": {"path": "kaapana.segments"},
                "aggs": {
                    "present": {
                        "filter": {"term": {"kaapana.segments.empty": False}},
                        "aggs": {
                            "label": {
                                "terms": {"field": "kaapana.segments.label", "size": 30},
                                "aggs": {
                                    "volume": {
                                        "percentiles": {
                                            "field": "kaapana.segments.volume_ml",
                                            "percents": list(SEGMENT_VOLUME_PERCENTS),
                                        }
                                    }
                                },
                            }
                        },
                    }
                },
            }
        },
    }
    calculate = [
        {"calculate": f"datum.volume.values['{p:.1f}']", "as": f"p{int(p):02d}"}
        for p in SEGMENT_VOLUME_PERCENTS
    ]
    y = {"type": "quantitative", "title": "Volume (ml)"}
    x = {"field": "key", "type": "nominal", "title": "Segment label", "sort": "ascending"}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Segment volumes by label (ml): 5-95 % whiskers, 25-75 % box, median",
        "data": {
            "url": {"%context%": True, "index": f"{index}*", "body": body},
            "format": {"property": "aggregations.segments.present.label.buckets"},
        },
        "transform": calculate,
        "encoding": {"x": x},
        "layer": [
            {"mark": "rule", "encoding": {"y": {"field": "p05", **y}, "y2": {"field": "p95"}}},
            {
                "mark": {"type": "bar", "size": 18},
                "encoding": {"y": {"field": "p25", **y}, "y2": {"field": "p75"}},
            },
            {
                "mark": {"type": "tick", "color": "white", "size": 18},
                "encoding": {"y": {"field": "p50", **y}},
            },
            {
                "mark": {"type": "text", "dy": -8},
                "encoding": {"y": {"field": "p95", **y}, "text": {"field": "doc_count"}},
            },
        ],
    }


EVALUATIONS_INDEX = "kaapana-evaluations"  # kaapana_segmentation_evaluation writes its summaries there
EVALUATION_RUNS = 50


def evaluation_table_spec(evaluations_index: str = EVALUATIONS_INDEX) -> dict[str, Any]:
    """Vega-Lite table of the latest evaluation runs: one row per run, one column per label, each cell
    the mean Dice (colour) with mean HD95 in mm and the number of cases (text).

    The request reads ``evaluations_index`` directly (its own index, not the series pattern), one
    summary document per run (``core.quant.summary.evaluation_index_document``).
    """
    body = {"size": EVALUATION_RUNS, "_source": ["run_id", "dag_id", "cases", "segments"]}
    cell = (
        "format(datum.segment.dice_mean, '.3f') + ' / ' + format(datum.segment.hd95_mm_mean, '.1f') + ' mm'"
    )
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Segmentation evaluations: mean Dice / mean HD95 per label (latest runs)",
        "data": {"url": {"index": evaluations_index, "body": body}, "format": {"property": "hits.hits"}},
        "transform": [
            {"flatten": ["_source.segments"], "as": ["segment"]},
            {"calculate": "datum._source.run_id + ' (' + datum._source.cases + ' cases)'", "as": "run"},
            {"calculate": "datum.segment.label", "as": "label"},
            {"calculate": "datum.segment.dice_mean", "as": "dice"},
            {"calculate": f"datum.segment.dice_mean == null ? 'no value' : {cell}", "as": "text"},
        ],
        "encoding": {
            "x": {"field": "label", "type": "nominal", "title": "Label", "axis": {"orient": "top"}},
            "y": {"field": "run", "type": "nominal", "title": "Run", "sort": "descending"},
        },
        "layer": [
            {
                "mark": "rect",
                "encoding": {
                    "color": {
                        "field": "dice",
                        "type": "quantitative",
                        "title": "Dice",
                        "scale": {"domain": [0, 1], "scheme": "redyellowgreen"},
                    }
                },
            },
            {"mark": {"type": "text", "fontSize": 11}, "encoding": {"text": {"field": "text"}}},
        ],
    }


def _visualizations(index: str = DEFAULT_INDEX) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, title, visState)`` of every panel."""
    pie = {"type": "pie", "addTooltip": True, "addLegend": True, "legendPosition": "right", "isDonut": True}
    date_histogram = {
        "id": "2",
        "enabled": True,
        "type": "date_histogram",
        "schema": "segment",
        "params": {
            "field": "StudyDate",
            "interval": "M",
            "min_doc_count": 1,
            "extended_bounds": {},
            "customLabel": "Study date",
        },
    }
    instances = {
        "id": "1",
        "enabled": True,
        "type": "sum",
        "schema": "metric",
        "params": {"field": "kaapana.instance_count", "customLabel": "Instances"},
    }
    series = dict(_count(), id="2", params={"customLabel": "Series"})
    table = {"perPage": 20, "showPartialRows": False, "showMetricsAtAllLevels": False, "showTotal": True}
    return [
        ("kaapana-series-by-modality", "Series by modality", {"type": "pie", "params": pie,
         "aggs": [_count(), _terms("kaapana.modality", 20)]}),
        ("kaapana-series-by-date", "Series by study date", {"type": "histogram", "params": _bar_params("histogram"),
         "aggs": [_count(), date_histogram]}),
        ("kaapana-series-by-body-part", "Series by body part", {"type": "horizontal_bar",
         "params": _bar_params("horizontal_bar"), "aggs": [_count(), _terms("BodyPartExamined", 25)]}),
        ("kaapana-series-by-station", "Series by station", {"type": "table", "params": table,
         "aggs": [_count(), _terms("StationName", 50, schema="bucket")]}),
        ("kaapana-series-completeness", "Completeness (InstanceNumber gaps)", {"type": "pie", "params": pie,
         "aggs": [_count(), _terms("kaapana.instance_number.complete", 3)]}),
        ("kaapana-totals", "Series and instances", {"type": "metric",
         "params": {"addTooltip": True, "addLegend": False, "type": "metric",
                    "metric": {"percentageMode": False, "useRanges": False, "colorSchema": "Green to Red",
                               "metricColorMode": "None", "colorsRange": [{"from": 0, "to": 10000}],
                               "labels": {"show": True}, "invertColors": False,
                               "style": {"bgFill": "#000", "bgColor": False, "labelColor": False,
                                         "subText": "", "fontSize": 40}}},
         "aggs": [instances, series]}),
        ("kaapana-segment-volumes", "Segment volumes by label", {"type": "vega",
         "params": {"spec": json.dumps(segment_volume_spec(index), indent=2)}, "aggs": []}),
        ("kaapana-segmentation-evaluations", "Segmentation evaluations", {"type": "vega",
         "params": {"spec": json.dumps(evaluation_table_spec(), indent=2)}, "aggs": []}),
    ]  # fmt: skip


def build_saved_objects(target: Target, index: str = DEFAULT_INDEX) -> list[dict[str, Any]]:
    """The saved objects for ``target``: index pattern, series list, visualizations, dashboard (import order)."""
    if target not in FILES:
        raise ValueError(f"target must be one of {sorted(FILES)}, not {target!r}")
    product = "Kibana" if target == "kibana" else "OpenSearch Dashboards"
    objects: list[dict[str, Any]] = [
        {
            "id": INDEX_PATTERN_ID,
            "type": "index-pattern",
            "attributes": {
                "title": f"{index}*",
                "timeFieldName": "kaapana.received_at",
                "fieldFormatMap": json.dumps(FIELD_FORMATS, sort_keys=True),
            },
            "references": [],
            "migrationVersion": {"index-pattern": _MIGRATION["index-pattern"]},
        },
        {
            "id": SERIES_LIST_ID,
            "type": "search",
            "attributes": {
                "title": "Series (thumbnail, viewer link)",
                "description": f"The newest series with their thumbnail and a link into the PACS's viewer ({product})",
                "columns": SERIES_LIST_COLUMNS,
                "sort": [["kaapana.received_at", "desc"]],
                "version": 1,
                "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source()},
            },
            "references": [{"name": _SEARCH_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}],
            "migrationVersion": {"search": _MIGRATION["search"]},
        },
    ]
    panels: list[dict[str, Any]] = []
    references: list[dict[str, str]] = []
    for n, (vis_id, title, vis_state) in enumerate(_visualizations(index)):
        objects.append(
            {
                "id": vis_id,
                "type": "visualization",
                "attributes": {
                    "title": title,
                    "description": f"DICOM series index ({product})",
                    "version": 1,
                    "uiStateJSON": "{}",
                    "visState": json.dumps({"title": title, **vis_state}, sort_keys=True),
                    "kibanaSavedObjectMeta": {"searchSourceJSON": _search_source()},
                },
                "references": [{"name": _SEARCH_REF, "type": "index-pattern", "id": INDEX_PATTERN_ID}],
                "migrationVersion": {"visualization": _MIGRATION["visualization"]},
            }
        )
        panel_ref = f"panel_{n}"
        panels.append(
            {
                "panelIndex": str(n + 1),
                "gridData": {"x": (n % 2) * 24, "y": (n // 2) * 15, "w": 24, "h": 15, "i": str(n + 1)},
                "version": "7.10.0",
                "embeddableConfig": {},
                "panelRefName": panel_ref,
            }
        )
        references.append({"name": panel_ref, "type": "visualization", "id": vis_id})
    # the series list, full width below the charts
    n = len(panels)
    panels.append(
        {
            "panelIndex": str(n + 1),
            "gridData": {"x": 0, "y": ((n + 1) // 2) * 15, "w": 48, "h": 20, "i": str(n + 1)},
            "version": "7.10.0",
            "embeddableConfig": {},
            "panelRefName": f"panel_{n}",
        }
    )
    references.append({"name": f"panel_{n}", "type": "search", "id": SERIES_LIST_ID})
    objects.append(
        {
            "id": DASHBOARD_ID,
            "type": "dashboard",
            "attributes": {
                "title": "Kaapana DICOM series",
                "description": "Series in the DICOM metadata index by modality, date, body part, station, "
                "completeness; segment volumes by label; segmentation evaluations; the newest series with "
                "thumbnail and viewer link",
                "hits": 0,
                "version": 1,
                "panelsJSON": json.dumps(panels, sort_keys=True),
                "optionsJSON": json.dumps({"useMargins": True, "hidePanelTitles": False}),
                "timeRestore": True,
                "timeFrom": "now-5y",
                "timeTo": "now",
                "refreshInterval": {"pause": True, "value": 0},
                "kibanaSavedObjectMeta": {
                    "searchSourceJSON": json.dumps(
                        {"query": {"query": "", "language": "kuery"}, "filter": []}
                    )
                },
            },
            "references": references,
            "migrationVersion": {"dashboard": _MIGRATION["dashboard"]},
        }
    )
    return objects


def to_ndjson(objects: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in objects)


def write_saved_objects(out_dir: str | Path = DATA_DIR, index: str = DEFAULT_INDEX) -> list[Path]:
    """Write ``kibana.ndjson`` and ``opensearch-dashboards.ndjson`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for target, name in FILES.items():
        path = out / name
        path.write_text(to_ndjson(build_saved_objects(target, index)), encoding="utf-8")  # type: ignore[arg-type]
        written.append(path)
    return written


if __name__ == "__main__":  # regenerate the shipped files
    for written_path in write_saved_objects():
        print(written_path)
