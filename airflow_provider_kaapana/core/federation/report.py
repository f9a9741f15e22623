"""The coordinator's report of one job: a JSON document and a self-contained HTML page (inline SVG)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_kaapana.core.federation.aggregate import AggregateResult
from airflow_provider_kaapana.core.federation.statistics import StatisticKind

_BAR = "#3b6ea5"
_BAR_INCOMPLETE = "#a5b8cc"
_CHART_WIDTH = 640
_LABEL_WIDTH = 200
_ROW = 22
MAX_HTML_ROWS = 500


def build_report(result: AggregateResult) -> dict[str, Any]:
    """``{"job", "sites", "aggregate", "partial"}``: the same inputs always give the same report."""
    aggregate: dict[str, Any] = {}
    for name, spec in result.analysis.by_name.items():
        aggregate[name] = {
            "population": spec.population,
            "unit": spec.unit,
            "description": spec.description,
            **result.statistics[name],
        }
    report = {
        "job": result.job.to_dict(),
        "sites": [s.as_dict() for s in result.sites],
        "aggregate": aggregate,
        "partial": result.partial,
    }
    if "records" in result.statistics:
        units = {c.name: c.unit for c in result.analysis.columns}
        table = result.statistics["records"]
        report["records"] = {**table, "units": {c: units.get(c, "") for c in table["columns"]}}
    return report


def report_json(report: Mapping[str, Any]) -> str:
    """The report as JSON text (sorted keys, two-space indent, final newline)."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------------
# HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _bars(name: str, title: str, rows: list[tuple[str, int, bool]]) -> str:
    """A horizontal bar chart: one row per (label, value, incomplete)."""
    height = _ROW * max(len(rows), 1) + 10
    top = max((v for _, v, _ in rows), default=0) or 1
    span = _CHART_WIDTH - _LABEL_WIDTH - 70
    parts = [
        f'<svg class="chart" data-statistic="{_e(name)}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{_CHART_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_CHART_WIDTH} {height}">'
    ]
    if not rows:
        parts.append('<text x="4" y="16" class="muted">no data</text>')
    for i, (label, value, incomplete) in enumerate(rows):
        y = 5 + i * _ROW
        width = round(span * value / top, 1)
        fill = _BAR_INCOMPLETE if incomplete else _BAR
        mark = " *" if incomplete else ""
        parts.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{y + 14}" text-anchor="end">{_e(label)}</text>'
            f'<rect x="{_LABEL_WIDTH}" y="{y + 2}" width="{width}" height="{_ROW - 6}" fill="{fill}"/>'
            f'<text x="{_LABEL_WIDTH + width + 4}" y="{y + 14}">{_e(_num(value))}{mark}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _moments_chart(name: str, title: str, stat: Mapping[str, Any]) -> str:
    """Mean with a ±1 SD whisker on a 0..(mean + 2 SD) axis."""
    height = 60
    parts = [
        f'<svg class="chart" data-statistic="{_e(name)}" role="img" aria-label="{_e(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" width="{_CHART_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_CHART_WIDTH} {height}">'
    ]
    mean, sd = stat.get("mean"), stat.get("sd")
    if mean is None:
        parts.append('<text x="4" y="20" class="muted">no data</text>')
    else:
        sd = sd or 0.0
        lo_axis = min(0.0, mean - 2 * sd)
        hi_axis = max(mean + 2 * sd, mean * 1.1, lo_axis + 1e-9)
        span = _CHART_WIDTH - 40

        def x(v: float) -> float:
            return round(20 + span * (v - lo_axis) / (hi_axis - lo_axis), 1)

        parts.append(
            f'<line x1="20" y1="40" x2="{20 + span}" y2="40" stroke="#999"/>'
            f'<line x1="{x(mean - sd)}" y1="30" x2="{x(mean + sd)}" y2="30" stroke="{_BAR}" stroke-width="2"/>'
            f'<circle cx="{x(mean)}" cy="30" r="5" fill="{_BAR}"/>'
            f'<text x="20" y="56">{_e(_num(lo_axis))}</text>'
            f'<text x="{20 + span}" y="56" text-anchor="end">{_e(_num(hi_axis))}</text>'
            f'<text x="{x(mean)}" y="18" text-anchor="middle">mean {_e(_num(mean))} ± {_e(_num(sd))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _chart(name: str, stat: Mapping[str, Any]) -> str:
    title = f"{name} ({stat.get('unit', '')})"
    if stat["kind"] == StatisticKind.COUNTS.value:
        incomplete = set(stat["incomplete"])
        rows = [(label, value, label in incomplete) for label, value in sorted(stat["cells"].items())]
        return _bars(name, title, rows)
    if stat["kind"] == StatisticKind.HISTOGRAM.value:
        edges = stat["edges"]
        incomplete = set(stat["incomplete"])
        rows = [
            (
                f"[{_num(edges[i])}, {_num(edges[i + 1])}{']' if i == len(edges) - 2 else ')'}",
                value,
                i in incomplete,
            )
            for i, value in enumerate(stat["counts"])
        ]
        return _bars(name, title, rows)
    return _moments_chart(name, title, stat)


def _summary(stat: Mapping[str, Any]) -> str:
    if stat["kind"] == StatisticKind.COUNTS.value:
        total = _num(stat["total"]) + (" (incomplete)" if stat["total_incomplete"] else "")
        text = f"total {total} {stat.get('unit', '')}"
    elif stat["kind"] == StatisticKind.HISTOGRAM.value:
        text = f"{_num(sum(stat['counts']))} {stat.get('unit', '')} in known bins"
    else:
        text = f"n {_num(stat['n'])}, mean {_num(stat['mean'])}, SD {_num(stat['sd'])}, variance {_num(stat['variance'])}"
        if stat["incomplete"]:
            text += " (incomplete)"
    if stat.get("withheld_by"):
        text += f"; withheld by {', '.join(stat['withheld_by'])}"
    return _e(text)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
.status-ok { color: #1a7f37; } .status-refused, .status-failed, .status-timed_out { color: #b42318; }
svg text { font-size: 12px; } .muted { fill: #888; }
.partial { background: #fff4e5; border: 1px solid #f5b041; padding: 0.5em 1em; }
"""


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page: the site status table and one inline SVG chart per statistic."""
    job = report["job"]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(job['analysis'])} v{_e(job['analysis_version'])} – {_e(job['job_id'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(job['analysis'])} <small>v{_e(job['analysis_version'])}</small></h1>",
        f"<p>Job <code>{_e(job['job_id'])}</code>, created {_e(job['created'])}, minimum cell count k = "
        f"{_e(job['k'])} (sites may apply more).</p>",
    ]
    if report["partial"]:
        out.append('<p class="partial">Partial result: not every site contributed.</p>')
    out.append(
        '<table class="sites"><thead><tr><th>Site</th><th>Status</th><th>Suppressed cells</th>'
        "<th>Withheld statistics</th><th>Reason</th></tr></thead><tbody>"
    )
    for site in report["sites"]:
        out.append(
            f'<tr><td>{_e(site["name"])}</td><td class="status-{_e(site["status"])}">{_e(site["status"])}</td>'
            f"<td>{_e(site['suppressed_cells'])}</td><td>{_e(', '.join(site['withheld']))}</td>"
            f"<td>{_e(site['reason'])}</td></tr>"
        )
    out.append("</tbody></table>")
    out.append(
        "<p>Values marked * are incomplete: at least one site suppressed its contribution (fewer than k "
        "individuals) and the bar shows the sum of the published ones.</p>"
    )
    if report.get("records") is not None:
        out.append(_records_table(report["records"]))
    for name, stat in report["aggregate"].items():
        out.append(f'<section class="statistic" id="{_e(name)}"><h2>{_e(name)}</h2>')
        if stat.get("description"):
            out.append(f"<p>{_e(stat['description'])}</p>")
        out.append(_chart(name, stat))
        out.append(f"<p>{_summary(stat)}</p></section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _records_table(table: Mapping[str, Any]) -> str:
    """The pooled records as an HTML table (the first :data:`MAX_HTML_ROWS`; report.json has all)."""
    columns, rows = table["columns"], table["rows"]
    units = table.get("units") or {}
    head = "".join(f"<th>{_e(c)}{f' ({_e(units[c])})' if units.get(c) else ''}</th>" for c in columns)
    out = [
        '<section class="records" id="records"><h2>Records</h2>',
        f"<p>{_e(len(rows))} de-identified rows (patient and UID pseudonyms are per site).</p>",
    ]
    if table.get("incomplete"):
        out.append(
            f"<p>Rows in groups of fewer than k individuals were suppressed by: "
            f"{_e(', '.join(table['incomplete']))}.</p>"
        )
    out.append(f'<table class="records"><thead><tr>{head}</tr></thead><tbody>')
    for row in rows[:MAX_HTML_ROWS]:
        cells = "".join(
            f"<td>{_e(_num(row[c]) if isinstance(row[c], (int, float)) else (row[c] or '–'))}</td>"
            for c in columns
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    if len(rows) > MAX_HTML_ROWS:
        out.append(f"<p>The first {MAX_HTML_ROWS} rows; report.json holds all of them.</p>")
    out.append("</section>")
    return "\n".join(out)


def report_for(result: AggregateResult) -> tuple[str, str]:
    """``(json_text, html_text)`` of one job's report."""
    report = build_report(result)
    return report_json(report), render_html(report)


__all__ = ["build_report", "render_html", "report_for", "report_json"]
