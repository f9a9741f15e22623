"""Ingest never deletes what it did not store: retried validation, resent instances."""

from __future__ import annotations

import os

from airflow_provider_kaapana.core.ingest import same_file_content, validate_series


def test_retried_validation_still_reports_files_set_aside(synthetic_series, tmp_path):
    series = synthetic_series(slices=3, rows=8, columns=8)
    series_dir = series.series_dir
    (series_dir / "garbage.dcm").write_bytes(b"not dicom at all")
    item = {"series_dir": str(series_dir), "series_instance_uid": series.series_instance_uid}
    first = validate_series(item)
    second = validate_series(item)  # a retry or a cleared task: the garbage is no longer in the folder
    for result in (first, second):
        assert sorted(result["valid_files"]) == sorted(p.name for p in series.files)
        assert [q.split(":", 1)[0] for q in result["quarantined"]] == ["garbage.dcm"]
    assert not (series_dir / "garbage.dcm").exists()
    assert (series_dir.parent / ".invalid" / "garbage.dcm").read_bytes() == b"not dicom at all"


def test_same_file_content_tells_a_resent_instance_apart(tmp_path):
    landing = tmp_path / "landing.dcm"
    landing.write_bytes(b"first version")
    workspace = tmp_path / "workspace.dcm"
    os.link(landing, workspace)
    assert same_file_content(landing, workspace)  # the hard link receive made
    # the listener replaces the landing file atomically when the instance is sent again
    replacement = tmp_path / "tmp"
    replacement.write_bytes(b"second version")
    os.replace(replacement, landing)
    assert not same_file_content(landing, workspace)
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(b"second version")
    assert same_file_content(landing, copy)  # a copy (other filesystem) with equal bytes
    assert not same_file_content(landing, tmp_path / "missing.dcm")
