"""benchmarks/run_all.py: every benchmark is listed, and RESULT lines become the one Markdown table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from airflow_provider_kaapana.testing.benchresult import (
    BenchResult,
    markdown_table,
    parse_result,
    parse_results,
    print_result,
    rst_table,
)

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

SAMPLE = """\
generated 200 CT instances 512x512 (105 MB) in 9.1 s
kaapana listen (fsync) vs dcmtk storescp: 9.80x faster
RESULT benchmark=listener measure='MB/s, fsync before success' ours=126 peer=130 \
peer_name='pynetdicom bare SCP (fsync)' ratio=0.969 goal='>= 150 MB/s' met=no
RESULT benchmark=e2e measure='overhead s (total - predict)' ours=23.2 peer=- peer_name=- ratio=- \
goal='<= 30 s' met=yes
"""


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


def test_sample_output_becomes_table_rows():
    results = parse_results(SAMPLE)
    assert [r.benchmark for r in results] == ["listener", "e2e"]
    listener = results[0]
    assert listener.measure == "MB/s, fsync before success"
    assert (listener.ours, listener.peer, listener.ratio, listener.met) == ("126", "130", "0.969", "no")
    table = markdown_table(results).splitlines()
    assert table[0] == "| benchmark | measure | ours | peer | ratio | goal | met |"
    assert table[2] == (
        "| listener | MB/s, fsync before success | 126 | 130 (pynetdicom bare SCP (fsync)) | 0.969 "
        "| >= 150 MB/s | no |"
    )
    assert table[3] == "| e2e | overhead s (total - predict) | 23.2 | - | - | <= 30 s | yes |"
    assert len(table) == 4


def test_printed_line_parses_back(capsys):
    printed = print_result(
        "seg", "export s", 4.0, 8.0, "plain | highdicom", "<= 10 s", True, higher_is_better=False
    )
    line = capsys.readouterr().out
    assert parse_result(line) == printed
    assert printed.ratio == "2" and printed.met == "yes"
    # a "|" in a value is escaped so the row keeps its columns
    assert "plain \\| highdicom" in markdown_table([printed])


def test_malformed_result_line_is_refused():
    assert parse_result("ratio ours/peer: 3.0x") is None
    with pytest.raises(ValueError, match="bad field 'speed=3'"):
        parse_result("RESULT benchmark=x measure=y ours=1 speed=3")
    with pytest.raises(ValueError, match="missing ours"):
        parse_result("RESULT benchmark=x measure=y")


def test_every_benchmark_script_is_run_and_skips_say_why(tmp_path):
    run_all = _run_all()
    scripts = {p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py")}
    assert {b.name for b in run_all.BENCHMARKS} == scripts
    needs_nothing_here = run_all.Benchmark(
        "listener", (), tools=("no-such-tool-xyz",), modules=("no_such_mod",)
    )
    rows, seconds = run_all.run_benchmark(needs_nothing_here, "small", 10, tmp_path)
    assert (
        rows == [BenchResult("listener", "-", "-", met="skipped: no-such-tool-xyz, no_such_mod missing")]
        and seconds == 0.0
    )


def test_rst_table_has_one_item_per_cell():
    rst = rst_table(parse_results(SAMPLE)).splitlines()
    assert rst[:3] == [".. list-table::", "   :header-rows: 1", ""]
    assert rst[3:5] == ["   * - benchmark", "     - measure"]
    assert rst[10:17] == [
        "   * - listener",
        "     - MB/s, fsync before success",
        "     - 126",
        "     - 130 (pynetdicom bare SCP (fsync))",
        "     - 0.969",
        "     - >= 150 MB/s",
        "     - no",
    ]
    assert len(rst) == 3 + 3 * 7


def test_table_from_kept_logs(tmp_path):
    run_all = _run_all()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "listener.log").write_text(
        SAMPLE.split("RESULT benchmark=e2e")[0] + "\n--- stderr\n\n--- exit 0\n"
    )
    (first / "e2e.log").write_text("starting ...\n--- stderr\nTraceback\nRuntimeError: boom\n--- exit 1\n")
    (second / "e2e.log").write_text("steps ...\n--- stderr\nstill going\n--- timed out after 900 s\n")
    by_name = {b.name: b for b in run_all.BENCHMARKS}
    listener = run_all.results_from_logs(by_name["listener"], [first, second])
    assert [(r.benchmark, r.ours, r.met) for r in listener] == [("listener", "126", "no")]
    e2e_first = run_all.results_from_logs(by_name["e2e"], [first])
    assert e2e_first[0].met == "exit 1: RuntimeError: boom"
    e2e_later = run_all.results_from_logs(by_name["e2e"], [first, second])  # the later folder wins
    assert e2e_later[0].met == "timed out after 900 s: still going"
    seg = run_all.results_from_logs(by_name["seg"], [first, second])[0].met
    assert seg == "not run" or seg.startswith("skipped:")


def test_rst_cells_that_would_be_lists_are_escaped():
    rst = rst_table([BenchResult("e2e", "overhead s", "23.2", goal="<= 30 s", met="yes")])
    assert "     - \\-" in rst.splitlines()  # peer "-" is text, not a nested bullet list
    assert "     - <= 30 s" in rst.splitlines()
