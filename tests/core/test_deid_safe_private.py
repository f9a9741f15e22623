"""Retain Safe Private: the generated Table E.3.10-1, site lists from JSON, and the profile's rules."""

from __future__ import annotations

import json

import pytest

from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.deid.safe_private import (
    load_table,
    parse_safe_private,
    read_safe_private,
    standard_safe_private,
)


def test_the_standard_table_is_generated_data():
    table = load_table()
    assert table["generator"] == "scripts/generate_safe_private_table.py"
    assert "E.3.10-1" in table["table"]
    assert len(standard_safe_private()) == len(table["attributes"]) > 100
    assert all(group & 1 for _, group, _ in standard_safe_private())


def test_entries_in_every_spelling_mean_the_same():
    spellings = [
        {"creator": " GEMS_ACQU_01 ", "group": "0019", "element": "23"},
        {"creator": "GEMS_ACQU_01", "group": "0x0019", "element": "xx23"},
        {"creator": "GEMS_ACQU_01", "group": 0x19, "element": 0x1023},
    ]
    assert parse_safe_private(spellings) == {("GEMS_ACQU_01", 0x0019, 0x23)}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"creator": "X", "group": "0010", "element": "10"}, "not a private group"),
        ({"creator": "X", "group": "0009", "element": "0010"}, "not a private data element"),
        ({"creator": "", "group": "0009", "element": "10"}, "empty private creator"),
        ({"group": "0009", "element": "10"}, "missing creator"),
        ({"creator": "X", "group": "zz", "element": "10"}, "not hexadecimal"),
    ],
)
def test_bad_entries_are_named(tmp_path, entry, message):
    path = tmp_path / "safe.json"
    path.write_text(json.dumps({"attributes": [entry]}))
    with pytest.raises(ValueError, match=message) as error:
        read_safe_private(path)
    assert f"{path} entry 0" in str(error.value)


def test_profile_defaults_to_the_table_and_refuses_a_list_without_the_option():
    assert (
        DeidentificationProfile(frozenset({Option.RETAIN_SAFE_PRIVATE})).safe_private
        == standard_safe_private()
    )
    assert DeidentificationProfile().safe_private == frozenset()
    with pytest.raises(ValueError, match="retain-safe-private"):
        DeidentificationProfile(safe_private=frozenset({("X", 0x0009, 0x10)}))
