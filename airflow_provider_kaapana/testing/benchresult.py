"""The machine-readable lines every benchmark prints at its end, and the table ``benchmarks/run_all.py`` makes.

A benchmark ends with one or more lines (``bench_load.py`` follows them with one summary line per executor)

    RESULT benchmark=listener measure='MB/s, fsync before success' ours=126.3 peer=130.2 \
peer_name='pynetdicom bare SCP (fsync)' ratio=0.97 goal='>= 150 MB/s' met=no

(``key=value`` pairs, shell-quoted; ``peer``, ``peer_name`` and ``ratio`` are ``-`` where a goal is
absolute, e.g. seconds of overhead). ``ratio`` is always "times better than the peer": ours/peer for a
rate, peer/ours for a time. :func:`parse_result` reads such a line back, :func:`markdown_table` renders
parsed results (and rows for benchmarks that were skipped or failed) as one Markdown table.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

PREFIX = "RESULT "
FIELDS = ("benchmark", "measure", "ours", "peer", "peer_name", "ratio", "goal", "met")


@dataclass(frozen=True)
class BenchResult:
    """One measure of one benchmark (``met``: ``yes``, ``no``, or a reason it was not measured)."""

    benchmark: str
    measure: str
    ours: str
    peer: str = "-"
    peer_name: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: str = "-"

    def line(self) -> str:
        return PREFIX + " ".join(f"{k}={shlex.quote(str(getattr(self, k)))}" for k in FIELDS)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def print_result(
    benchmark: str,
    measure: str,
    ours: float,
    peer: float | None,
    peer_name: str | None,
    goal: str,
    met: bool,
    higher_is_better: bool = True,
) -> BenchResult:
    """Print (and return) the ``RESULT`` line of one measure; ``ratio`` is computed from ours and peer."""
    ratio = None
    if peer is not None and ours and peer:
        ratio = ours / peer if higher_is_better else peer / ours
    result = BenchResult(
        benchmark=benchmark,
        measure=measure,
        ours=_number(ours),
        peer=_number(peer),
        peer_name=peer_name or "-",
        ratio=_number(ratio),
        goal=goal,
        met="yes" if met else "no",
    )
    print(result.line(), flush=True)
    return result


def parse_result(line: str) -> BenchResult | None:
    """The result of a ``RESULT`` line; ``None`` for any other line. Raises ValueError on a
    malformed ``RESULT`` line (unknown key, missing benchmark/measure/ours)."""
    line = line.strip()
    if not line.startswith(PREFIX):
        return None
    values: dict[str, str] = {}
    for token in shlex.split(line[len(PREFIX) :]):
        key, sep, value = token.partition("=")
        if not sep or key not in FIELDS:
            raise ValueError(f"malformed RESULT line, bad field {token!r}: {line!r}")
        values[key] = value
    missing = [k for k in ("benchmark", "measure", "ours") if k not in values]
    if missing:
        raise ValueError(f"malformed RESULT line, missing {', '.join(missing)}: {line!r}")
    return BenchResult(**values)


def parse_results(output: str) -> list[BenchResult]:
    """Every ``RESULT`` line of a benchmark's output, in order."""
    return [r for r in (parse_result(line) for line in output.splitlines()) if r is not None]


def _row(r: BenchResult) -> list[str]:
    peer = r.peer if r.peer_name in ("", "-") else f"{r.peer} ({r.peer_name})"
    return [r.benchmark, r.measure, r.ours, peer, r.ratio, r.goal, r.met]


HEADER = ["benchmark", "measure", "ours", "peer", "ratio", "goal", "met"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(results: list[BenchResult]) -> str:
    """A Markdown table with one row per result: benchmark, measure, ours, peer (with its name),
    ratio, goal, met."""
    rows = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    rows += ["| " + " | ".join(_cell(c) for c in _row(r)) + " |" for r in results]
    return "\n".join(rows) + "\n"


def _rst_cell(text: str) -> str:
    # a cell reading "-" (or "1. ...") would be a nested list: escape its first character
    return "\\" + text if re.match(r"([-*+]|\d+[.)])(\s|$)", text) else text


def rst_table(results: list[BenchResult]) -> str:
    """The same table as a reStructuredText ``list-table`` (for the Sphinx docs)."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for cells in [HEADER, *(_row(r) for r in results)]:
        lines.append(f"   * - {_rst_cell(cells[0])}")
        lines += [f"     - {_rst_cell(c)}" for c in cells[1:]]
    return "\n".join(lines) + "\n"
