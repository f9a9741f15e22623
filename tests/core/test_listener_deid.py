"""De-identification on intake: a research AE title receives only de-identified data, originals never
written to the landing zone; the clinical AE title of the same listener keeps the originals. Intake
routes pick the profile by called and calling AE title; the site key comes from a file or an Airflow
connection and never shows in logs or output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from urllib.parse import quote

import pydicom
import pytest

from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.listener.server import (
    DicomListener,
    IntakeDeidentification,
    IntakeRoute,
    SeriesBatch,
)
from tests.core.test_listener import landed, storescu, wait_for

KEY = b"intake-site-key-0123456789abcdefghij"
PROFILE = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))


def test_research_ae_gets_only_deidentified_instances(tmp_path, synthetic_series, tool, caplog):
    series = synthetic_series(slices=4, patient_name="ZQXINTAKE^Pat", patient_id="ZQXPID31")
    burned = pydicom.dcmread(series.files[0])
    burned.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.98.1"
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "burned.dcm", enforce_file_format=True)
    batches: list[SeriesBatch] = []
    deid = IntakeDeidentification.for_called_aes(PROFILE, KEY, {"RESEARCH"})
    landing = tmp_path / "landing"
    with caplog.at_level(logging.WARNING, logger="airflow_provider_kaapana.core.listener.server"):
        with DicomListener(
            landing, port=0, quiet_seconds=0.3, on_series_complete=batches.append, deidentification=deid
        ) as lst:
            result = storescu(tool, lst.port, series.files, called="RESEARCH")
            assert result.returncode == 0, result.stderr
            refused = storescu(tool, lst.port, [tmp_path / "burned.dcm"], called="RESEARCH")
            wait_for(lambda: batches, what="series completion")
    files = landed(landing)
    assert len(files) == 4  # the burned-in instance was refused, nothing of it written
    assert "refuses it" in caplog.text and "BurnedInAnnotation" in caplog.text
    assert KEY.decode() not in caplog.text
    assert refused.returncode != 0  # storescu saw the failure status
    for path in landing.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for original in (b"ZQXINTAKE", b"ZQXPID31", series.series_instance_uid.encode()):
                assert original not in data, f"{path} holds an original identifier"
    # what landed is exactly what the folder step writes from the same originals with the same key
    expected = deidentify_folder(series.series_dir, tmp_path / "expected", PROFILE, KEY)
    by_name = {p.name: p for p in expected.written}
    for path in files:
        assert path.read_bytes()[132:] != b""  # a Part 10 file
        same = by_name[path.name]
        assert pydicom.dcmread(path) == pydicom.dcmread(same)
        assert path.parent.name == same.parent.name  # the pseudonymous series UID
    (batch,) = batches
    assert batch.conf()["called_ae"] == "RESEARCH"
    assert batch.conf()["series_instance_uid"] == files[0].parent.name != series.series_instance_uid


def test_other_called_ae_titles_keep_the_originals(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=2, patient_name="ZQXCLINIC^Pat")
    deid = IntakeDeidentification.for_called_aes(PROFILE, KEY, {"RESEARCH"})
    batches: list[SeriesBatch] = []
    with DicomListener(
        tmp_path / "landing",
        port=0,
        quiet_seconds=0.3,
        on_series_complete=batches.append,
        deidentification=deid,
    ) as lst:
        assert storescu(tool, lst.port, series.files, called="KAAPANA").returncode == 0
        wait_for(lambda: batches, what="series completion")
    files = landed(tmp_path / "landing")
    assert [f.parent.name for f in files] == [series.series_instance_uid] * 2
    assert str(pydicom.dcmread(files[0]).PatientName) == "ZQXCLINIC^Pat"


def _by_series(files):
    out: dict[str, list] = {}
    for path in files:
        out.setdefault(path.parent.name, []).append(path)
    return out


def test_routes_pick_the_profile_by_called_and_calling_ae(tmp_path, synthetic_series, tool):
    full = synthetic_series(slices=2, patient_name="ZQXFULL^Pat", patient_id="ZQXPIDF")
    basic = synthetic_series(slices=2, patient_name="ZQXBASIC^Pat", patient_id="ZQXPIDB")
    modified = synthetic_series(slices=2, patient_name="ZQXMOD^Pat", patient_id="ZQXPIDM")
    clinical = synthetic_series(slices=2, patient_name="ZQXCLIN^Pat", patient_id="ZQXPIDC")
    routes = (
        IntakeRoute.parse("RESEARCH:CT01=retain-longitudinal-full-dates"),  # tried first
        IntakeRoute.parse("RESEARCH="),  # every other sender to RESEARCH: the basic profile alone
        IntakeRoute.parse("TEACHING=retain-longitudinal-modified-dates,clean-descriptors"),
    )
    deid = IntakeDeidentification(KEY, routes)
    batches: list[SeriesBatch] = []
    landing = tmp_path / "landing"
    sends = (
        (full, "CT01", "RESEARCH", routes[0]),
        (basic, "CT02", "RESEARCH", routes[1]),
        (modified, "CT01", "TEACHING", routes[2]),
        (clinical, "CT01", "KAAPANA", None),  # no route: stored as received
    )
    with DicomListener(
        landing, port=0, quiet_seconds=0.3, on_series_complete=batches.append, deidentification=deid
    ) as lst:
        for series, calling, called, _ in sends:
            result = storescu(tool, lst.port, series.files, calling=calling, called=called)
            assert result.returncode == 0, result.stderr
        wait_for(lambda: len(batches) == 4, what="four series")
    landed_series = _by_series(landed(landing))
    assert len(landed_series) == 4 and all(len(f) == 2 for f in landed_series.values())
    # the unmatched association kept its originals
    kept = landed_series.pop(clinical.series_instance_uid)
    assert str(pydicom.dcmread(kept[0]).PatientName) == "ZQXCLIN^Pat"
    stamps = {}
    for series, _calling, _called, route in sends[:3]:
        expected = deidentify_folder(
            series.series_dir, tmp_path / f"expected-{series.series_instance_uid}", route.profile, KEY
        )
        (series_uid,) = {p.parent.name for p in expected.written}
        files = landed_series.pop(series_uid)  # each series under its own route's pseudonymous UID
        by_name = {p.name: p for p in expected.written}
        for path in files:
            assert pydicom.dcmread(path) == pydicom.dcmread(by_name[path.name])
        stamps[series.series_instance_uid] = pydicom.dcmread(files[0]).LongitudinalTemporalInformationModified
        # the originals never reached the landing zone
        for path in files:
            data = path.read_bytes()
            for original in (
                series.spec.patient_name.split("^")[0].encode(),
                series.spec.patient_id.encode(),
                series.series_instance_uid.encode(),
                series.study_instance_uid.encode(),
            ):
                assert original not in data, f"{path} holds an original identifier"
    assert not landed_series
    assert stamps == {
        full.series_instance_uid: "UNMODIFIED",
        basic.series_instance_uid: "REMOVED",
        modified.series_instance_uid: "MODIFIED",
    }
    assert sorted((b.conf()["calling_ae"], b.conf()["called_ae"]) for b in batches) == sorted(
        (calling, called) for _, calling, called, _ in sends
    )


def test_route_syntax():
    route = IntakeRoute.parse(" RESEARCH : CT01 =retain-uids, clean-descriptors")
    assert (route.called_ae, route.calling_ae) == ("RESEARCH", "CT01")
    assert route.profile.options == {Option.RETAIN_UIDS, Option.CLEAN_DESCRIPTORS}
    assert route.matches("RESEARCH", "CT01 ") and not route.matches("RESEARCH", "CT02")
    anyone = IntakeRoute.parse("*=")
    assert anyone.profile.options == frozenset() and anyone.matches("X", "Y")
    assert IntakeDeidentification(KEY, (route,)).route("KAAPANA", "CT01") is None
    for bad in ("RESEARCH", "=clean-descriptors", "RESEARCH=retain-everything", "A" * 17 + "="):
        with pytest.raises(ValueError):
            IntakeRoute.parse(bad)


def _listen_args(*argv: str) -> argparse.Namespace:
    from airflow_provider_kaapana.commands import listen

    parser = argparse.ArgumentParser()
    listen.add_arguments(parser)
    return parser.parse_args(["--port", "0", "--landing", "L", "--no-trigger", *argv])


def test_old_flags_form_one_route_and_do_not_mix_with_routes(tmp_path):
    from airflow_provider_kaapana.commands.listen import _intake_deidentification

    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY + b"\n")
    args = _listen_args(
        "--deid-key-file", str(key_file), "--deid-option", "clean-descriptors", "--deid-called-ae", "RESEARCH"
    )
    deid = _intake_deidentification(args)
    assert deid.key == KEY
    assert [(r.called_ae, r.calling_ae, r.profile.options) for r in deid.routes] == [
        ("RESEARCH", "*", {Option.CLEAN_DESCRIPTORS})
    ]
    everything = _intake_deidentification(_listen_args("--deid-key-file", str(key_file)))
    assert everything.route("ANY", "ONE") is not None  # the old default: every association
    assert _intake_deidentification(_listen_args()) is None
    for argv in (
        ("--deid-key-file", str(key_file), "--deid-route", "R=", "--deid-option", "clean-descriptors"),
        ("--deid-route", "R="),  # no key
        ("--deid-key-file", str(key_file), "--deid-key-conn", "c", "--deid-route", "R="),
    ):
        with pytest.raises(ValueError):
            _intake_deidentification(_listen_args(*argv))


def test_a_safe_private_list_without_a_route_that_retains_safe_private_is_refused(tmp_path):
    """As ``kaapana deid --safe-private`` without the option: the list is not silently dropped."""
    from airflow_provider_kaapana.commands.listen import _intake_deidentification

    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY)
    safe_file = tmp_path / "safe.json"
    safe_file.write_text(json.dumps([{"creator": "ACME", "group": "0009", "element": "10"}]))
    keyed = ("--deid-key-file", str(key_file), "--deid-safe-private", str(safe_file))
    for argv in (
        ("--deid-route", "RESEARCH=clean-descriptors", "--deid-route", "TEACHING="),
        ("--deid-option", "clean-descriptors"),
        (),  # the old default: every association, basic profile
    ):
        with pytest.raises(
            ValueError, match=r"--deid-safe-private .*safe\.json needs a route with .*retain-safe-private"
        ):
            _intake_deidentification(_listen_args(*keyed, *argv))
    deid = _intake_deidentification(
        _listen_args(*keyed, "--deid-route", "RESEARCH=retain-safe-private", "--deid-route", "TEACHING=")
    )
    assert [r.profile.safe_private for r in deid.routes] == [frozenset({("ACME", 0x0009, 0x10)}), frozenset()]
    legacy = _intake_deidentification(_listen_args(*keyed, "--deid-option", "retain-safe-private"))
    assert legacy.routes[0].profile.safe_private == frozenset({("ACME", 0x0009, 0x10)})


def test_key_from_an_airflow_connection_is_the_key_of_the_file(tmp_path, monkeypatch, caplog):
    from airflow_provider_kaapana.commands.listen import _intake_deidentification
    from airflow_provider_kaapana.exceptions import KaapanaError

    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY)
    secret = KEY.decode()
    # URI form (the key URL-encoded as password) and JSON form, with the key in the password or extra
    monkeypatch.setenv("AIRFLOW_CONN_DEID_URI", f"generic://site:{quote(secret, safe='')}@localhost")
    monkeypatch.setenv("AIRFLOW_CONN_DEID_JSON", json.dumps({"conn_type": "generic", "password": secret}))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DEID_EXTRA", json.dumps({"conn_type": "generic", "extra": {"key": secret}})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_DEID_SHORT", json.dumps({"conn_type": "generic", "password": "ZQXSHORTKEY"})
    )
    with caplog.at_level(logging.DEBUG):
        from_file = _intake_deidentification(
            _listen_args("--deid-key-file", str(key_file), "--deid-route", "R=")
        )
        for conn in ("deid_uri", "deid_json", "deid_extra"):
            from_conn = _intake_deidentification(_listen_args("--deid-key-conn", conn, "--deid-route", "R="))
            assert from_conn.key == from_file.key == KEY, conn
        with pytest.raises(KaapanaError, match="deid_short") as short:
            _intake_deidentification(_listen_args("--deid-key-conn", "deid_short", "--deid-route", "R="))
        with pytest.raises(KaapanaError, match="AIRFLOW_CONN_DEID_MISSING"):
            _intake_deidentification(_listen_args("--deid-key-conn", "deid_missing", "--deid-route", "R="))
    assert "ZQXSHORTKEY" not in str(short.value) and "at least 32 bytes" in str(short.value)
    assert secret not in caplog.text and "ZQXSHORTKEY" not in caplog.text


def test_key_connection_without_airflow_is_a_clear_error(monkeypatch, capsys):
    """Without Airflow, ``--deid-key-conn`` is a KaapanaError (exit 2, one line), not a traceback."""
    from airflow_provider_kaapana.commands import listen
    from airflow_provider_kaapana.exceptions import KaapanaError

    monkeypatch.setitem(sys.modules, "airflow.sdk", None)  # as if Airflow were not installed
    args = _listen_args("--deid-key-conn", "deid_site_key", "--deid-route", "R=")
    with pytest.raises(KaapanaError, match="'deid_site_key'.*needs Apache Airflow.*--deid-key-file"):
        listen._intake_deidentification(args)
    assert listen.run(args) == 2
    assert "needs Apache Airflow installed (airflow.sdk cannot be imported)" in capsys.readouterr().out


def _kaapana(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_listen_with_a_key_connection_lands_what_the_key_file_gives(tmp_path, synthetic_series, tool):
    series = synthetic_series(slices=3, patient_name="ZQXCONN^Pat", patient_id="ZQXPIDK")
    secret = KEY.decode()
    env = {"AIRFLOW_CONN_DEID_SITE_KEY": json.dumps({"conn_type": "generic", "password": secret})}
    landing = tmp_path / "landing"
    log_file = tmp_path / "listen.log"
    cmd = [sys.executable, "-m", "airflow_provider_kaapana", "-vv", "listen", "--port", "0"]
    cmd += ["--landing", str(landing), "--no-trigger", "--quiet-seconds", "0.3", "--min-free-mb", "1"]
    cmd += ["--deid-route", "RESEARCH=retain-longitudinal-modified-dates", "--deid-key-conn", "deid_site_key"]
    with log_file.open("w") as log_out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log_out, text=True, env={**os.environ, **env}
        )
        try:
            # Airflow's configuration may print a line of its own first
            lines = [proc.stdout.readline() for _ in range(1)]
            while "kaapana listen:" not in lines[-1] and lines[-1] and len(lines) < 20:
                lines.append(proc.stdout.readline())
            line = lines[-1]
            assert "kaapana listen:" in line, "".join(lines) + log_file.read_text()
            port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
            assert storescu(tool, port, series.files, called="RESEARCH").returncode == 0
            wait_for(lambda: len(landed(landing)) == 3, what="three landed instances")
        finally:
            proc.send_signal(signal.SIGTERM)
            rest = proc.communicate(timeout=30)[0]
    output = "".join(lines) + rest + log_file.read_text()
    assert "intake route RESEARCH:*=retain-longitudinal-modified-dates" in output
    assert secret not in output
    # the same key from a file (kaapana deid --key-file) gives the same pseudonyms and datasets
    key_file = tmp_path / "site.key"
    key_file.write_text(secret)
    out = tmp_path / "from-file"
    done = _kaapana(
        "deid",
        str(series.series_dir),
        str(out),
        "--key-file",
        str(key_file),
        "--option",
        "retain-longitudinal-modified-dates",
        env={},
    )
    assert done.returncode == 0, done.stderr
    expected = {p.relative_to(out).as_posix(): p for p in out.rglob("*.dcm")}
    got = {p.relative_to(p.parents[1]).as_posix(): p for p in landed(landing)}
    assert sorted(got) == sorted(expected)
    for name, path in got.items():
        assert pydicom.dcmread(path) == pydicom.dcmread(expected[name])
    for path in got.values():
        assert b"ZQXCONN" not in path.read_bytes() and b"ZQXPIDK" not in path.read_bytes()


def test_listen_refuses_a_bad_key_without_showing_it(tmp_path):
    env = {"AIRFLOW_CONN_DEID_SHORT": json.dumps({"conn_type": "generic", "password": "ZQXSHORT-secret"})}
    base = ("listen", "--port", "0", "--landing", str(tmp_path / "l"), "--no-trigger", "--deid-route", "R=")
    short = _kaapana(*base, "--deid-key-conn", "deid_short", env=env)
    assert short.returncode == 2 and "deid_short" in short.stdout and "at least 32 bytes" in short.stdout
    key_file = tmp_path / "short.key"
    key_file.write_text("ZQXSHORT-secret")
    from_file = _kaapana(*base, "--deid-key-file", str(key_file), env={})
    assert from_file.returncode == 2 and "at least 32 bytes" in from_file.stdout
    for proc in (short, from_file):
        assert "ZQXSHORT" not in proc.stdout + proc.stderr
