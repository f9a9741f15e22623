"""Where a DAG run's seconds go, task by task: scheduling, process start, DAG file parse, work, finish.

Read from a finished run of a :class:`~airflow_provider_kaapana.testing.local_airflow.LocalAirflow` over
REST: each task instance's ``queued_when``/``start_date``/``end_date``, the DAG's task graph, and the
task's structured log, in which Airflow's task runner itself marks the phases (no timer of ours):

- ``::group::Pre Execute``: the task process is up (forked by the executor's worker);
- ``Worker startup parse complete`` with ``dag_file_parse_ms``: the DAG file parsed in that process (the
  imports of the DAG file and of every operator module it names, and building the DAG);
- the first ``::endgroup::``: ``execute()`` begins; ``::group::Post Execute``: it returned.

The phases of one task, in seconds:

- ``scheduling``: from the moment it could run (its last upstream task ended, or the run was queued) to its
  ``start_date`` (scheduler loop, executor queue, fork of the task process);
- ``startup``: from ``start_date`` to ``execute()``, less the parse (the start call to the API server,
  the startup message, rendering templates);
- ``parse``: ``dag_file_parse_ms``;
- ``work``: ``execute()``;
- ``finish``: from ``execute()``'s return to ``end_date`` (XCom push, the state reported).

Like the rest of ``testing``, this never imports Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

PHASES = ("scheduling", "startup", "parse", "work", "finish")


@dataclass
class TaskPhases:
    task: str  # task id, ``[map_index]`` for mapped tasks
    ready: datetime  # when it could have started
    start: datetime
    end: datetime
    scheduling: float
    startup: float
    parse: float
    work: float
    finish: float
    upstream: str | None  # the upstream task whose end made it ready (None: the run's queueing)

    @property
    def seconds(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PHASES}


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _events(airflow: Any, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[dict[str, Any]]:
    r = airflow.api(
        "GET",
        f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
        f"{quote(ti['task_id'], safe='')}/logs/{ti.get('try_number') or 1}",
        params={"map_index": ti.get("map_index", -1), "full_content": True},
        headers={"Accept": "application/json"},
    )
    content = r.json().get("content", [])
    return [e for e in content if isinstance(e, dict)] if isinstance(content, list) else []


def phases_of(ti: dict[str, Any], events: list[dict[str, Any]], ready: datetime) -> dict[str, float]:
    """The phases (seconds) of one finished task instance from its REST JSON and its log events."""
    start, end = _when(ti["start_date"]), _when(ti["end_date"])
    assert start is not None and end is not None
    pre = exec_start = exec_end = None
    parse = 0.0
    for event in events:
        text, at = str(event.get("event", "")), _when(event.get("timestamp"))
        if at is None:
            continue
        if text.startswith("::group::Pre Execute") and pre is None:
            pre = at
        elif text.startswith("Worker startup parse complete"):
            parse = float(event.get("dag_file_parse_ms") or 0) / 1000
        elif text.startswith("::endgroup::") and pre is not None and exec_start is None:
            exec_start = at
        elif text.startswith("::group::Post Execute") and exec_end is None:
            exec_end = at
    exec_start = exec_start or start
    exec_end = exec_end or end
    return {
        "scheduling": max(0.0, (start - ready).total_seconds()),
        "startup": max(0.0, (exec_start - start).total_seconds() - parse),
        "parse": parse,
        "work": max(0.0, (exec_end - exec_start).total_seconds()),
        "finish": max(0.0, (end - exec_end).total_seconds()),
    }


def run_timeline(airflow: Any, dag_id: str, run_id: str) -> list[TaskPhases]:
    """Every finished task instance of a run (skipped ones and stand-ins that never ran left out), by start."""
    run = airflow.api("GET", f"dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}").json()
    run_ready = _when(run.get("queued_at")) or _when(run.get("start_date"))
    tasks = airflow.api("GET", f"dags/{quote(dag_id, safe='')}/tasks").json().get("tasks", [])
    upstream: dict[str, list[str]] = {}
    for task in tasks:
        for down in task.get("downstream_task_ids") or []:
            upstream.setdefault(down, []).append(task["task_id"])
    instances = airflow.task_instances(dag_id, run_id)
    ended = {
        key: (ti["task_id"], _when(ti["end_date"])) for key, ti in instances.items() if ti.get("end_date")
    }
    out: list[TaskPhases] = []
    for key, ti in instances.items():
        if not ti.get("start_date") or not ti.get("end_date") or ti.get("state") == "skipped":
            continue
        # ready when the last upstream instance (any map index) ended
        ready, by = run_ready, None
        for up_key, (up_task, up_end) in ended.items():
            if up_task in upstream.get(ti["task_id"], []) and up_end and (ready is None or up_end > ready):
                ready, by = up_end, up_key
        start = _when(ti["start_date"])
        assert start is not None
        ready = min(ready or start, start)
        phases = phases_of(ti, _events(airflow, dag_id, run_id, ti), ready)
        out.append(TaskPhases(key, ready, start, _when(ti["end_date"]), **phases, upstream=by))  # type: ignore[arg-type]
    return sorted(out, key=lambda p: p.start)


def critical_path(timeline: list[TaskPhases]) -> list[TaskPhases]:
    """The chain of tasks that made the run as long as it was: back from the last to end, each task's
    ``upstream`` (the one whose end made it ready), first task first."""
    by_task = {p.task: p for p in timeline}
    path: list[TaskPhases] = []
    current = max(timeline, key=lambda p: p.end) if timeline else None
    while current is not None:
        path.append(current)
        current = by_task.get(current.upstream) if current.upstream else None
    return path[::-1]
