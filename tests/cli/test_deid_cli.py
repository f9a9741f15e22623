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


def add_private_elements(files):
    """A site-listed, an unlisted and a Table E.3.10-1 private attribute in every file."""
    for path in files:
        ds = pydicom.dcmread(path)
        site = ds.private_block(0x0029, "ZQX SITE PRIVATE", create=True)
        site.add_new(0x11, "DS", "1.5")  # the site's list names this one
        site.add_new(0x12, "LO", "ZQXUNLISTED")  # and not this one
        gems = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        gems.add_new(0x23, "DS", "0.75")  # (0019,xx23) GEMS_ACQU_01 in Table E.3.10-1
        ds.save_as(path, enforce_file_format=True)


def private_values(ds):
    return {
        (e.private_creator, e.tag.group, e.tag.element & 0xFF): e.value
        for e in ds
        if e.tag.is_private and e.tag.element >= 0x1000
    }


def test_safe_private_list_from_a_file(tmp_path):
    series = generate_series(tmp_path / "in", slices=2)
    add_private_elements(series.files)
    key_file = tmp_path / "site.key"
    key_file.write_text(KEY)
    safe = tmp_path / "safe.json"
    safe.write_text(json.dumps([{"creator": "ZQX SITE PRIVATE", "group": "0029", "element": "xx11"}]))
    base = ("deid", str(series.series_dir), "--key-file", str(key_file), "--json")

    listed = kaapana(
        *base[:2],
        str(tmp_path / "listed"),
        *base[2:],
        "--option",
        "retain-safe-private",
        "--safe-private",
        str(safe),
    )
    assert listed.returncode == 0, listed.stderr
    out = pydicom.dcmread(json.loads(listed.stdout)["written"][0])
    assert private_values(out) == {("ZQX SITE PRIVATE", 0x0029, 0x11): "1.5"}  # with its creator
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113111"]

    # without a list: PS3.15 Table E.3.10-1
    default = kaapana(*base[:2], str(tmp_path / "default"), *base[2:], "--option", "retain-safe-private")
    assert default.returncode == 0, default.stderr
    out = pydicom.dcmread(json.loads(default.stdout)["written"][0])
    assert private_values(out) == {("GEMS_ACQU_01", 0x0019, 0x23): "0.75"}

    # without the option: no private attribute, no Retain Safe Private code
    plain = kaapana(*base[:2], str(tmp_path / "plain"), *base[2:])
    out = pydicom.dcmread(json.loads(plain.stdout)["written"][0])
    assert private_values(out) == {} and "113111" not in [
        i.CodeValue for i in out.DeidentificationMethodCodeSequence
    ]
    for written in (tmp_path / "listed").rglob("*.dcm"):
        assert b"ZQXUNLISTED" not in written.read_bytes()

    # a list without the option, or a bad list, is refused naming what is wrong
    alone = kaapana(*base[:2], str(tmp_path / "alone"), *base[2:], "--safe-private", str(safe))
    assert alone.returncode == 1 and "retain-safe-private" in alone.stderr
    safe.write_text(json.dumps([{"creator": "X", "group": "0028", "element": "10"}]))
    bad = kaapana(
        *base[:2],
        str(tmp_path / "bad"),
        *base[2:],
        "--option",
        "retain-safe-private",
        "--safe-private",
        str(safe),
    )
    assert bad.returncode == 1 and str(safe) in bad.stderr and "not a private group" in bad.stderr
