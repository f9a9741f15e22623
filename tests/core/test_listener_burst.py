"""Burst batching: series that complete together are announced in one DAG run, bounded in size."""

from __future__ import annotations

import json
import time

import pytest

from airflow_provider_kaapana.core.ingest import batch_confs, landing_series
from airflow_provider_kaapana.core.listener.server import (
    LISTENER_CONF_KEYS,
    AirflowTrigger,
    DicomListener,
    SeriesBatch,
    run_conf,
    run_id_of,
)
from tests.core.listener_senders import sender
from tests.core.test_listener import storescu, wait_for


def test_series_completing_together_go_in_runs_of_at_most_n(tmp_path, synthetic_series, tool):
    series = [synthetic_series(slices=2, rows=8, columns=8, series_number=i + 1) for i in range(5)]
    runs: list[list[SeriesBatch]] = []
    landing = tmp_path / "landing"
    with DicomListener(
        landing,
        port=0,
        quiet_seconds=0.3,
        on_batches_complete=runs.append,
        max_series_per_run=2,
        run_linger_seconds=0.5,
        min_run_interval_seconds=1.0,
    ) as lst:
        # one association: all five series complete at the same moment
        result = storescu(tool, lst.port, [f for s in series for f in s.files])
        assert result.returncode == 0, result.stderr
        wait_for(lambda: sum(len(r) for r in runs) == 5, what="all series announced")
    assert sorted(len(r) for r in runs) == [1, 2, 2]
    assert sorted(b.series_instance_uid for r in runs for b in r) == sorted(
        s.series_instance_uid for s in series
    )
    for run in runs:
        assert len({b.series_instance_uid for b in run}) == len(run)
        for batch in run:  # every manifest: triggered, and names its run and the run's other batches
            saved = json.loads((landing / batch.manifest).read_text())
            assert saved["state"] == "triggered"
            assert saved["group_run_id"] == (run_id_of(run) if len(run) > 1 else "")
            assert saved["run_batches"] == [b.manifest for b in run]
    two = next(r for r in runs if len(r) == 2)
    conf = run_conf(two)
    assert conf["series_count"] == 2 and conf["instance_count"] == 4
    assert [b["series_instance_uid"] for b in batch_confs(conf)] == [b.series_instance_uid for b in two]
    assert [s.series_instance_uid for s in landing_series(conf)] == [b.series_instance_uid for b in two]
    assert all(len(s.files) == 2 for s in landing_series(conf))
    lone = next(r for r in runs if len(r) == 1)
    assert run_id_of(lone) == lone[0].run_id and run_conf(lone) == lone[0].conf()  # as before batching


def test_a_lone_series_is_announced_without_waiting_for_others(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, rows=8, columns=8)
    runs: list[tuple[float, list[SeriesBatch]]] = []
    with DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=0.3,
        on_batches_complete=lambda batches: runs.append((time.monotonic(), batches)),
        run_linger_seconds=0.5,
        min_run_interval_seconds=30,
    ) as lst:
        assert storescu(tool, lst.port, series.files).returncode == 0
        sent = time.monotonic()
        wait_for(lambda: runs, what="the lone series announced")
    ((announced_at, (batch,)),) = runs
    assert batch.series_instance_uid == series.series_instance_uid and batch.instance_count == 2
    # quiet period + linger + check ticks: no run went before, so the interval does not hold it back
    # (a loose bound: the machine is shared)
    assert announced_at - sent < 10


def test_runs_that_are_not_full_go_at_most_every_min_run_interval(tmp_path, synthetic_series, tool):
    runs: list[list[SeriesBatch]] = []
    lst = DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=3600,
        on_batches_complete=runs.append,
        max_series_per_run=3,
        run_linger_seconds=0.0,
        min_run_interval_seconds=3600,
    ).start()
    numbers = iter(range(1, 100))

    def send(n: int) -> None:
        files = [f for _ in range(n) for f in synthetic_series(slices=1, series_number=next(numbers)).files]
        assert storescu(tool, lst.port, files).returncode == 0

    try:  # the listener's own check loop announces (every 50 ms here)
        send(1)
        time.sleep(0.5)
        assert not runs  # not quiet yet
        lst.quiet_seconds = 0.0
        wait_for(lambda: [len(r) for r in runs] == [1], what="the first run, at once")
        send(2)
        time.sleep(1.0)
        assert [len(r) for r in runs] == [1]  # not full: waits for the interval
        send(2)  # now 4 wait: one full run of 3 goes at once, 1 waits on
        wait_for(lambda: [len(r) for r in runs] == [1, 3], what="the full run")
        time.sleep(0.5)
        assert [len(r) for r in runs] == [1, 3]
        lst.min_run_interval_seconds = 0.0
        wait_for(lambda: [len(r) for r in runs] == [1, 3, 1], what="the rest, after the interval")
    finally:
        lst.stop()
    assert len({b.series_instance_uid for r in runs for b in r}) == 5


