"""Landing zone -> workspace -> validation -> clearing the landing zone, without Airflow."""

from __future__ import annotations

from airflow_provider_kaapana.core.ingest import (
    arrival_facts,
    ingest_summary,
    landing_series,
    receive_from_landing,
    remove_from_landing,
    validate_batch,
)
from airflow_provider_kaapana.core.listener.server import SeriesBatch


def landing_batch(series, files, number: int = 1) -> SeriesBatch:
    batch = SeriesBatch(
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        series_dir=str(series.series_dir),
        batch=number,
        files=[f.name for f in files],
        calling_ae="MODALITY",
        called_ae="KAAPANA",
        created=1.5,
        manifest=str(series.series_dir.parent / f"{series.series_instance_uid}.b{number:04d}.json"),
    )
    batch.save()
    return batch


def test_a_batch_travels_through_and_only_stored_files_leave_the_landing_zone(synthetic_series, tmp_path):
    series = synthetic_series(slices=4, rows=8, columns=8)
    (series.series_dir / "garbage.dcm").write_bytes(b"not dicom")
    batch = landing_batch(series, [*series.files, series.series_dir / "garbage.dcm"])
    conf = batch.conf()
    dest = tmp_path / "ws" / "dicom"
    received = receive_from_landing(conf, dest)
    assert sorted(p.name for p in received) == sorted([*(f.name for f in series.files), "garbage.dcm"])
    assert receive_from_landing(conf, dest) == received  # a re-run links nothing twice

    item = {"series_dir": str(dest), "series_instance_uid": series.series_instance_uid}
    (validated,) = validate_batch(item, conf)
    assert validated["instances"] == 4 and [q.split(":")[0] for q in validated["quarantined"]] == [
        "garbage.dcm"
    ]
    assert validated["calling_ae_title"] == "MODALITY" and validated["called_ae_title"] == "KAAPANA"
    assert validated["received_at"].startswith("1970-01-01T00:00:01.500")

    # an instance sent again meanwhile (same name, new content) stays, as does the invalid file
    resent = series.files[0]
    replacement = resent.with_suffix(".new")
    replacement.write_bytes(resent.read_bytes() + b"\0")
    replacement.replace(resent)
    assert remove_from_landing(conf, [validated], keep=True) == []
    removed = remove_from_landing(conf, [validated])
    assert sorted(removed) == sorted(str(f) for f in series.files[1:])
    assert resent.exists() and (series.series_dir / "garbage.dcm").exists()


def test_a_run_by_hand_gets_its_uids_from_its_files_and_deletes_nothing(synthetic_series):
    series = synthetic_series(slices=3, rows=8, columns=8)
    stray = synthetic_series(slices=1, rows=8, columns=8, seed=9)
    (series.series_dir / "000-stray.dcm").write_bytes(stray.files[0].read_bytes())
    (series.series_dir / "000-broken.dcm").write_bytes(b"not dicom")
    conf = {"series_dir": str(series.series_dir)}
    main, other = landing_series(conf)
    # the folder's main series leads (a stray file sorting first does not), the stray is its own series
    assert (main.series_instance_uid, main.study_instance_uid) == (
        series.series_instance_uid,
        series.study_instance_uid,
    )
    assert other.series_instance_uid == stray.series_instance_uid
    # the unreadable file goes with the first series, whose validation sets it aside with the reason
    assert sorted(p.name for p in main.files) == sorted(["000-broken.dcm", *(f.name for f in series.files)])
    assert arrival_facts(conf) == {}
    validated = [{"series_dir": str(series.series_dir), "valid_files": [f.name for f in series.files]}]
    assert remove_from_landing(conf, validated) == []
    assert all(f.exists() for f in series.files)


def test_ingest_summary_says_how_many_were_stored_and_quarantined_where_and_why(synthetic_series, tmp_path):
    series = synthetic_series(slices=3, rows=8, columns=8)
    (series.series_dir / "garbage.dcm").write_bytes(b"not dicom")
    batch = landing_batch(series, [*series.files, series.series_dir / "garbage.dcm"])
    dest = tmp_path / "ws" / "dicom"
    receive_from_landing(batch.conf(), dest)
    validated = validate_batch({"series_dir": str(dest)}, batch.conf())
    summary = ingest_summary(validated, batch.conf())
    assert summary["stored"] == 3 and len(summary["quarantined"]) == 1
    (entry,) = summary["quarantined"]
    assert entry["file"] == "garbage.dcm" and entry["reason"]
    assert entry["set_aside_in"] == str(tmp_path / "ws" / ".invalid" / "garbage.dcm")
    assert entry["kept_in_landing_zone"] == str(series.series_dir / "garbage.dcm")
    assert summary["message"].startswith("3 stored, 1 quarantined (garbage.dcm: ")
    assert str(series.series_dir / "garbage.dcm") in summary["message"]
    clean = ingest_summary([{**validated[0], "quarantined": []}], batch.conf())
    assert clean["message"] == "3 stored, 0 quarantined" and clean["quarantined"] == []


def test_legacy_uids_with_leading_zeros_are_ingested(synthetic_series, tmp_path):
    series = synthetic_series(
        slices=2,
        rows=8,
        columns=8,
        series_instance_uid="1.2.840.0113654.2.70.1.01",
        study_instance_uid="1.2.03",
    )
    (validated,) = validate_batch({"series_dir": str(series.series_dir)}, {})
    assert validated["instances"] == 2 and validated["quarantined"] == []
    assert validated["series_instance_uid"] == "1.2.840.0113654.2.70.1.01"
