"""Reading argument values back: one boolean parser that refuses garbage, templated dicts and lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_kaapana.core.params import as_list, as_mapping, as_native, optional_int, parse_bool
from airflow_provider_kaapana.core.workspace import RunWorkspace, run_workspace


@pytest.mark.parametrize("word", ["true", "True", "TRUE", " yes ", "Yes", "1", "on", "ON"])
def test_parse_bool_true_words(word):
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["false", "False", "FALSE", "no", "NO", "0", "off", " Off "])
def test_parse_bool_false_words(word):
    assert parse_bool(word) is False


def test_parse_bool_values():
    assert parse_bool(True) is True and parse_bool(False) is False
    assert parse_bool(1) is True and parse_bool(0) is False
    assert parse_bool(None, default=True) is True and parse_bool(None, default=False) is False


@pytest.mark.parametrize("garbage", ["none", "None", "maybe", "", "  ", "2", "tru", None, 2, 0.5, []])
def test_parse_bool_refuses_garbage_naming_it(garbage):
    with pytest.raises(ValueError, match="verify") as caught:
        parse_bool(garbage, "verify")
    assert repr(garbage) in str(caught.value)


def test_as_native_reads_rendered_dicts_and_lists_back():
    assert as_native("{'series_dir': '/x', 'n': 2}") == {"series_dir": "/x", "n": 2}
    assert as_native('[{"a": 1}]') == [{"a": 1}]
    assert as_native(" [1, 2] ") == [1, 2]
    for unchanged in ("/data/series", "", "{not a dict", 5, None, {"a": 1}):
        assert as_native(unchanged) == unchanged


def test_as_mapping():
    assert as_mapping(None, "prediction") == {} and as_mapping("", "prediction") == {}
    assert as_mapping('{"a": 1}', "prediction") == {"a": 1}
    assert as_mapping("{'a': 1}", "prediction") == {"a": 1}
    with pytest.raises(ValueError, match="prediction is text that is neither JSON"):
        as_mapping("label map", "prediction")
    with pytest.raises(ValueError, match="source must be a dict"):
        as_mapping("[1, 2]", "source")


def test_optional_int_and_as_list():
    assert optional_int(None) is None and optional_int("") is None and optional_int("None") is None
    assert optional_int("7") == 7 and optional_int(3) == 3
    with pytest.raises(ValueError, match="limit"):
        optional_int("ten", "limit")
    with pytest.raises(ValueError, match="limit"):
        optional_int(True, "limit")
    assert as_list(None) == [] and as_list("") == []
    assert as_list("1.2.3, 1.2.4\n1.2.5") == ["1.2.3", "1.2.4", "1.2.5"]
    assert as_list(("a", "b")) == ["a", "b"] and as_list(5) == [5]


def test_run_workspace_from_ids(tmp_path):
    ws = run_workspace(str(tmp_path), "kaapana_ingest", "manual__2026-11-26T10:00:00+00:00")
    assert ws == RunWorkspace(Path(tmp_path), "kaapana_ingest", "manual__2026-11-26T10:00:00+00:00")
    assert ws.root == tmp_path / "kaapana_ingest" / "manual__2026-11-26T10_00_00+00_00"
    with pytest.raises(ValueError, match="run id"):
        run_workspace(tmp_path, "kaapana_ingest", "")
