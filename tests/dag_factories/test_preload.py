"""``airflow_provider_kaapana.preload``: what a forkserver imports once so that task processes don't.

With ``[scheduler] mp_forkserver_preload = airflow_provider_kaapana.preload`` every LocalExecutor task
process is a fork of a process that imported it; parsing a shipped DAG file there must then import
nothing more (a DAG file or operator that starts importing a new library shows up here, to be added to
the preload list or made lazy).
"""

from __future__ import annotations

from tests.dag_factories.test_parse_imports import DAG_FILES, parse_all


def test_after_the_preload_parsing_any_shipped_dag_file_imports_nothing_more():
    reports = parse_all(
        [(path, None) for path in DAG_FILES], preamble="import airflow_provider_kaapana.preload"
    )
    for path, report in zip(DAG_FILES, reports, strict=True):
        assert report["tasks"], f"{path.name} built no DAG"
        assert report["new"] == [], f"{path.name} imported after the preload: {report['new']}"


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

    assert preload.MISSING == []  # every extra is installed in the test environment
    assert preload.warm_tables() == []  # the highdicom release we pin has every table
    for name in preload.HIGHDICOM_TABLES:
        table = getattr(_standard_utils, name)
        assert table.cache_info().currsize == 1 and table() is table()
