"""``kaapana deid``: one output per instance, options by their Table E.1-1 names, bad files named."""

from __future__ import annotations

import json
import subprocess
import sys

import pydicom

from airflow_provider_kaapana.testing.synthetic import generate_series

KEY = "cli-test-site-key-0123456789abcdefghij"


def kaapana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_deidentifies_a_folder(tmp_path):
    series = generate_series(tmp_path / "in", slices=3, patient_name="ZQXFAMILY^Ann")
    (tmp_path / "in" / "junk.txt").write_text("not dicom")
    burned = pydicom.dcmread(series.files[0])
    burned.SOPInstanceUID = "1.2.826.0.1.3680043.10.1337.97.1"
    burned.BurnedInAnnotation = "YES"
    burned.save_as(tmp_path / "in" / "burned.dcm", enforce_file_format=True)
    key_file = tmp_path / "site.key"
    key_file.write_text(KEY)
    proc = kaapana(
        "deid",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--key-file",
        str(key_file),
        "--option",
        "retain-longitudinal-modified-dates",
        "--option",
        "clean-descriptors",
        "--quarantine",
        str(tmp_path / "q"),
        "--json",
    )
    assert proc.returncode == 3, proc.stderr  # some inputs refused: the rest is written
    result = json.loads(proc.stdout)
    assert len(result["written"]) == 3
    assert list(result["quarantined"]) == [str(tmp_path / "in" / "burned.dcm")]
    assert list(result["failed"]) == [str(tmp_path / "in" / "junk.txt")]
    assert KEY not in proc.stdout + proc.stderr
    out = pydicom.dcmread(result["written"][0])
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "ZQXFAMILY" not in str(out.PatientName)
    assert (tmp_path / "q" / "quarantine.json").is_file()


def test_cli_refuses_unknown_option_and_short_key(tmp_path):
    series = generate_series(tmp_path / "in", slices=1)
    key_file = tmp_path / "site.key"
    key_file.write_text("short")
    proc = kaapana("deid", str(series.series_dir), str(tmp_path / "out"), "--key-file", str(key_file))
    assert proc.returncode == 1 and "at least 32 bytes" in proc.stderr
    assert "short" not in proc.stderr
    proc = kaapana("deid", "in", "out", "--key-file", str(key_file), "--option", "retain-everything")
    assert proc.returncode == 2 and "retain-everything" in proc.stderr


def test_reidentification_map_round_trip_only_with_the_private_key(tmp_path):
    from airflow_provider_kaapana.core.federation.crypto import generate_keypair

    series = generate_series(tmp_path / "in", slices=2, patient_id="ZQXPID42", patient_name="ZQXFAMILY^Ann")
    key_file = tmp_path / "site.key"
    key_file.write_text(KEY)
    private, public = generate_keypair()
    (tmp_path / "reid.pub").write_text(public)
    (tmp_path / "reid.key").write_text(private)
    deid = (
        "deid",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "--key-file",
        str(key_file),
        "--reid-map",
        str(tmp_path / "map"),
        "--reid-public-key",
        str(tmp_path / "reid.pub"),
        "--json",
    )
    first = kaapana(*deid)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert kaapana(*deid).returncode == 0  # a re-run replaces its map instead of adding one
    maps = list((tmp_path / "map").iterdir())
    assert [p.name for p in maps] == [result["reid_map"].rsplit("/", 1)[-1]]
    sealed = maps[0].read_bytes()
    for phi in (b"ZQXPID42", b"ZQXFAMILY", series.series_instance_uid.encode()):
        assert phi not in sealed  # the map is sealed: nothing readable without the private key

    out = pydicom.dcmread(result["written"][0])
    lookup = kaapana(
        "deid",
        "--reidentify",
        str(tmp_path / "map"),
        "--private-key-file",
        str(tmp_path / "reid.key"),
        "--pseudonym",
        str(out.PatientID),
        "--pseudonym",
        str(out.SeriesInstanceUID),
    )
    assert lookup.returncode == 0, lookup.stderr
    found = json.loads(lookup.stdout)
    assert found[str(out.PatientID)]["patient_id"] == "ZQXPID42"
    assert found[str(out.PatientID)]["patient_name"] == "ZQXFAMILY^Ann"
    assert found[str(out.SeriesInstanceUID)] == {"uid": series.series_instance_uid}

    other_private, _ = generate_keypair()
    (tmp_path / "other.key").write_text(other_private)
    denied = kaapana(
        "deid", "--reidentify", str(tmp_path / "map"), "--private-key-file", str(tmp_path / "other.key")
    )
    assert denied.returncode == 1
    assert "cannot be opened with this key" in denied.stderr and maps[0].name in denied.stderr
    assert "ZQXPID42" not in denied.stdout + denied.stderr
