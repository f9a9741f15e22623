"""What parsing a DAG file imports, in a fresh interpreter, as the dag-processor and each task process do.

Airflow 3 parses the DAG file again in the process of every task, so a heavy import at the top of an
operator module is paid by every task of every DAG that names it. These tests check ``sys.modules`` after
the parse (behaviour, not time): the inference and image libraries are never imported at parse time, and
the Kubernetes clients (behind the nnU-Net pod operator) only where the pod task itself may run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
# imported by the tasks that use them (inside execute), never to parse a DAG file
NEVER_AT_PARSE = ("torch", "nnunetv2", "SimpleITK", "highdicom", "nibabel", "scipy")
KUBERNETES = ("kubernetes", "kubernetes_asyncio", "airflow.providers.cncf.kubernetes.operators.pod")
SEGMENTATION = DAGS_FOLDER / "kaapana_nnunet_segmentation.py"

# Like a LocalExecutor worker: Airflow's task runner imported once (the preamble), then a fork per parse,
# in which the parsing context is set as the task runner sets it; each child reports its modules, those
# it imported itself ("new") and its tasks.
TASK_RUNNER = "import airflow.sdk.execution_time.task_runner"
PROBE = """
import json, os, runpy, sys
exec(sys.argv[2])
base = set(sys.modules)
jobs = json.loads(sys.argv[1])
for path, task_id in jobs:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if task_id is not None:
            os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = os.path.basename(path)[:-3]
            os.environ["_AIRFLOW_PARSING_CONTEXT_TASK_ID"] = task_id
        found = runpy.run_path(path, run_name="dag_file")
        tasks = {t.task_id: type(t).__name__ for v in found.values() if hasattr(v, "task_dict") for t in v.tasks}
        with os.fdopen(write, "w") as out:
            new = sorted(set(sys.modules) - base)
            json.dump({"modules": sorted(sys.modules), "new": new, "tasks": tasks}, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"parsing {path} for {task_id} failed (status {status})")
    print(text)
"""


def parse_all(jobs: list[tuple[Path, str | None]], preamble: str = TASK_RUNNER) -> list[dict]:
    """Parse each ``(DAG file, task id)`` as the task runner does for that task (``None``: as the
    dag-processor does); one fresh interpreter that runs ``preamble`` first, a fork per parse."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("_AIRFLOW_PARSING_CONTEXT")}
    arg = json.dumps([[str(path), task_id] for path, task_id in jobs])
    result = subprocess.run(
        [sys.executable, "-c", PROBE, arg, preamble], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(jobs)
    return reports


def imported(report: dict, packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if p in report["modules"])


def test_parsing_a_dag_file_imports_no_heavy_library_it_does_not_need():
    """As the dag-processor: no inference or image library; as a task process of a task that is not a
    pod: no Kubernetes client either."""
    jobs = [(path, task_id) for path in DAG_FILES for task_id in (None, "per_series.receive")]
    for (path, task_id), report in zip(jobs, parse_all(jobs), strict=True):
        assert report["tasks"], f"{path.name} built no DAG"
        assert imported(report, NEVER_AT_PARSE) == [], path.name
        if task_id is not None:
            assert imported(report, KUBERNETES) == [], f"{path.name} parsed for {task_id}"


def test_the_segmentation_pod_task_is_the_real_operator_where_it_runs():
    """The dag-processor and the predict task's own process build the pod operator; another task's
    process a stand-in of the same id and upstream, which cannot run."""
    processor, own, other = parse_all(
        [(SEGMENTATION, None), (SEGMENTATION, "per_series.predict"), (SEGMENTATION, "per_series.seg")]
    )
    for report in (processor, own):
        assert report["tasks"]["per_series.predict"] == "NnUNetPredictOperator"
        assert imported(report, KUBERNETES) != []
    assert other["tasks"]["per_series.predict"] == "StandIn"
    assert imported(other, KUBERNETES) == []
    rest = {k: v for k, v in other["tasks"].items() if k != "per_series.predict"}
    assert rest == {k: v for k, v in processor["tasks"].items() if k != "per_series.predict"}


def test_a_stand_in_keeps_the_graph_and_refuses_to_run(monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag

    real = create_segmentation_dag()
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "kaapana_nnunet_segmentation")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "per_series.index")
    parsed = create_segmentation_dag()
    for task in real.tasks:
        other = parsed.get_task(task.task_id)
        assert (other.upstream_task_ids, other.downstream_task_ids) == (
            task.upstream_task_ids,
            task.downstream_task_ids,
        ), task.task_id
    stand_in = parsed.get_task("per_series.predict")
    with pytest.raises(AirflowFailException, match="stand-in"):
        stand_in.execute({})
