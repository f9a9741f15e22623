"""DICOM SEG export: geometry-based mapping, dciodvfy validity, round trips, policies and UIDs."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from airflow_provider_kaapana.core.seg.export import (
    AlgorithmInfo,
    LabelConfigError,
    export_seg,
    fallback_codes,
    load_label_config,
    lookup_structure,
    parse_label_config,
)
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError, NoFindingsError
from airflow_provider_kaapana.testing.synthetic import Shape

THREE_SHAPES = [
    Shape(1, (0.0, 0.0, -6.0), radius=7.0),
    Shape(2, (6.0, 5.0, 4.0), half_size=(3.0, 4.0, 5.0)),
    Shape(3, (-8.0, 6.0, 8.0), radius=3.0),
]
DATASET_JSON = {"labels": {"background": 0, "liver": 1, "tumor": 2, "kidney_left": 3}}


def dciodvfy_problems(tool, path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy on ``path``."""
    result = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def save_label_map(series, path: Path, *, variant: str = "dicom") -> Path:
    """The series' truth as NIfTI. ``dicom``: voxel axes (column, row, slice) with the series' RAS affine;
    ``canonical``: nibabel's closest-canonical (RAS) reorientation; ``flipped``: first and third axis
    reversed with the affine adjusted; ``transposed``: (row, column, slice) axes."""
    labels = np.ascontiguousarray(series.truth.transpose(2, 1, 0))
    affine = series.affine_ras
    img = nib.Nifti1Image(labels, affine)
    if variant == "canonical":
        img = nib.as_closest_canonical(img)
    elif variant == "flipped":
        ni, _, nk = labels.shape
        flip = np.array([[-1, 0, 0, ni - 1], [0, 1, 0, 0], [0, 0, -1, nk - 1], [0, 0, 0, 1]], dtype=float)
        img = nib.Nifti1Image(np.ascontiguousarray(labels[::-1, :, ::-1]), affine @ flip)
    elif variant == "transposed":
        swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
        img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(1, 0, 2)), affine @ swap)
    elif variant != "dicom":
        raise ValueError(variant)
    nib.save(img, path)
    return path


def decode(seg_path: Path, sop_instance_uids: list[str]) -> np.ndarray:
    """The SEG decoded by highdicom as segment numbers on the source grid (slices, rows, columns)."""
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(sop_instance_uids, combine_segments=True, relabel=False)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(DATASET_JSON))
    return path


