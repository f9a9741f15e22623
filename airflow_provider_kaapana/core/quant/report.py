"""``evaluation_report_html``: an evaluation run as one page a researcher opens — the per-label summary
table and box plots of Dice and of reference/test volumes per label (matplotlib, inline SVG)."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

REPORT_FILE_NAME = "evaluation_report.html"
_SUMMARY_COLUMNS = (
    ("dice", "Dice", 3),
    ("surface_dice", "Surface Dice", 3),
    ("hd95_mm", "HD95 (mm)", 2),
    ("assd_mm", "ASSD (mm)", 2),
    ("reference_volume_ml", "Reference (mL)", 2),
    ("test_volume_ml", "Test (mL)", 2),
)


def _box_plot_svg(groups: Sequence[tuple[str, list[float]]], title: str, ylabel: str) -> str:
    """One box plot (a box per group, every value shown as a point) as inline SVG; '' without data."""
    groups = [(name, values) for name, values in groups if values]
    if not groups:
        return ""
    from matplotlib import rc_context
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    figure = Figure(figsize=(max(3.5, 1.1 * len(groups) + 1.5), 3.2))
    axes = figure.subplots()
    axes.boxplot([values for _, values in groups], showmeans=True)
    axes.set_xticks(range(1, len(groups) + 1), [name for name, _ in groups], rotation=20, ha="right")
    for position, (_, values) in enumerate(groups, start=1):
        axes.plot([position] * len(values), values, "o", alpha=0.45, markersize=3, color="tab:blue")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    out = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "kaapana"}):  # text as text; stable ids
        figure.savefig(out, format="svg", metadata={"Date": None})  # no timestamp: same data, same page
    svg = out.getvalue()
    return svg[svg.index("<svg") :]


def _number(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def evaluation_report_html(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], title: str) -> str:
    """The page for :func:`~airflow_provider_kaapana.core.quant.summary.evaluation_summary`'s
    ``(rows, summary)``: self-contained (no script, no external file), deterministic."""
    labels = [(int(s["segment_number"]), str(s["label"])) for s in summary.get("segments", [])]

    def values(metric: str, number: int) -> list[float]:
        return [
            float(r[metric]) for r in rows if int(r["segment_number"]) == number and r.get(metric) is not None
        ]

    dice = _box_plot_svg([(label, values("dice", n)) for n, label in labels], "Dice per label", "Dice")
    volume_groups = []
    for n, label in labels:
        volume_groups.append((f"{label} ref", values("reference_volume_ml", n)))
        volume_groups.append((f"{label} test", values("test_volume_ml", n)))
    volumes = _box_plot_svg(volume_groups, "Volumes per label", "mL")
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name, _ in _SUMMARY_COLUMNS)
    body = []
    for segment in summary.get("segments", []):
        cells = "".join(
            f"<td>{_number(segment[key]['mean'], digits)} ± {_number(segment[key]['sd'], digits)}"
            f" <small>(n={segment[key]['n']})</small></td>"
            for key, _, digits in _SUMMARY_COLUMNS
        )
        body.append(
            f"<tr><td>{segment['segment_number']}</td><td>{html.escape(str(segment['label']))}</td>"
            f"<td>{segment['cases']}</td>{cells}</tr>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        ".plots{display:flex;flex-wrap:wrap;gap:2em}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{summary.get('cases', 0)} cases; mean ± SD over cases, n = cases with a value "
        "(distances are undefined when a mask is empty).</p>"
        f"<table><tr><th>#</th><th>Label</th><th>Cases</th>{head}</tr>{''.join(body)}</table>"
        f"<div class='plots'>{dice}{volumes}</div></body></html>"
    )
