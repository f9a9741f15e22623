"""A real DICOM SEG and its source series, de-identified in separate runs, still fit together."""

from __future__ import annotations

import json
import subprocess

import highdicom as hd
import numpy as np
import pydicom

from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile, Option
from airflow_provider_kaapana.core.seg.export import export_seg
from tests.core.test_seg import DATASET_JSON, save_label_map

KEY = b"seg-test-site-key-0123456789abcdefgh"


def dciodvfy_errors(dciodvfy: str, path) -> set[str]:
    proc = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}


def test_seg_still_references_its_deidentified_series(synthetic_series, tmp_path, tool):
    series = synthetic_series("ct", slices=8)
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    seg_dir = tmp_path / "seg"
    seg_dir.mkdir()
    export_seg(label_map, series.series_dir, config, seg_dir / "seg.dcm")
    profile = DeidentificationProfile(frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))

    images = deidentify_folder(series.series_dir, tmp_path / "images", profile, KEY)
    segs = deidentify_folder(seg_dir, tmp_path / "segs", profile, KEY)
    assert len(images.written) == 8 and len(segs.written) == 1, (images.failed, segs.quarantined)

    by_position = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in images.written),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    new_uids = [str(ds.SOPInstanceUID) for ds in by_position]
    assert not set(new_uids) & set(series.sop_instance_uids)
    seg = hd.seg.segread(segs.written[0])
    assert seg.StudyInstanceUID == by_position[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == by_position[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == by_position[0].SeriesInstanceUID
    # highdicom finds every frame's source among the de-identified images, by their new UIDs
    decoded = seg.get_pixels_by_source_instance(new_uids, combine_segments=True, relabel=False)
    assert np.array_equal(decoded > 0, series.truth > 0)
    assert seg.PatientID == by_position[0].PatientID

    dciodvfy = tool("dciodvfy")
    new = dciodvfy_errors(dciodvfy, segs.written[0]) - dciodvfy_errors(dciodvfy, seg_dir / "seg.dcm")
    assert not new, sorted(new)
