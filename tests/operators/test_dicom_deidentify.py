"""DicomDeidentifyOperator: the key from a connection's password, the same bytes as the core/CLI step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest

from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.operators.dicom_deidentify import DicomDeidentifyOperator
from airflow_provider_kaapana.testing.synthetic import generate_series

KEY = "operator-test-site-key-0123456789abcdef"


@pytest.fixture
def key_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TEST_DEID_KEY", json.dumps({"conn_type": "generic", "password": KEY}))
    return "test_deid_key"


def test_operator_writes_what_the_core_writes(key_connection, tmp_path, caplog):
    series = generate_series(tmp_path / "in", slices=2, patient_name="ZQXFAMILY^Op")
    op = DicomDeidentifyOperator(
        task_id="deid",
        input_dir={"series_instance_uid": series.series_instance_uid, "series_dir": str(series.series_dir)},
        options=["retain-longitudinal-modified-dates"],
        key_conn_id=key_connection,
        output_dir=str(tmp_path / "op"),
    )
    with caplog.at_level(logging.DEBUG):
        result = op.execute({})
    assert len(result["written"]) == 2 and not result["quarantined"]
    assert KEY not in caplog.text
    core = deidentify_folder(
        series.series_dir,
        tmp_path / "core",
        DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})),
        KEY.encode(),
    )
    ours = sorted(Path(p).relative_to(tmp_path / "op") for p in result["written"])
    theirs = sorted(p.relative_to(tmp_path / "core") for p in core.written)
    assert ours == theirs
    for rel in ours:
        assert (tmp_path / "op" / rel).read_bytes() == (tmp_path / "core" / rel).read_bytes()
    assert pydicom.dcmread(result["written"][0]).PatientIdentityRemoved == "YES"


def test_operator_refuses_a_connection_without_password(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY_KEY", json.dumps({"conn_type": "generic"}))
    series = generate_series(tmp_path / "in", slices=1)
    op = DicomDeidentifyOperator(
        task_id="deid",
        input_dir=str(series.series_dir),
        key_conn_id="empty_key",
        output_dir=str(tmp_path / "o"),
    )
    with pytest.raises(KaapanaError, match="empty_key"):
        op.execute({})


def test_operator_writes_a_sealed_map_with_the_connections_public_key(monkeypatch, tmp_path):
    from airflow_provider_kaapana.core.deid.reidentify import read_maps
    from airflow_provider_kaapana.core.federation.crypto import generate_keypair

    private, public = generate_keypair()
    conn = {"conn_type": "generic", "password": KEY, "extra": {"reid_public_key": public}}
    monkeypatch.setenv("AIRFLOW_CONN_REID_KEY", json.dumps(conn))
    series = generate_series(tmp_path / "in", slices=1, patient_id="ZQXPID9")
    op = DicomDeidentifyOperator(
        task_id="deid",
        input_dir=str(series.series_dir),
        key_conn_id="reid_key",
        output_dir=str(tmp_path / "o"),
        reid_map_dir=str(tmp_path / "map"),
    )
    result = op.execute({})
    assert result["reid_map"] and Path(result["reid_map"]).parent == tmp_path / "map"
    entries = read_maps(tmp_path / "map", private)
    assert [p["patient_id"] for p in entries.patients.values()] == ["ZQXPID9"]
    assert series.sop_instance_uids[0] in entries.uids.values()

    monkeypatch.setenv("AIRFLOW_CONN_NO_PUB", json.dumps({"conn_type": "generic", "password": KEY}))
    op.key_conn_id = "no_pub"
    with pytest.raises(KaapanaError, match="reid_public_key"):
        op.execute({})


def test_operator_keeps_only_the_safe_listed_private_attributes(key_connection, tmp_path):
    from tests.cli.test_deid_cli import add_private_elements, private_values

    series = generate_series(tmp_path / "in", slices=1)
    add_private_elements(series.files)
    listed = [{"creator": "ZQX SITE PRIVATE", "group": "0x0029", "element": 0x11}]
    (tmp_path / "safe.json").write_text(json.dumps(listed))
    for name, safe_private in (("list", listed), ("file", str(tmp_path / "safe.json"))):
        op = DicomDeidentifyOperator(
            task_id="deid",
            input_dir=str(series.series_dir),
            options=["retain-safe-private"],
            safe_private=safe_private,
            key_conn_id=key_connection,
            output_dir=str(tmp_path / name),
        )
        out = pydicom.dcmread(op.execute({})["written"][0])
        assert private_values(out) == {("ZQX SITE PRIVATE", 0x0029, 0x11): "1.5"}, name
        assert out[0x00290010].value == "ZQX SITE PRIVATE"  # its private creator came along
        assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    op.options = []  # a list without the option would be ignored: refused instead
    with pytest.raises(ValueError, match="retain-safe-private"):
        op.execute({})
