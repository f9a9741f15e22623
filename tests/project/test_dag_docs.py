"""Every shipped DAG has a docs page naming it, its parameters and its current task graph.

The DAGs are loaded from ``dags/`` (which call the factories), so a new DAG, a new or renamed param,
or a changed task graph fails here until ``docs/dags/`` says so. No network: parsing a DAG never
touches one. ``python tests/project/test_dag_docs.py`` prints the generated graph and parameter table of
every DAG, ready to paste into its page.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS_DIR = ROOT / "dags"
DOCS_DIR = ROOT / "docs" / "dags"
if __name__ == "__main__":  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(ROOT))


def load_dags() -> dict[str, Any]:
    """dag_id -> DAG object of every ``dags/*.py`` file (module-level ``dag``)."""
    dags = {}
    for path in sorted(DAGS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"_docs_dag_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag = module.dag
        dags[dag.dag_id] = dag
    return dags


def task_graph(dag: Any) -> str:
    """The task graph as text: one line per task in topological order with operator and upstreams."""
    rows = []
    for task in dag.topological_sort():
        kind = type(task).__name__
        if kind == "_PythonDecoratedOperator":
            kind = "@task"
        upstream = ", ".join(sorted(task.upstream_task_ids)) or "-"
        rows.append((task.task_id, kind, upstream))
    width_id = max(len("task"), *(len(r[0]) for r in rows)) + 2
    width_kind = max(len("operator"), *(len(r[1]) for r in rows)) + 2
    lines = [f"{'task':<{width_id}}{'operator':<{width_kind}}upstream"]
    lines += [f"{tid:<{width_id}}{kind:<{width_kind}}{up}" for tid, kind, up in rows]
    mapped = sorted(
        {
            t.task_group.group_id
            for t in dag.tasks
            if t.task_group is not None and t.get_closest_mapped_task_group() is not None
        }
    )
    for group in mapped:
        lines.append(f"({group}.*: a mapped task group, one instance per series)")
    return "\n".join(line.rstrip() for line in lines)


def _type_text(schema: dict[str, Any]) -> str:
    kinds = schema.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    nullable = "null" in kinds
    kinds = [k for k in kinds if k != "null"]
    text = " or ".join(kinds)
    if text == "array" and "items" in schema:
        item = schema["items"].get("type", "any")
        text = "array of " + (" or ".join(item) if isinstance(item, list) else item)
    if schema.get("format"):
        text += f" ({schema['format']})"
    if "enum" in schema:
        text += ": " + " | ".join(str(v) for v in schema["enum"])
    bounds = []
    if "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        bounds.append(f"<= {schema['maximum']}")
    if schema.get("minLength"):
        bounds.append("required")
    if schema.get("minItems"):
        bounds.append(f"at least {schema['minItems']} item")
    if "pattern" in schema:
        bounds.append(f"matches ``{schema['pattern']}``")
    if bounds:
        text += ", " + ", ".join(bounds)
    if nullable:
        text += ", may be null"
    return text


def _rst_text(text: str) -> str:
    """Form text (markdown-ish) as RST: `code` -> ``code``, literal asterisks escaped."""
    text = text.replace("*", "\\*")
    return re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", text)


def params_table(dag: Any) -> str:
    """The DAG's params as an RST list-table (name, title, type, default, section, description)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 14 18 18 10 10 30",
        "",
        "   * - Param",
        "     - Title",
        "     - Type",
        "     - Default",
        "     - Section",
        "     - Description",
    ]
    for name, param in dag.params.items():
        schema = dict(param.schema)
        default = param.value if param.has_value else None
        lines += [
            f"   * - ``{name}``",
            f"     - {schema.get('title', '')}",
            f"     - {_type_text(schema)}",
            f"     - ``{json.dumps(default)}``",
            f"     - {schema.get('section', '')}",
            f"     - {_rst_text(param.description or '')}",
        ]
    return "\n".join(line.rstrip() for line in lines)


def page_for(dag_id: str) -> Path | None:
    """The docs page whose title (first line) is the dag_id."""
    for page in sorted(DOCS_DIR.glob("*.rst")):
        if page.read_text().splitlines()[:1] == [dag_id]:
            return page
    return None


DAGS = load_dags()


def test_every_dags_file_was_found():
    assert len(DAGS) == len([p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_")])
    assert "kaapana_nnunet_segmentation" in DAGS and "kaapana_ingest" in DAGS


@pytest.mark.parametrize("dag_id", sorted(DAGS))
def test_dag_has_a_page_with_its_params_and_graph(dag_id):
    dag = DAGS[dag_id]
    page = page_for(dag_id)
    assert page is not None, f"no page in {DOCS_DIR} titled {dag_id}"
    text = page.read_text()
    missing = [name for name in dag.params if f"``{name}``" not in text]
    assert not missing, f"{page.name} does not mention params {missing} of {dag_id}"
    titles = [p.schema["title"] for p in dag.params.values() if p.schema.get("title")]
    stale = [t for t in titles if t not in text]
    assert not stale, f"{page.name}: param titles {stale} are not on the page (renamed?)"
    graph = task_graph(dag)
    indented = "\n".join(("   " + line) if line else "" for line in graph.splitlines())
    assert indented in text, f"{page.name}: the task graph changed; regenerate it:\n{graph}"
    assert f"/api/v2/dags/{dag_id}/dagRuns" in text or dag.schedule is not None


def test_graph_rendering_shows_mapped_groups_and_fan_in():
    graph = task_graph(DAGS["kaapana_nnunet_segmentation"])
    assert "per_series.seg" in graph and "per_series.predict, per_series.receive" in graph
    assert "(per_series.*: a mapped task group" in graph
    assert "index, receive, store" in task_graph(DAGS["kaapana_ingest"])


if __name__ == "__main__":
    for dag_id, dag in DAGS.items():
        print(f"===== {dag_id}\n\n.. code-block:: text\n")
        print("\n".join("   " + line for line in task_graph(dag).splitlines()))
        print()
        print(params_table(dag))
        print(file=sys.stdout)
