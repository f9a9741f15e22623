"""``airflow_provider_kaapana.preload``: what a forkserver imports once so that task processes don't.

With ``[scheduler] mp_forkserver_preload = airflow_provider_kaapana.preload`` every LocalExecutor task
process is a fork of a process that imported it; parsing a shipped DAG file there must then import
nothing more (a DAG file or operator that starts importing a new library shows up here, to be added to
the preload list or made lazy).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.dag_factories.test_parse_imports import DAG_FILES

PROBE = """
import json, os, runpy, sys
import airflow_provider_kaapana.preload as preload
base = set(sys.modules)
print(json.dumps({"missing": preload.MISSING, "skipped": preload.SKIPPED_TABLES}))
for path in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        found = runpy.run_path(path, run_name="dag_file")
        dags = [v.dag_id for v in found.values() if hasattr(v, "task_dict")]
        with os.fdopen(write, "w") as out:
            json.dump({"path": path, "dags": dags, "new": sorted(set(sys.modules) - base)}, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"parsing {path} failed (status {status})")
    print(text)
"""


def test_after_the_preload_parsing_any_shipped_dag_file_imports_nothing_more():
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([str(p) for p in DAG_FILES])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, *reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert first["missing"] == []  # every extra is installed in the test environment
    assert first["skipped"] == []  # the highdicom release we pin has every table
    assert len(reports) == len(DAG_FILES)
    for report in reports:
        assert report["dags"], f"{report['path']} built no DAG"
        assert report["new"] == [], f"{report['path']} imported after the preload: {report['new']}"


def test_the_local_harness_starts_local_executor_workers_from_the_preloaded_forkserver(tmp_path):
    from airflow_provider_kaapana.testing.local_airflow import LocalAirflow

    env = LocalAirflow(tmp_path, tmp_path / "dags").env()
    assert env["AIRFLOW__SCHEDULER__MP_START_METHOD"] == "forkserver"
    assert env["AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD"] == "airflow_provider_kaapana.preload"
    plain = LocalAirflow(tmp_path, tmp_path / "dags", preload=False).env()
    assert "AIRFLOW__SCHEDULER__MP_START_METHOD" not in plain


def test_the_preloaded_highdicom_tables_are_the_ones_highdicom_uses():
    # a task forked after the preload finds them parsed: the cached function returns the same object
    from highdicom import _standard_utils

    import airflow_provider_kaapana.preload as preload

    assert preload.warm_tables() == []
    for name in preload.HIGHDICOM_TABLES:
        table = getattr(_standard_utils, name)
        assert table.cache_info().currsize == 1 and table() is table()