@pytest.mark.parametrize(
    ("orientation", "variant"),
    [
        ("axial", "dicom"),
        ("axial", "canonical"),
        ("oblique", "dicom"),
        ("oblique", "flipped"),
        ("coronal", "transposed"),
        ("sagittal", "canonical"),
    ],
)
def test_round_trip_and_dciodvfy(synthetic_series, tmp_path, tool, config_path, orientation, variant):
    origin = {"coronal": (-16.0, -16.0, 16.0), "sagittal": (16.0, -16.0, 16.0)}.get(
        orientation, (-16.0, -16.0, -20.0)
    )
    modality = "MR" if orientation == "sagittal" else "CT"
    series = synthetic_series(orientation=orientation, shapes=THREE_SHAPES, origin=origin, modality=modality)
    assert set(np.unique(series.truth)) == {0, 1, 2, 3}
    label_map = save_label_map(series, tmp_path / "labels.nii.gz", variant=variant)
    result = export_seg(label_map, series.series_dir, config_path, tmp_path / "seg.dcm")

    assert not result.resampled
    assert [s.label for s in result.segments] == ["liver", "tumor", "kidney_left"]
    assert result.number_of_frames == sum(s.frames for s in result.segments)
    decoded = decode(result.seg_path, series.sop_instance_uids)
    np.testing.assert_array_equal(decoded, series.truth)  # segment numbers equal label values here

    errors, warnings = dciodvfy_problems(tool, result.seg_path)
    assert errors == [], "\n".join(errors)
    assert warnings == [], "\n".join(warnings)

    ds = pydicom.dcmread(result.seg_path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.PatientID == series.spec.patient_id and str(ds.PatientName) == series.spec.patient_name
    derived = {
        src.ReferencedSOPInstanceUID
        for frame in ds.PerFrameFunctionalGroupsSequence
        for deriv in frame.DerivationImageSequence
        for src in deriv.SourceImageSequence
    }
    assert derived and derived <= set(series.sop_instance_uids)
    liver = ds.SegmentSequence[0]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Liver.value
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.AnatomicalStructure.value
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    assert liver.SegmentAlgorithmName == "nnU-Net"
    kidney = ds.SegmentSequence[2]
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == codes.SCT.Left.value
    assert len(liver.RecommendedDisplayCIELabValue) == 3


def test_reversed_instance_numbers_and_shuffled_files(synthetic_series, tmp_path, config_path):
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES, reverse_instance_numbers=True)
    # file names no longer follow the slice order
    names = [p.name for p in series.files]
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    for path, name in zip(series.files, shuffled):
        path.rename(path.with_name(f"x_{name}"))
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    result = export_seg(label_map, series.series_dir, config_path, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(decode(result.seg_path, series.sop_instance_uids), series.truth)


def test_different_grid_is_resampled_by_nearest_neighbour(synthetic_series, tmp_path, config_path):
    """A label map on a 2x finer grid (as a model may write it) still lands on the source pixels."""
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    labels = series.truth.transpose(2, 1, 0)
    fine = labels.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    # voxel (2i, 2j, 2k) of the fine grid is the centre... put fine voxel centres half a coarse voxel apart
    scale = np.diag([0.5, 0.5, 0.5, 1.0])
    shift = np.eye(4)
    shift[:3, 3] = -0.25  # fine voxel (0,0,0) sits a quarter coarse voxel before coarse voxel (0,0,0)
    affine = series.affine_ras @ shift @ scale
    nib.save(nib.Nifti1Image(fine, affine), tmp_path / "fine.nii.gz")
    result = export_seg(tmp_path / "fine.nii.gz", series.series_dir, config_path, tmp_path / "seg.dcm")
    assert result.resampled
    decoded = decode(result.seg_path, series.sop_instance_uids)
    # source pixel centres fall exactly between two fine voxels of the same coarse voxel: rounding picks one
    np.testing.assert_array_equal(decoded, series.truth)


def test_label_map_on_another_orientation_is_resampled(synthetic_series, tmp_path, config_path):
    """An oblique source, a label map on an axial 0.5 mm RAS grid drawn from the same shapes: nearest-
    neighbour resampling reproduces the truth up to boundary pixels."""
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    spacing, size = 0.5, 96
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (size - 1) / 2  # centred on the origin, RAS
    ijk = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    ras = ijk * spacing + affine[:3, 3]
    lps = ras * np.array([-1.0, -1.0, 1.0])
    labels = np.zeros(len(lps), dtype=np.uint8)
    for shape in THREE_SHAPES:
        labels[shape.contains(lps)] = shape.label
    nib.save(nib.Nifti1Image(labels.reshape(size, size, size), affine), tmp_path / "axial.nii.gz")
    result = export_seg(tmp_path / "axial.nii.gz", series.series_dir, config_path, tmp_path / "seg.dcm")
    assert result.resampled
    decoded = decode(result.seg_path, series.sop_instance_uids)
    for label in (1, 2, 3):
        a, b = decoded == label, series.truth == label
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice > 0.9, (label, dice)


def test_source_with_missing_slice(synthetic_series, tmp_path, config_path):
    """A gap in the source (slice 5 never arrived): every present slice still gets its own labels."""
    full = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    offsets = [k * 2.0 for k in range(16) if k != 5]
    gappy = synthetic_series(orientation="oblique", shapes=THREE_SHAPES, slice_offsets=offsets)
    label_map = save_label_map(full, tmp_path / "labels.nii.gz")  # the regular grid of the full series
    result = export_seg(label_map, gappy.series_dir, config_path, tmp_path / "seg.dcm")
    assert not result.resampled  # every present slice lies on the label map's grid: exact re-indexing
    np.testing.assert_array_equal(decode(result.seg_path, gappy.sop_instance_uids), gappy.truth)


def test_sidecar_cross_check(synthetic_series, tmp_path, config_path):
    series = synthetic_series(shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "case.nii.gz")
    sidecar = {
        "sop_instance_uids": series.sop_instance_uids,
        "series_instance_uid": series.series_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "affine": series.affine_ras.tolist(),
        "shape": list(series.truth.transpose(2, 1, 0).shape),
    }
    (tmp_path / "case.json").write_text(json.dumps(sidecar))
    export_seg(label_map, series.series_dir, config_path, tmp_path / "seg.dcm")  # consistent: passes
    sidecar["sop_instance_uids"] = series.sop_instance_uids[::-1]
    (tmp_path / "case.json").write_text(json.dumps(sidecar))
    with pytest.raises(GeometryError, match="sidecar lists it"):
        export_seg(label_map, series.series_dir, config_path, tmp_path / "seg2.dcm")
    sidecar["sop_instance_uids"] = series.sop_instance_uids
    sidecar["shape"] = [32, 32, 15]
    (tmp_path / "case.json").write_text(json.dumps(sidecar))
    with pytest.raises(GeometryError, match="sidecar shape"):
        export_seg(label_map, series.series_dir, config_path, tmp_path / "seg3.dcm")
    sidecar["series_instance_uid"] = "1.2.3"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(sidecar))
    with pytest.raises(GeometryError, match="sidecar is for series 1.2.3"):
        export_seg(label_map, series.series_dir, config_path, tmp_path / "seg4.dcm", sidecar_path=other)