def test_a_failed_run_is_retried_as_the_same_run_also_after_a_restart(
    tmp_path, synthetic_series, tool, fake_airflow
):
    handler, url = fake_airflow
    trigger = AirflowTrigger(url, "kaapana_ingest", username="admin", password="pw", retries=0)
    series = [synthetic_series(slices=2, rows=8, columns=8, series_number=i + 1) for i in range(3)]
    landing = tmp_path / "landing"
    handler.fail_next = 1  # the first dagRuns POST fails (503, no retry inside the client)
    lst = DicomListener(
        landing,
        port=0,
        quiet_seconds=3600,
        on_batches_complete=trigger.trigger_batches,
        retry_seconds=3600,
    ).start()
    try:
        assert storescu(tool, lst.port, [f for s in series for f in s.files]).returncode == 0
    finally:
        lst.stop(flush=True)  # cut and announce all now: the one run of three fails, they stay pending
    manifests = sorted((landing / ".kaapana" / "batches").glob("*/*.json"))
    saved = [json.loads(m.read_text()) for m in manifests]
    assert [s["state"] for s in saved] == ["pending"] * 3
    (run_id,) = {s["group_run_id"] for s in saved}
    assert run_id.startswith("kaapana_listen__3series__")
    # a restart announces the very same run (same id, same conf), not a new grouping
    again = DicomListener(landing, port=0, quiet_seconds=3600, on_batches_complete=trigger.trigger_batches)
    again.start()
    try:
        wait_for(lambda: handler.runs, what="the retried run")
    finally:
        again.stop()
    assert handler.runs == {run_id}
    posts = [r[3] for r in handler.requests if r[1].endswith("/dagRuns")]
    assert [p["dag_run_id"] for p in posts] == [run_id, run_id]
    assert posts[0]["conf"] == posts[1]["conf"] and posts[0]["conf"]["series_count"] == 3
    assert [json.loads(m.read_text())["state"] for m in manifests] == ["triggered"] * 3
    # triggering the same batches again is no second run
    batches = [SeriesBatch.load(m) for m in json.loads(manifests[0].read_text())["run_batches"]]
    assert trigger.trigger_batches(batches)["already_triggered"] is True and handler.runs == {run_id}


def test_listener_conf_keys_are_the_keys_of_the_confs_the_listener_builds():
    batches = [
        SeriesBatch("1.2", f"1.2.{n}", f"/l/1.2/1.2.{n}", 1, ["a.dcm"], "MOD", "KAAPANA", 3.0) for n in (3, 4)
    ]
    lone, several = run_conf(batches[:1]), run_conf(batches)
    assert set(lone) | set(several) == set(LISTENER_CONF_KEYS)
    assert len(set(LISTENER_CONF_KEYS)) == len(LISTENER_CONF_KEYS)


def test_batch_confs_refuses_two_batches_of_one_series():
    one = {"series_dir": "/l/1.2/1.2.3", "series_instance_uid": "1.2.3", "study_instance_uid": "1.2"}
    assert batch_confs(one) == [one]
    with pytest.raises(ValueError, match=r"names series 1\.2\.3 twice"):
        batch_confs({"batches": [one, dict(one)]})
    with pytest.raises(ValueError, match="series_dir and series_instance_uid"):
        batch_confs({"batches": [{"series_dir": "/x"}]})


def lingering_listener(tmp_path, runs: list) -> DicomListener:
    """A listener whose completed series would wait 120 s for others, unless nothing is arriving."""
    return DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=0.3,
        on_batches_complete=runs.append,
        run_linger_seconds=120,
        min_run_interval_seconds=300,  # the first run: not held back by it, nor released by its wait
    )


def test_with_nothing_arriving_a_lone_series_does_not_wait_for_the_linger(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, rows=8, columns=8)
    runs: list[list[SeriesBatch]] = []
    with lingering_listener(tmp_path, runs) as lst:
        assert storescu(tool, lst.port, series.files).returncode == 0
        # no association open, no series waiting for its quiet period: nothing could join the run
        wait_for(lambda: runs, timeout=60, what="the lone series announced before its 120 s linger")
    assert [b.series_instance_uid for b in runs[0]] == [series.series_instance_uid]


def test_an_open_association_keeps_the_linger(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, rows=8, columns=8)
    runs: list[list[SeriesBatch]] = []
    with lingering_listener(tmp_path, runs) as lst:
        held = sender("HOLDER").associate("127.0.0.1", lst.port, ae_title="KAAPANA")
        assert held.is_established  # another series may still come on it
        try:
            assert storescu(tool, lst.port, series.files).returncode == 0
            time.sleep(3.0)  # ten quiet periods: the batch was cut, and waits
            assert runs == []
        finally:
            held.release()
        wait_for(lambda: runs, timeout=60, what="the series announced once the association was released")
    assert [b.series_instance_uid for b in runs[0]] == [series.series_instance_uid]
