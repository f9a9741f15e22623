"""The directly assembled BINARY SEG (core.seg.frames) is highdicom's SEG, byte for byte, and the cases it
does not handle go to highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from airflow_provider_kaapana.core.seg import export as export_module
from airflow_provider_kaapana.core.seg import frames as frames_module
from airflow_provider_kaapana.core.seg.codes import AlgorithmInfo, segment_spec_for_name
from airflow_provider_kaapana.core.seg.export import export_seg
from airflow_provider_kaapana.core.seg.frames import applies, write_binary_segmentation
from airflow_provider_kaapana.core.seg.geometry import load_source_series
from airflow_provider_kaapana.core.seg.writer import build_segmentation, write_atomically
from airflow_provider_kaapana.testing.synthetic import Shape

SHAPES = [
    Shape(1, (0.0, 0.0, -6.0), radius=7.0),
    Shape(2, (6.0, 5.0, 4.0), half_size=(3.0, 4.0, 5.0)),
    Shape(3, (-8.0, 6.0, 8.0), radius=3.0),
]
NAMES = dict(
    algorithm=AlgorithmInfo(),
    model_id="Dataset001",
    configuration="3d_fullres",
    series_instance_uid="1.2.826.0.1.3680043.8.498.1",
    sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
    series_number=901,
)


def highdicom_bytes(fast_path: Path, source_images, segment_numbers, specs, out: Path, **names) -> bytes:
    """highdicom's own SEG of the same input, saved as the export saved it before, with the creation
    times and the random Dimension Organization UID of the fast file."""
    seg = build_segmentation(
        source_images,
        segment_numbers,
        specs,
        segmentation_type="BINARY",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        max_fractional_value=255,
        **names,
    )
    fast = pydicom.dcmread(fast_path, stop_before_pixels=True)
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        setattr(seg, keyword, fast[keyword].value)
    for ours, theirs in zip(seg.ContributingEquipmentSequence, fast.ContributingEquipmentSequence):
        if "ContributionDateTime" in ours:
            ours.ContributionDateTime = theirs.ContributionDateTime
    uid = fast.DimensionOrganizationSequence[0].DimensionOrganizationUID
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = uid
    write_atomically(seg, out)
    return out.read_bytes()


def write_both(tmp_path: Path, series_dir: Path, segment_numbers: np.ndarray, n_segments: int, **names):
    source = load_source_series(series_dir)
    specs = [segment_spec_for_name(n, f"label {n}") for n in range(1, n_segments + 1)]
    presence = np.stack([(segment_numbers == n).any(axis=(1, 2)) for n in range(1, n_segments + 1)], axis=1)
    fast_path = tmp_path / "fast.dcm"
    frames = write_binary_segmentation(
        fast_path,
        source.datasets,
        segment_numbers,
        presence,
        specs,
        **{**NAMES, **names, "series_description": None},
    )
    theirs = highdicom_bytes(
        fast_path,
        source.datasets,
        segment_numbers,
        specs,
        tmp_path / "highdicom.dcm",
        **{**NAMES, **names, "series_description": None},
    )
    return source, frames, fast_path.read_bytes(), theirs


def sorted_truth(series, source) -> np.ndarray:
    """The series' truth in the source's sorted slice order."""
    index = {uid: k for k, uid in enumerate(series.sop_instance_uids)}
    return np.ascontiguousarray(series.truth[[index[uid] for uid in source.sop_instance_uids]]).astype(
        np.uint8
    )


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        # 30 x 27 = 810 pixels per frame: 1-bit frames packed across byte boundaries
        ("three segments, odd frame size", dict(rows=30, columns=27)),
        ("oblique, reversed instance numbers", dict(orientation="oblique", reverse_instance_numbers=True)),
        ("coronal", dict(orientation="coronal", origin=(-16.0, -16.0, 16.0))),
        ("a slice missing: no regular spacing", dict(slice_offsets=[k * 2.0 for k in range(16) if k != 5])),
        ("Spacing Between Slices in the source", dict(extra={"SpacingBetweenSlices": "2.0"})),
    ],
)
def test_fast_seg_is_highdicom_seg_byte_for_byte(synthetic_series, tmp_path, monkeypatch, case, kwargs):
    monkeypatch.setattr(frames_module, "_PIXELS_PER_CHUNK", 1)  # chunks of 8 frames: several per object
    series = synthetic_series(shapes=SHAPES, **kwargs)
    source = load_source_series(series.series_dir)
    labels = sorted_truth(series, source)
    assert not labels[0].any()  # slices without any segment are left out
    _, frames, ours, theirs = write_both(tmp_path, series.series_dir, labels, 3)
    assert ours == theirs, case
    seg = hd.seg.segread(tmp_path / "fast.dcm")
    assert seg.NumberOfFrames == frames == sum(int((labels == n).any(axis=(1, 2)).sum()) for n in (1, 2, 3))
    decoded = seg.get_pixels_by_source_instance(
        source.sop_instance_uids, combine_segments=True, relabel=False
    )
    np.testing.assert_array_equal(decoded, labels)


def test_one_segment_and_an_empty_segment(synthetic_series, tmp_path):
    # one segment: its identification is shared, the organisation "3D"; an empty segment: no frames
    series = synthetic_series(shapes=SHAPES[:1])
    source = load_source_series(series.series_dir)
    labels = sorted_truth(series, source)
    (tmp_path / "a").mkdir()
    _, _, ours, theirs = write_both(tmp_path / "a", series.series_dir, labels, 1)
    assert ours == theirs
    assert pydicom.dcmread(tmp_path / "a" / "fast.dcm").DimensionOrganizationType == "3D"
    (tmp_path / "b").mkdir()
    _, frames, ours, theirs = write_both(tmp_path / "b", series.series_dir, labels, 2)
    assert ours == theirs
    ds = pydicom.dcmread(tmp_path / "b" / "fast.dcm")
    assert len(ds.SegmentSequence) == 2 and frames == int(labels.any(axis=(1, 2)).sum())
    assert {
        f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        for f in ds.PerFrameFunctionalGroupsSequence
    } == {1}


def test_export_seg_binary_takes_the_fast_path_and_others_fall_back(synthetic_series, tmp_path, monkeypatch):
    import nibabel as nib

    series = synthetic_series(shapes=SHAPES)
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(series.truth.transpose(2, 1, 0)), series.affine_ras),
        tmp_path / "l.nii.gz",
    )
    config = {"labels": {"background": 0, "liver": 1, "tumor": 2, "kidney_left": 3}}
    calls: list[str] = []
    real_build = export_module.build_segmentation
    real_fast = export_module.write_binary_segmentation

    def build(*args, **kwargs):
        calls.append(f"highdicom {kwargs['segmentation_type']} {len(args[0])}")
        return real_build(*args, **kwargs)

    def fast(*args, **kwargs):
        calls.append("fast")
        return real_fast(*args, **kwargs)

    monkeypatch.setattr(export_module, "build_segmentation", build)
    monkeypatch.setattr(export_module, "write_binary_segmentation", fast)
    binary = export_seg(tmp_path / "l.nii.gz", series.series_dir, config, tmp_path / "b.dcm")
    assert calls == ["fast"] and binary.number_of_frames == pydicom.dcmread(binary.seg_path).NumberOfFrames
    for segmentation_type in ("FRACTIONAL", "LABELMAP"):
        calls.clear()
        export_seg(
            tmp_path / "l.nii.gz",
            series.series_dir,
            config,
            tmp_path / "x.dcm",
            segmentation_type=segmentation_type,
        )
        assert calls == [f"highdicom {segmentation_type} {len(series.files)}"]
    calls.clear()
    implicit = export_seg(
        tmp_path / "l.nii.gz",
        series.series_dir,
        config,
        tmp_path / "i.dcm",
        transfer_syntax_uid=ImplicitVRLittleEndian,
    )
    assert calls == [f"highdicom BINARY {len(series.files)}"]
    assert pydicom.dcmread(implicit.seg_path).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert applies("BINARY", ExplicitVRLittleEndian, None)
    assert not applies("BINARY", ExplicitVRLittleEndian, [1, 2, 3])  # a multi-frame source


def test_what_highdicom_refuses_is_refused(synthetic_series, tmp_path):
    # an orientation differing in the 6th decimal passes the loader's tolerance; highdicom refuses it
    # (exact equality across source images), and so does the direct path, which sees all source images
    def tilt(k, ds):
        if k == 3:
            ds.ImageOrientationPatient = [1, 0.000001, 0, 0, 1, 0]

    series = synthetic_series(shapes=SHAPES, per_instance=tilt)
    source = load_source_series(series.series_dir)
    labels = sorted_truth(series, source)
    with pytest.raises(ValueError, match="shared orientation"):
        build_segmentation(
            source.datasets,
            labels,
            [segment_spec_for_name(n, f"label {n}") for n in (1, 2, 3)],
            segmentation_type="BINARY",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            max_fractional_value=255,
            series_description=None,
            **NAMES,
        )
    with pytest.raises(ValueError, match="shared orientation"):
        write_both(tmp_path, series.series_dir, labels, 3)
    assert not (tmp_path / "fast.dcm").exists()


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"]
)
def test_fast_seg_of_real_headers_is_highdicom_seg(tmp_path, name):
    # pydicom's bundled real-world instances (a GE CT, an MR in three encodings): the patient, study and
    # equipment attributes highdicom copies from them come out the same
    import shutil

    import pydicom.data

    series_dir = tmp_path / "series"
    series_dir.mkdir()
    shutil.copy(Path(pydicom.data.__file__).parent / "test_files" / name, series_dir / name)
    ds = pydicom.dcmread(series_dir / name, stop_before_pixels=True)
    labels = np.zeros((1, ds.Rows, ds.Columns), dtype=np.uint8)
    labels[0, 10:30, 5:25] = 1
    labels[0, 40:50, 40:63] = 2
    _, frames, ours, theirs = write_both(tmp_path, series_dir, labels, 2)
    assert frames == 2
    assert ours == theirs


@pytest.mark.parametrize("kind", ["nifti1", "nifti2", "scaled", "int16", "plain .nii"])
def test_label_map_reader_is_nibabel(tmp_path, kind):
    # .nii.gz label maps are inflated by isal into nibabel's reader: the same voxels and affine as nib.load
    import nibabel as nib

    from airflow_provider_kaapana.core.seg.labels import _read_nifti

    rng = np.random.default_rng(0)
    data = rng.integers(0, 6, size=(7, 5, 3)).astype(np.int16 if kind == "int16" else np.uint8)
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-3.0, 4.0, 5.5]
    klass = nib.Nifti2Image if kind == "nifti2" else nib.Nifti1Image
    img = klass(data, affine)
    if kind == "scaled":
        img.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / ("l.nii" if kind == "plain .nii" else "l.nii.gz")
    nib.save(img, path)
    voxels, got_affine = _read_nifti(path)
    expected = nib.load(path)
    np.testing.assert_array_equal(voxels, np.asanyarray(expected.dataobj))
    assert voxels.dtype == np.asanyarray(expected.dataobj).dtype
    np.testing.assert_array_equal(got_affine, expected.affine)


def test_label_presence_compares_or_counts():
    from airflow_provider_kaapana.core.seg.export import _label_presence

    rng = np.random.default_rng(1)
    volume = np.zeros((6, 9, 11), dtype=np.uint16)
    volume[1, :3, :4] = rng.integers(0, 4, size=(3, 4))  # few values: compared one by one
    volume[2, 2:, 5:] = rng.integers(0, 300, size=(7, 6))  # many: counted
    volume[4, 8, 10] = 9
    expected = np.zeros((6, 300), dtype=bool)
    for k in range(6):
        if volume[k].any():
            expected[k, np.unique(volume[k])] = True
    presence = _label_presence(volume)
    np.testing.assert_array_equal(presence, expected[:, : presence.shape[1]])
    assert presence.shape[1] == int(volume.max()) + 1
