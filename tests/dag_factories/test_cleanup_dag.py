"""The workspace clean-up DAG removes old run workspaces and nothing else."""

from __future__ import annotations

import os
import time

from airflow_provider_kaapana.core.workspace import RunWorkspace, find_stale_workspaces


def _age(path, days):
    old = time.time() - days * 86400
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old))


def test_find_stale_ignores_fresh_and_unmarked(tmp_path):
    old = RunWorkspace(tmp_path, "kaapana_ingest", "manual__old").create()
    old.step_dir("1.2.3", "dicom").joinpath("a.dcm").write_bytes(b"x")
    fresh = RunWorkspace(tmp_path, "kaapana_ingest", "manual__fresh").create()
    unmarked = tmp_path / "someone" / "elses"
    unmarked.mkdir(parents=True)
    _age(old.root, 10)
    _age(unmarked, 10)
    stale = list(find_stale_workspaces(tmp_path, 7 * 86400))
    assert [s.run_id for s in stale] == ["manual__old"]
    assert fresh.root.exists()


def test_cleanup_dag_removes_stale_runs(airflow_db, tmp_path):
    from dags.kaapana_cleanup_workspaces import dag

    old = RunWorkspace(tmp_path, "kaapana_ingest", "manual__gone").create()
    old.step_dir("1.2.3", "dicom").joinpath("a.dcm").write_bytes(b"x")
    _age(old.root, 30)
    fresh = RunWorkspace(tmp_path, "kaapana_ingest", "manual__new").create()
    dag_run = dag.test(run_conf={"workspace_base": str(tmp_path), "max_age_days": 7})
    assert dag_run.state == "success"
    assert not old.root.exists()
    assert fresh.root.exists()
