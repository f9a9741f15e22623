"""The statistics as a TID 1500 Measurement Report: dciodvfy-clean, references the SEG's segments, values
round-trip, refused for the wrong inputs, and a real Orthanc stores and returns it (C-STORE and STOW-RS)."""

from __future__ import annotations

import json

import highdicom as hd
import pydicom
import pytest

from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.net.send import send
from airflow_provider_kaapana.core.quant.sr import (
    MEASUREMENTS,
    measurement_report,
    read_measurement_report,
)
from airflow_provider_kaapana.core.quant.statistics import segment_statistics
from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.exceptions import QuantificationError
from tests.core.test_pacs import peer_of
from tests.core.test_quant import _config, _sphere_series, kaapana
from tests.core.test_seg import dciodvfy_problems, save_label_map

REPORTED = {c.key for c in MEASUREMENTS}


def _seg_and_stats(synthetic_series, tmp_path, **kw):
    series = _sphere_series(synthetic_series, noise_sd=20.0, **kw)
    label_map = save_label_map(series, tmp_path / "l.nii.gz")
    seg_path = tmp_path / "seg.dcm"
    export_seg(label_map, series.series_dir, _config(tmp_path), seg_path)
    return series, seg_path, segment_statistics(series.series_dir, seg_path)


def assert_values_round_trip(statistics: dict, sr_path) -> None:
    back = read_measurement_report(sr_path)
    assert sorted(back) == [s["segment_number"] for s in statistics["segments"]]
    for segment in statistics["segments"]:
        expected = {k: segment[k] for k in REPORTED if segment.get(k) is not None}
        assert back[segment["segment_number"]] == pytest.approx(expected, rel=1e-12), segment["label"]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_report_is_valid_references_the_segments_and_round_trips(synthetic_series, tmp_path, tool, modality):
    series, seg_path, stats = _seg_and_stats(synthetic_series, tmp_path, modality=modality)
    result = measurement_report(stats, seg_path, series.series_dir, tmp_path / "sr.dcm")

    errors, warnings = dciodvfy_problems(tool, result.sr_path)
    assert errors == [], "\n".join(errors)
    assert warnings == [], "\n".join(warnings)
    # liver and tumor: 13 items each; kidney_left is empty: volume, mesh volume and area (0) only
    assert (result.groups, result.measurements) == (3, 13 + 13 + 3)
    assert_values_round_trip(stats, result.sr_path)

    sr = hd.sr.srread(result.sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert (sr.StudyInstanceUID, sr.PatientID) == (seg.StudyInstanceUID, seg.PatientID)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    for group, item in zip(groups, seg.SegmentSequence, strict=True):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_sop_class_uid == seg.SOPClassUID
        assert ref.referenced_segment_numbers == [item.SegmentNumber]
        assert ref.source_series_for_segmentation.value == series.series_instance_uid
        assert group.finding_type.value == item.SegmentedPropertyTypeCodeSequence[0].CodeValue
    mean = next(m for m in groups[0].get_measurements() if m.derivation is not None)
    expected_name, expected_unit = {"CT": ("112031", "[hnsf'U]"), "MR": ("110852", "1")}[modality]
    assert (mean.name.value, mean.unit.value) == (expected_name, expected_unit)

    # a re-run gives the same UIDs (the PACS replaces the report instead of keeping two)
    again = measurement_report(stats, seg_path, series.series_dir, tmp_path / "sr2.dcm")
    assert (again.sr_series_instance_uid, again.sr_sop_instance_uid) == (
        result.sr_series_instance_uid,
        result.sr_sop_instance_uid,
    )


def test_report_is_refused_for_the_wrong_inputs(synthetic_series, tmp_path):
    series, seg_path, stats = _seg_and_stats(synthetic_series, tmp_path)
    out = tmp_path / "sr.dcm"
    label_map_stats = segment_statistics(
        series.series_dir, tmp_path / "l.nii.gz", label_config=_config(tmp_path)
    )
    with pytest.raises(QuantificationError, match="label map"):
        measurement_report(label_map_stats, seg_path, series.series_dir, out)
    other = json.loads(json.dumps(stats))
    other["source"]["segmentation_sop_instance_uid"] = "1.2.3.4"
    seg_uid = pydicom.dcmread(seg_path, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(QuantificationError, match=rf"{seg_uid} is not the segmentation .*1\.2\.3\.4"):
        measurement_report(other, seg_path, series.series_dir, out)
    elsewhere = _sphere_series(synthetic_series, name="elsewhere", patient_id="ELSEWHERE", seed=7)
    with pytest.raises(QuantificationError, match=series.series_instance_uid):
        measurement_report(stats, seg_path, elsewhere.series_dir, out)
    with pytest.raises(QuantificationError, match="not a DICOM SEG"):
        measurement_report(stats, series.files[0], series.series_dir, out)
    assert not out.exists()


@pytest.mark.parametrize("method", ["c-store", "stow-rs"])
def test_orthanc_stores_the_report_and_returns_it(orthanc, synthetic_series, tmp_path, method):
    series, seg_path, stats = _seg_and_stats(synthetic_series, tmp_path, patient_id=f"SR-{method}")
    result = measurement_report(stats, seg_path, series.series_dir, tmp_path / "sr" / "measurements.dcm")
    web = DicomWebClient(orthanc.dicomweb_url, auth=orthanc.auth, retries=1, backoff=0.01)
    if method == "c-store":
        report = send([result.sr_path], peer=peer_of(orthanc), verify=True)
    else:
        report = send([result.sr_path], dicomweb=web, verify=True)
    assert [r.ok for r in report.results] == [True] and report.verified_at
    sr = pydicom.dcmread(result.sr_path)
    back = web.retrieve_series(sr.StudyInstanceUID, result.sr_series_instance_uid, tmp_path / "back")
    [path] = back.files
    returned = pydicom.dcmread(path)
    assert returned.SOPInstanceUID == result.sr_sop_instance_uid
    assert returned.ContentSequence == sr.ContentSequence
    assert_values_round_trip(stats, path)


def test_cli_stats_writes_the_report(synthetic_series, tmp_path, tool):
    series, seg_path, stats = _seg_and_stats(synthetic_series, tmp_path)
    out, sr = tmp_path / "stats.json", tmp_path / "sr.dcm"
    args = (
        "stats",
        "--source",
        str(series.series_dir),
        "--seg",
        str(seg_path),
        "-o",
        str(out),
        "--sr",
        str(sr),
    )
    proc = kaapana(*args)
    assert proc.returncode == 0, proc.stderr
    assert "29 measurements" in proc.stdout
    assert_values_round_trip(json.loads(out.read_text()), sr)
    label_map = str(tmp_path / "l.nii.gz")
    proc = kaapana(*args[:4], label_map, "-o", str(out), "--sr", str(tmp_path / "x.dcm"))
    assert proc.returncode == 1 and "label map" in proc.stderr


def test_a_seg_of_another_series_is_refused_not_measured_as_empty(synthetic_series, tmp_path):
    from airflow_provider_kaapana.core.quant.evaluation import segmentation_evaluation
    from airflow_provider_kaapana.exceptions import GeometryError

    series, seg_path, _ = _seg_and_stats(synthetic_series, tmp_path)
    other = _sphere_series(synthetic_series, name="other", patient_id="OTHER", seed=9)
    with pytest.raises(
        GeometryError, match=f"references none of the instances of series {other.series_instance_uid}"
    ):
        segment_statistics(other.series_dir, seg_path)
    with pytest.raises(GeometryError, match="made on another series"):
        segmentation_evaluation(seg_path, seg_path, series_dir=other.series_dir)
