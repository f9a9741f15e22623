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