def test_empty_label_policies(synthetic_series, tmp_path, tool):
    series = synthetic_series(shapes=THREE_SHAPES[:2])  # no label 3
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    described = export_seg(label_map, series.series_dir, DATASET_JSON, tmp_path / "d.dcm")
    assert [(s.segment_number, s.label, s.frames > 0) for s in described.segments] == [
        (1, "liver", True),
        (2, "tumor", True),
        (3, "kidney_left", False),
    ]
    ds = pydicom.dcmread(described.seg_path)
    assert len(ds.SegmentSequence) == 3
    frame_segments = {
        f.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        for f in ds.PerFrameFunctionalGroupsSequence
    }
    assert frame_segments == {1, 2}
    errors, warnings = dciodvfy_problems(tool, described.seg_path)  # a segment without frames is valid
    assert errors == [] and warnings == [], errors + warnings

    config = {"labels": {"background": 0, "liver": 1, "spleen": 2, "tumor": 3}}
    truth = series.truth.copy()
    truth[truth == 2] = 3  # labels 1 and 3 present, 2 empty
    nib.save(nib.Nifti1Image(truth.transpose(2, 1, 0), series.affine_ras), tmp_path / "gap.nii.gz")
    omitted = export_seg(
        tmp_path / "gap.nii.gz", series.series_dir, config, tmp_path / "o.dcm", empty_label_policy="omit"
    )
    assert omitted.omitted_labels == ["spleen"]
    assert [(s.segment_number, s.label_value, s.label) for s in omitted.segments] == [
        (1, 1, "liver"),
        (2, 3, "tumor"),
    ]
    decoded = decode(omitted.seg_path, series.sop_instance_uids)
    expected = np.where(truth == 3, 2, truth)  # label value 3 became segment 2
    np.testing.assert_array_equal(decoded, expected)


def test_all_empty_is_no_findings(synthetic_series, tmp_path, config_path):
    series = synthetic_series(shapes=[])
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    out = tmp_path / "seg.dcm"
    with pytest.raises(NoFindingsError, match=series.series_instance_uid):
        export_seg(label_map, series.series_dir, config_path, out)
    assert not out.exists()


