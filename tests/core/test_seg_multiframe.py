"""DICOM SEG export on an enhanced (legacy-converted) multi-frame source: frames referenced by number,
positions from the source's functional groups, dciodvfy-clean, exact round trip, and the CLI path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from airflow_provider_kaapana.core.nifti.convert import convert_series
from airflow_provider_kaapana.core.seg.export import export_seg, load_source_series
from airflow_provider_kaapana.exceptions import InvalidDicomError
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, dciodvfy_problems, save_label_map


def enhanced_source(series, out_dir: Path) -> pydicom.Dataset:
    """The synthetic series as one Legacy Converted Enhanced CT, frames stored in reverse slice order."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    legacy = [pydicom.dcmread(f) for f in reversed(series.files)]
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    out_dir.mkdir(parents=True)
    enhanced.save_as(out_dir / "IM000001")  # no extension, as on CD media
    return enhanced


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(DATASET_JSON))
    return path


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_seg_on_enhanced_multiframe_source_round_trips(
    synthetic_series, tmp_path, tool, config_path, orientation
):
    series = synthetic_series(orientation=orientation, shapes=THREE_SHAPES, origin=(-16.0, -16.0, -20.0))
    mf_dir = tmp_path / "mf"
    enhanced = enhanced_source(series, mf_dir)
    n = len(series.files)

    source = load_source_series(mf_dir)
    assert source.frame_numbers == list(range(n, 0, -1))  # sorted along the normal: the last frame first

    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    result = export_seg(label_map, mf_dir, config_path, tmp_path / "seg.dcm")
    assert not result.resampled
    errors, warnings = dciodvfy_problems(tool, result.seg_path)
    assert errors == [], "\n".join(errors)
    assert warnings == [], "\n".join(warnings)

    seg = hd.seg.segread(result.seg_path)
    # frame f of the source is slice n - f of the truth (frames were stored in reverse)
    decoded = seg.get_pixels_by_source_frame(
        enhanced.SOPInstanceUID,
        list(range(1, n + 1)),
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(decoded, series.truth[::-1])

    ds = pydicom.dcmread(result.seg_path)
    source_position = {
        i + 1: [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        for i, item in enumerate(enhanced.PerFrameFunctionalGroupsSequence)
    }
    for frame in ds.PerFrameFunctionalGroupsSequence:
        (src,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert src.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        number = int(src.ReferencedFrameNumber)
        np.testing.assert_allclose(
            [float(x) for x in frame.PlanePositionSequence[0].ImagePositionPatient], source_position[number]
        )


def test_sidecar_of_the_enhanced_conversion_agrees(synthetic_series, tmp_path, config_path):
    """NIfTI from the multi-frame file, mask on it, SEG back: the sidecar cross-check passes frame by frame."""
    series = synthetic_series(shapes=THREE_SHAPES, origin=(-16.0, -16.0, -20.0))
    mf_dir = tmp_path / "mf"
    enhanced = enhanced_source(series, mf_dir)
    (volume,) = convert_series(mf_dir, tmp_path / "nifti", name="ct")
    label_map = save_label_map(series, tmp_path / "ct.nii.gz")  # same grid as the conversion
    sidecar = tmp_path / "ct.json"
    sidecar.write_text(volume.sidecar_path.read_text())
    result = export_seg(label_map, mf_dir, config_path, tmp_path / "seg.dcm", sidecar_path=sidecar)
    seg = hd.seg.segread(result.seg_path)
    n = len(series.files)
    decoded = seg.get_pixels_by_source_frame(
        enhanced.SOPInstanceUID,
        list(range(1, n + 1)),
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(decoded, series.truth[::-1])


def test_kaapana_seg_cli_accepts_an_enhanced_source(synthetic_series, tmp_path, config_path):
    series = synthetic_series(shapes=THREE_SHAPES, origin=(-16.0, -16.0, -20.0))
    mf_dir = tmp_path / "mf"
    enhanced_source(series, mf_dir)
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    out = tmp_path / "seg.dcm"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_kaapana.cli",
            "seg",
            "--labels",
            str(label_map),
            "--source",
            str(mf_dir),
            "--config",
            str(config_path),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pydicom.dcmread(out).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"


def test_several_multiframe_instances_are_refused(synthetic_series, tmp_path):
    series = synthetic_series()
    mf_dir = tmp_path / "mf"
    enhanced_source(series, mf_dir)
    enhanced_source(series, tmp_path / "other")
    (tmp_path / "other" / "IM000001").rename(mf_dir / "IM000002")
    with pytest.raises(InvalidDicomError, match="one multi-frame source image only"):
        load_source_series(mf_dir)


def test_seg_on_a_real_philips_enhanced_mr(tmp_path, tool, config_path):
    """nibabel's Philips 3-D MPRAGE (Enhanced MR, 176 sagittal frames; pixel data blanked): a box drawn on
    our NIfTI of it comes back on exactly the source frames the sidecar names."""
    import gzip

    import nibabel as nib

    from airflow_provider_kaapana.core.nifti.convert import dicom_frames, read_sidecar

    src = tmp_path / "philips"
    src.mkdir()
    sample = Path(nib.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    (src / "IM_0001").write_bytes(gzip.decompress(sample.read_bytes()))
    (volume,) = convert_series(src, tmp_path / "nifti", name="t1")
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:140, 60:90, 80:100] = 1
    label_path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(labels, volume.affine), label_path)
    result = export_seg(label_path, src, config_path, tmp_path / "seg.dcm", sidecar_path=volume.sidecar_path)
    assert not result.resampled and result.number_of_frames == 20
    errors, _warnings = dciodvfy_problems(tool, result.seg_path)
    assert errors == [], "\n".join(errors)
    sidecar = read_sidecar(volume.sidecar_path)
    expected = {frame: pixels for _uid, frame, pixels in dicom_frames(labels, sidecar)}
    seg = hd.seg.segread(result.seg_path)
    frames = sorted(expected)
    decoded = seg.get_pixels_by_source_frame(
        sidecar["sop_instance_uids"][0], frames, combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True,
    )  # fmt: skip
    np.testing.assert_array_equal(decoded, np.stack([expected[f] for f in frames]))


def test_per_frame_plane_groups_that_differ_are_refused(synthetic_series, tmp_path):
    from airflow_provider_kaapana.core.seg.export import _with_shared_plane_groups

    series = synthetic_series()
    enhanced = enhanced_source(series, tmp_path / "mf")
    shared = enhanced.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence
    del shared.PixelMeasuresSequence
    for k, item in enumerate(enhanced.PerFrameFunctionalGroupsSequence):
        item.PixelMeasuresSequence = pydicom.Sequence([pydicom.Dataset()])
        item.PixelMeasuresSequence[0].PixelSpacing = measures[0].PixelSpacing
        item.PixelMeasuresSequence[0].SliceThickness = 1.0 + k  # not one grid
    with pytest.raises(InvalidDicomError, match="PixelMeasuresSequence differs between frames"):
        _with_shared_plane_groups(enhanced)
    for item in enhanced.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence[0].SliceThickness = 1.0  # the same in every frame, as Philips writes it
    shared_copy = _with_shared_plane_groups(enhanced)
    assert shared_copy.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness == 1.0
    assert "PixelMeasuresSequence" not in enhanced.SharedFunctionalGroupsSequence[0]  # the input is untouched