def test_uids_deterministic_per_source_model_configuration(synthetic_series, tmp_path, config_path):
    series = synthetic_series(shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    first = export_seg(label_map, series.series_dir, config_path, tmp_path / "a.dcm", model_id="Dataset001")
    again = export_seg(label_map, series.series_dir, config_path, tmp_path / "b.dcm", model_id="Dataset001")
    other = export_seg(
        label_map,
        series.series_dir,
        config_path,
        tmp_path / "c.dcm",
        model_id="Dataset001",
        configuration="2d",
    )
    assert (first.seg_series_instance_uid, first.seg_sop_instance_uid) == (
        again.seg_series_instance_uid,
        again.seg_sop_instance_uid,
    )
    assert first.seg_series_instance_uid != other.seg_series_instance_uid
    assert first.seg_sop_instance_uid != other.seg_sop_instance_uid
    assert first.seg_series_instance_uid != first.seg_sop_instance_uid
    assert pydicom.dcmread(first.seg_path).SOPInstanceUID == first.seg_sop_instance_uid


@pytest.mark.parametrize("segmentation_type", ["FRACTIONAL", "LABELMAP"])
def test_other_segmentation_types(synthetic_series, tmp_path, tool, config_path, segmentation_type):
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    result = export_seg(
        label_map, series.series_dir, config_path, tmp_path / "seg.dcm", segmentation_type=segmentation_type
    )
    ds = pydicom.dcmread(result.seg_path)
    assert ds.SegmentationType == segmentation_type
    np.testing.assert_array_equal(decode(result.seg_path, series.sop_instance_uids), series.truth)
    errors, _warnings = dciodvfy_problems(tool, result.seg_path)
    if segmentation_type == "LABELMAP":
        # Label Map Segmentation Storage (Sup 243, 2024) is newer than Debian's dicom3tools (2022): it does
        # not know the IOD and objects to the background segment 0 that the new IOD requires.
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
        assert [s.SegmentNumber for s in ds.SegmentSequence] == [0, 1, 2, 3]
        errors = [
            e
            for e in errors
            if e != "Error - Information Object Not found"
            and not e.startswith("Error - SegmentNumber not monotonically increasing from one")
        ]
    assert errors == [], "\n".join(errors)


def test_rich_config_codes_colour_algorithm(synthetic_series, tmp_path):
    series = synthetic_series(shapes=THREE_SHAPES[:2])
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    rich = {
        "algorithm": {"name": "MyNet", "version": "1.2", "family": "ArtificialIntelligence"},
        "segments": [
            {
                "label_value": 1,
                "name": "Liver (model)",
                "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
                "type": {"value": "10200004", "scheme": "SCT", "meaning": "Liver"},
                "anatomic_region": {"value": "818981001", "scheme": "SCT", "meaning": "Abdomen"},
                "color": [255, 0, 0],
            },
            {"label_value": 2, "name": "blob", "color": [0, 0, 255]},
        ],
    }
    (tmp_path / "rich.json").write_text(json.dumps(rich))
    result = export_seg(label_map, series.series_dir, tmp_path / "rich.json", tmp_path / "seg.dcm")
    assert [s.coded_from for s in result.segments] == ["config", "fallback"]
    ds = pydicom.dcmread(result.seg_path)
    first, second = ds.SegmentSequence
    assert first.SegmentLabel == "Liver (model)"
    assert first.SegmentAlgorithmName == "MyNet"
    assert first.AnatomicRegionSequence[0].CodeValue == "818981001"
    red = hd.color.CIELabColor.from_rgb(255, 0, 0).value
    assert list(first.RecommendedDisplayCIELabValue) == list(red)
    category, property_type = fallback_codes()
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == property_type.value == "85756007"
    assert second.SegmentedPropertyCategoryCodeSequence[0].CodeValue == category.value
    # explicit algorithm argument wins over the config's
    other = export_seg(
        label_map,
        series.series_dir,
        tmp_path / "rich.json",
        tmp_path / "seg2.dcm",
        algorithm=AlgorithmInfo("Other", "3", "DeformableModels"),
    )
    assert pydicom.dcmread(other.seg_path).SegmentSequence[0].SegmentAlgorithmName == "Other"


def test_label_config_formats(tmp_path):
    v2 = parse_label_config({"labels": {"background": 0, "Kidney Right": 1, "whatever": 2}})
    assert [s.name for s in v2.segments.values()] == ["Kidney Right", "whatever"]
    assert v2.segments[1].coded_from == "table" and v2.segments[1].type_modifier == codes.SCT.Right
    assert v2.segments[2].coded_from == "fallback"
    v1 = parse_label_config({"labels": {"0": "background", "1": "spleen", "2": "pancreas"}})
    assert {v: s.property_type for v, s in v1.segments.items()} == {
        1: codes.SCT.Spleen,
        2: codes.SCT.Pancreas,
    }
    bare = parse_label_config({"background": 0, "liver": 1})  # the predict step's labels.json
    assert bare.segments[1].property_type == codes.SCT.Liver
    with pytest.raises(LabelConfigError, match="region-based"):
        parse_label_config({"labels": {"background": 0, "tumor": [1, 2]}})
    with pytest.raises(LabelConfigError, match="neither"):
        parse_label_config({"name": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelConfigError, match="bad.json"):
        load_label_config(bad)
    with pytest.raises(LabelConfigError, match="both"):
        parse_label_config(
            {"segments": [{"label_value": 1, "name": "x", "type": {"value": "1", "meaning": "m"}}]}
        )
    with pytest.raises(LabelConfigError, match="CID 7162"):
        AlgorithmInfo(family="Magic").family_code()


def test_snomed_table_holds_only_real_codes():
    """Every code in the curated table is in pydicom's DICOM code dictionary with the same meaning."""
    from pydicom.sr import _concepts_dict

    from airflow_provider_kaapana.core.seg.codes import _structure_table

    meanings: dict[str, set[str]] = {}
    for entries in _concepts_dict.concepts["SCT"].values():
        for value, (meaning, _cids) in entries.items():
            meanings.setdefault(value, set()).add(meaning)
    table = _structure_table()
    assert len(table["structures"]) >= 60
    checked = 0
    for entry in [table["fallback"], *table["structures"].values()]:
        for key in ("category", "type", "modifier"):
            if key in entry:
                code = entry[key]
                assert code["scheme"] == "SCT"
                assert code["meaning"] in meanings.get(code["value"], set()), code
                checked += 1
    assert checked > 120
    for name in ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "lung", "heart", "aorta"):
        assert lookup_structure(name) is not None, name
    assert lookup_structure("Urinary-Bladder")[1] == codes.SCT.Bladder
    assert lookup_structure("flux capacitor") is None


def test_unknown_label_value_in_map_uses_fallback(synthetic_series, tmp_path):
    series = synthetic_series(shapes=THREE_SHAPES[:2])
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    result = export_seg(
        label_map, series.series_dir, {"labels": {"background": 0, "liver": 1}}, tmp_path / "s.dcm"
    )
    assert [(s.label, s.coded_from) for s in result.segments] == [("liver", "table"), ("label 2", "fallback")]


def test_seg_in_source_dir_is_ignored(synthetic_series, tmp_path, config_path):
    """A SEG stored back into the series folder (a re-run in place) is not mistaken for a source image."""
    series = synthetic_series(shapes=THREE_SHAPES)
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    first = export_seg(label_map, series.series_dir, config_path, series.series_dir / "seg.dcm")
    again = export_seg(label_map, series.series_dir, config_path, series.series_dir / "seg.dcm")
    assert again.seg_sop_instance_uid == first.seg_sop_instance_uid
    np.testing.assert_array_equal(decode(again.seg_path, series.sop_instance_uids), series.truth)


def test_source_problems_are_named(synthetic_series, tmp_path, config_path):
    series = synthetic_series(shapes=THREE_SHAPES[:1])
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    other = synthetic_series(series_instance_uid="1.2.3.4.5", seed=3)
    (series.series_dir / "intruder.dcm").write_bytes(other.files[0].read_bytes())
    with pytest.raises(InvalidDicomError, match="SeriesInstanceUID"):
        export_seg(label_map, series.series_dir, config_path, tmp_path / "s.dcm")


@pytest.mark.parametrize("segmentation_type", ["BINARY", "FRACTIONAL"])
def test_pre_encoded_frame_groups_are_the_bytes_pydicom_writes(synthetic_series, tmp_path, segmentation_type):
    # write_atomically encodes the Per-frame Functional Groups itself (shared items once): the file must
    # be byte for byte what pydicom's own save_as writes for the same dataset
    from airflow_provider_kaapana.core.seg.codes import AlgorithmInfo, segment_spec_for_name
    from airflow_provider_kaapana.core.seg.writer import (
        _with_encoded_frame_groups,
        build_segmentation,
        write_atomically,
    )

    series = synthetic_series(shapes=THREE_SHAPES)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    seg = build_segmentation(
        sources,
        series.truth,
        [segment_spec_for_name(v, f"label {v}") for v in (1, 2, 3)],
        segmentation_type=segmentation_type,
        algorithm=AlgorithmInfo(),
        model_id="test",
        configuration="default",
        series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(),
        series_number=901,
        series_description=None,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        max_fractional_value=255,
    )
    assert len(seg.PerFrameFunctionalGroupsSequence) >= 10
    assert _with_encoded_frame_groups(seg) is not seg  # the pre-encoding path is the one taken
    write_atomically(seg, tmp_path / "fast.dcm")
    seg.save_as(tmp_path / "pydicom.dcm", enforce_file_format=True)
    assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "pydicom.dcm").read_bytes()
    assert "PerFrameFunctionalGroupsSequence" in seg and not seg.get_item(0x52009230).is_raw
