"""DICOM → NIfTI: geometry against dcm2niix and against the synthetic truth, checks, sidecar, dtypes."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from airflow_provider_kaapana.core.nifti.convert import VOXEL_AXES, convert_series, dicom_frames, read_sidecar
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError
from airflow_provider_kaapana.testing.synthetic import SyntheticSeries


def run_dcm2niix(tool, series_dir: Path, out_dir: Path, name: str = "ref") -> nib.Nifti1Image:
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [tool("dcm2niix"), "-z", "y", "-f", name, "-o", str(out_dir), str(series_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return nib.load(out_dir / f"{name}.nii.gz")


def assert_same_as_dcm2niix(ours: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    """Same affine (1e-3 mm) and the same voxels, both directly and after reorienting to canonical RAS."""
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(ours.get_fdata(), ref.get_fdata())
    ours_c, ref_c = nib.as_closest_canonical(ours), nib.as_closest_canonical(ref)
    np.testing.assert_allclose(ours_c.affine, ref_c.affine, atol=1e-3)
    np.testing.assert_array_equal(ours_c.get_fdata(), ref_c.get_fdata())


def expected_from_truth(series: SyntheticSeries, intercept: float = -1024.0) -> tuple[np.ndarray, np.ndarray]:
    """What the NIfTI must hold: (columns, rows flipped, slices along the normal) and its RAS affine."""
    rows = series.spec.rows
    data = (series.volume.astype(np.int32) + int(intercept)).transpose(2, 1, 0)[:, ::-1, :]
    flip_rows = np.array([[1, 0, 0, 0], [0, -1, 0, rows - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    return data, series.affine_ras @ flip_rows


def assert_matches_truth(img: nib.Nifti1Image, series: SyntheticSeries) -> None:
    data, affine = expected_from_truth(series)
    np.testing.assert_allclose(img.affine, affine, atol=1e-3)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    # the label mask, placed with our affine, lands where the truth says in world coordinates
    truth = series.truth.transpose(2, 1, 0)[:, ::-1, :]
    ijk = np.argwhere(truth == 1)[:5]
    world = nib.affines.apply_affine(img.affine, ijk)
    truth_world = nib.affines.apply_affine(
        series.affine_ras, np.c_[ijk[:, 0], series.spec.rows - 1 - ijk[:, 1], ijk[:, 2]]
    )
    np.testing.assert_allclose(world, truth_world, atol=1e-3)


def shuffle_files(series: SyntheticSeries, seed: int = 3) -> None:
    """Rename the files so that name order is unrelated to slice order."""
    rng = random.Random(seed)
    names = [f"IM{rng.randrange(10**6):06d}_{i}" for i in range(len(series.files))]
    rng.shuffle(names)
    for path, new in zip(list(series.files), names):
        path.rename(path.with_name(new))


GEOMETRIES = {
    "axial": {},
    "coronal": {"orientation": "coronal"},
    "sagittal": {"orientation": "sagittal"},
    "oblique": {"orientation": "oblique"},
    "reversed": {"reverse_instance_numbers": True, "orientation": "coronal"},
    "non_square": {"rows": 20, "columns": 28, "pixel_spacing": (0.6, 0.9), "orientation": "oblique"},
    "shuffled": {"per_instance": lambda k, ds: setattr(ds, "InstanceNumber", (k * 7) % 16 + 1)},
}


@pytest.mark.parametrize("case", sorted(GEOMETRIES))
def test_geometry_matches_dcm2niix_and_truth(case, synthetic_series, tool, tmp_path):
    series = synthetic_series(**GEOMETRIES[case])
    if case == "shuffled":
        shuffle_files(series)
    volumes = convert_series(series.series_dir, tmp_path / "ours", name="x")
    assert len(volumes) == 1
    ours = nib.load(volumes[0].nifti_path)
    assert ours.get_data_dtype() == np.int16
    assert_same_as_dcm2niix(ours, run_dcm2niix(tool, series.series_dir, tmp_path / "ref"))
    assert_matches_truth(ours, series)
    assert volumes[0].sop_instance_uids == series.sop_instance_uids


def test_sidecar_maps_every_slice_to_its_instance(synthetic_series, tmp_path):
    series = synthetic_series(orientation="sagittal", reverse_instance_numbers=True, rows=12, columns=10)
    shuffle_files(series)
    (volume,) = convert_series(series.series_dir, tmp_path / "out")
    assert volume.nifti_path.name == f"{series.series_instance_uid}.nii.gz"
    assert volume.sidecar_path == tmp_path / "out" / f"{series.series_instance_uid}.json"
    sidecar = json.loads(volume.sidecar_path.read_text())
    assert read_sidecar(volume.nifti_path) == sidecar
    assert sidecar["sop_instance_uids"] == series.sop_instance_uids
    assert sidecar["series_instance_uid"] == series.series_instance_uid
    assert sidecar["study_instance_uid"] == series.study_instance_uid
    assert sidecar["frame_of_reference_uid"] == series.frame_of_reference_uid
    assert sidecar["shape"] == [10, 12, 16] == list(nib.load(volume.nifti_path).shape)
    assert sidecar["voxel_axes"] == VOXEL_AXES
    assert sidecar["voxel_axes"]["axis0"] == "columns" and sidecar["voxel_axes"]["flip_axis1"] is True
    np.testing.assert_allclose(sidecar["affine"], nib.load(volume.nifti_path).affine, atol=1e-6)
    assert sidecar["pixel_spacing"] == [1.0, 1.0] and sidecar["slice_spacing"] == pytest.approx(2.0)
    assert sidecar["image_orientation_patient"] == pytest.approx([0, 1, 0, 0, 0, -1])
    # each NIfTI slice k, with its rows flipped back, is exactly the frame of source_files[k]
    data = np.asanyarray(nib.load(volume.nifti_path).dataobj)
    for k, (uid, path) in enumerate(zip(sidecar["sop_instance_uids"], sidecar["source_files"])):
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == uid
        frame = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(data[:, ::-1, k].T, frame)
        np.testing.assert_allclose(
            sidecar["image_positions_patient"][k], [float(x) for x in ds.ImagePositionPatient]
        )


def test_uneven_spacing_is_refused(synthetic_series, tmp_path):
    series = synthetic_series(slice_offsets=[0, 2, 4, 6, 8.6, 10.6, 12.6, 14.6])
    with pytest.raises(GeometryError, match="uneven slice spacing") as err:
        convert_series(series.series_dir, tmp_path / "out")
    assert series.series_instance_uid in str(err.value)
    assert "0003.dcm" in str(err.value) and "0004.dcm" in str(err.value)
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_missing_slice_is_refused(synthetic_series, tmp_path):
    series = synthetic_series(slices=8)
    series.files[5].unlink()
    with pytest.raises(GeometryError, match="1 missing slice") as err:
        convert_series(series.series_dir, tmp_path / "out")
    assert "gap of 4.0000 mm between 0004.dcm and 0006.dcm" in str(err.value)


def test_small_position_jitter_is_accepted(synthetic_series, tmp_path):
    # IPP rounded by a scanner: within the relative tolerance (1 % of 2 mm)
    series = synthetic_series(slice_offsets=[0, 2.004, 4, 5.996, 8, 10.01, 12])
    (volume,) = convert_series(series.series_dir, tmp_path / "out")
    assert volume.shape == (32, 32, 7)


def _tilt(degrees: float):
    def per_instance(k, ds):
        # CT gantry tilt: each slice shifted along y (posterior) by spacing * tan(tilt)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [
            f"{x:.6f}",
            f"{y + k * 2.0 * math.tan(math.radians(degrees)):.6f}",
            f"{z:.6f}",
        ]
        ds.GantryDetectorTilt = f"{degrees:g}"

    return per_instance


def test_gantry_tilt_is_refused(synthetic_series, tmp_path):
    series = synthetic_series(per_instance=_tilt(12.0))
    with pytest.raises(GeometryError, match=r"gantry tilt or shear of 12\.00 degrees") as err:
        convert_series(series.series_dir, tmp_path / "out")
    assert series.series_instance_uid in str(err.value)


def _merge(target: Path, *series: SyntheticSeries) -> Path:
    target.mkdir()
    for i, s in enumerate(series):
        for f in s.files:
            shutil.copy(f, target / f"s{i}_{f.name}")
    return target


def test_two_echoes_are_split_into_named_volumes(synthetic_series, tmp_path):
    uid = generate_uid()
    echo1 = synthetic_series(
        modality="MR", series_instance_uid=uid, seed=1, extra={"EchoNumbers": "1", "EchoTime": "10"}
    )
    echo2 = synthetic_series(
        modality="MR", series_instance_uid=uid, seed=2, extra={"EchoNumbers": "2", "EchoTime": "40"}
    )
    merged = _merge(tmp_path / "merged", echo2, echo1)
    volumes = convert_series(merged, tmp_path / "out", name="mr")
    assert [v.nifti_path.name for v in volumes] == ["mr_e1.nii.gz", "mr_e2.nii.gz"]
    assert [v.split for v in volumes] == [{"echo": 1.0}, {"echo": 2.0}]
    assert [v.split_suffix for v in volumes] == ["e1", "e2"]
    for volume, truth in zip(volumes, (echo1, echo2)):
        img = nib.load(volume.nifti_path)
        data, affine = expected_from_truth(truth, intercept=0.0)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
        np.testing.assert_allclose(img.affine, affine, atol=1e-3)
        assert read_sidecar(volume.sidecar_path)["sop_instance_uids"] == truth.sop_instance_uids


def test_two_orientations_are_split(synthetic_series, tmp_path):
    uid = generate_uid()
    axial = synthetic_series(series_instance_uid=uid, seed=1, slices=4)
    coronal = synthetic_series(series_instance_uid=uid, seed=2, slices=5, orientation="coronal")
    volumes = convert_series(_merge(tmp_path / "merged", axial, coronal), tmp_path / "out", name="loc")
    assert sorted(v.shape[2] for v in volumes) == [4, 5]
    assert sorted(v.nifti_path.name for v in volumes) == ["loc_o1.nii.gz", "loc_o2.nii.gz"]


def test_duplicate_positions_split_by_acquisition_or_refused(synthetic_series, tmp_path):
    uid = generate_uid()
    first = synthetic_series(series_instance_uid=uid, seed=1, slices=4)
    second = synthetic_series(series_instance_uid=uid, seed=2, slices=4, extra={"AcquisitionNumber": 2})
    volumes = convert_series(_merge(tmp_path / "acq", first, second), tmp_path / "out", name="ct")
    assert [v.nifti_path.name for v in volumes] == ["ct_a1.nii.gz", "ct_a2.nii.gz"]
    same_acq = synthetic_series(series_instance_uid=uid, seed=3, slices=4)
    with pytest.raises(GeometryError, match="duplicate slice position"):
        convert_series(_merge(tmp_path / "dup", first, same_acq), tmp_path / "out2")


def test_missing_position_names_the_file(synthetic_series, tmp_path):
    series = synthetic_series(per_instance=lambda k, ds: k == 3 and delattr(ds, "ImagePositionPatient"))
    with pytest.raises(InvalidDicomError, match=r"0003\.dcm: missing or malformed ImagePositionPatient"):
        convert_series(series.series_dir, tmp_path / "out")


def _seg_like(path: Path, series: SyntheticSeries) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.Modality = "SEG"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_non_image_files_are_skipped_with_reason(ct_series, tmp_path):
    _seg_like(ct_series.series_dir / "seg.dcm", ct_series)
    (ct_series.series_dir / "notes.txt").write_text("not dicom")
    (volume,) = convert_series(ct_series.series_dir, tmp_path / "out")
    assert volume.shape[2] == 16
    skipped = {Path(s["file"]).name: s["reason"] for s in read_sidecar(volume.sidecar_path)["skipped_files"]}
    assert "DICOM SEG" in skipped["seg.dcm"] and "Segmentation Storage" in skipped["seg.dcm"]
    assert "not a readable DICOM file" in skipped["notes.txt"]


def test_directory_without_images_is_an_error(ct_series, tmp_path):
    only_seg = tmp_path / "seg"
    only_seg.mkdir()
    _seg_like(only_seg / "seg.dcm", ct_series)
    with pytest.raises(InvalidDicomError, match="no image slices to convert.*DICOM SEG"):
        convert_series(only_seg, tmp_path / "out")


def test_rle_compressed_series_equals_uncompressed(synthetic_series, tmp_path):
    series = synthetic_series(orientation="oblique", rows=16, columns=24)
    plain = nib.load(convert_series(series.series_dir, tmp_path / "plain")[0].nifti_path)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert pydicom.dcmread(series.files[0]).file_meta.TransferSyntaxUID == RLELossless
    rle = nib.load(convert_series(series.series_dir, tmp_path / "rle")[0].nifti_path)
    np.testing.assert_array_equal(np.asanyarray(rle.dataobj), np.asanyarray(plain.dataobj))
    np.testing.assert_array_equal(rle.affine, plain.affine)


def test_enhanced_multiframe_ct_converts_frame_by_frame(synthetic_series, tmp_path, tool):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    series = synthetic_series(orientation="coronal", rows=12, columns=14, slices=6)
    legacy = [pydicom.dcmread(f) for f in reversed(series.files)]
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    mf_dir = tmp_path / "mf"
    mf_dir.mkdir()
    enhanced.save_as(mf_dir / "enhanced.dcm")
    (volume,) = convert_series(mf_dir, tmp_path / "out", name="mf")
    img = nib.load(volume.nifti_path)
    assert_matches_truth(img, series)
    sidecar = read_sidecar(volume.sidecar_path)
    assert sidecar["sop_instance_uids"] == [enhanced.SOPInstanceUID] * 6
    assert sorted(sidecar["frame_numbers"]) == [1, 2, 3, 4, 5, 6]
    # frames were stored in reverse slice order: the volume still runs along the normal
    assert sidecar["frame_numbers"] == [6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_pydicom_bundled_files_match_dcm2niix(name, tmp_path, tool):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file(name), src)
    (volume,) = convert_series(src, tmp_path / "out", name="ours")
    ours = nib.load(volume.nifti_path)
    assert ours.get_data_dtype() == np.int16
    assert_same_as_dcm2niix(ours, run_dcm2niix(tool, src, tmp_path / "ref"))


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_pydicom_transfer_syntax_variants_equal_mr_small(name, tmp_path):
    def convert(file_name: str, sub: str) -> nib.Nifti1Image:
        src = tmp_path / sub
        src.mkdir()
        shutil.copy(get_testdata_file(file_name), src)
        return nib.load(convert_series(src, tmp_path / f"{sub}_out")[0].nifti_path)

    reference, variant = convert("MR_small.dcm", "ref"), convert(name, "variant")
    np.testing.assert_array_equal(np.asanyarray(variant.dataobj), np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(variant.affine, reference.affine, atol=1e-6)


def test_rescale_slope_gives_float32(synthetic_series, tmp_path):
    series = synthetic_series(
        modality="MR", extra={"RescaleSlope": "2.5", "RescaleIntercept": "-3"}, slices=4
    )
    (volume,) = convert_series(series.series_dir, tmp_path / "out")
    img = nib.load(volume.nifti_path)
    assert img.get_data_dtype() == np.float32
    expected = (series.volume.astype(np.float32) * 2.5 - 3).transpose(2, 1, 0)[:, ::-1, :]
    np.testing.assert_allclose(np.asanyarray(img.dataobj), expected, rtol=1e-6)
    assert read_sidecar(volume.sidecar_path)["rescale"] == {"slope": 2.5, "intercept": -3.0}


def test_uncompressed_nii_and_idempotent_rerun(ct_series, tmp_path):
    (first,) = convert_series(ct_series.series_dir, tmp_path / "out", compress=False, name="ct")
    assert first.nifti_path.name == "ct.nii"
    before = first.nifti_path.read_bytes()
    assert_matches_truth(nib.load(first.nifti_path), ct_series)
    (again,) = convert_series(ct_series.series_dir, tmp_path / "out", compress=False, name="ct")
    assert again.nifti_path.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.json", "ct.nii"]


def test_gzip_output_is_deterministic_and_standard(ct_series, tmp_path):
    import gzip

    (a,) = convert_series(ct_series.series_dir, tmp_path / "a", name="ct")
    (b,) = convert_series(ct_series.series_dir, tmp_path / "b", name="ct")
    assert a.nifti_path.read_bytes() == b.nifti_path.read_bytes()
    (raw,) = convert_series(ct_series.series_dir, tmp_path / "raw", name="ct", compress=False)
    assert gzip.decompress(a.nifti_path.read_bytes()) == raw.nifti_path.read_bytes()


def _slice_fields(slices) -> list[dict]:
    keep = ("pixel_offset",)
    out = []
    for s in slices:
        fields = {k: v for k, v in s._asdict().items() if k not in keep}
        fields["orientation"] = list(fields["orientation"])
        fields["position"] = list(fields["position"])
        out.append(fields)
    return out


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"]
)
def test_fast_header_parser_agrees_with_pydicom(name, monkeypatch, tmp_path):
    from airflow_provider_kaapana.core.nifti import scan as nifti

    path = Path(get_testdata_file(name))
    fast = nifti.read_slices(path)
    assert nifti._fast_header(path) is not None
    monkeypatch.setattr(nifti, "_fast_header", lambda p: None)
    assert _slice_fields(fast) == _slice_fields(nifti.read_slices(path))


def test_implicit_vr_series_with_sequences_converts_like_explicit(synthetic_series, tmp_path):
    from pydicom.sequence import Sequence

    def add_sequence(k, ds):
        # an undefined-length sequence before PixelData must be skipped by the fast parser
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = generate_uid()
        ds.ReferencedImageSequence = Sequence([item])

    series = synthetic_series(orientation="oblique", per_instance=add_sequence)
    explicit = nib.load(convert_series(series.series_dir, tmp_path / "explicit")[0].nifti_path)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(series.files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    implicit = nib.load(convert_series(series.series_dir, tmp_path / "implicit")[0].nifti_path)
    np.testing.assert_array_equal(np.asanyarray(implicit.dataobj), np.asanyarray(explicit.dataobj))
    np.testing.assert_array_equal(implicit.affine, explicit.affine)
    assert_matches_truth(implicit, series)


@pytest.mark.parametrize("orientation", ["oblique", "sagittal", "coronal"])
def test_qform_agrees_with_sform_and_dcm2niix(orientation, synthetic_series, tmp_path, tool):
    series = synthetic_series(orientation=orientation, pixel_spacing=(0.8, 1.1), slices=5)
    ours = nib.load(convert_series(series.series_dir, tmp_path / "ours")[0].nifti_path)
    ref = run_dcm2niix(tool, series.series_dir, tmp_path / "ref")
    assert int(ours.header["qform_code"]) == 1 and int(ours.header["sform_code"]) == 1
    np.testing.assert_allclose(ours.header.get_qform(), ours.header.get_sform(), atol=1e-4)
    np.testing.assert_allclose(ours.header.get_qform(), ref.header.get_qform(), atol=1e-3)
    np.testing.assert_allclose(ours.header.get_zooms(), (1.1, 0.8, 2.0), atol=1e-5)
    assert ours.header.get_xyzt_units() == ("mm", "sec")


def test_temporal_positions_are_split(synthetic_series, tmp_path):
    uid = generate_uid()
    phases = [
        synthetic_series(
            series_instance_uid=uid, seed=10 + t, slices=4, extra={"TemporalPositionIdentifier": t}
        )
        for t in (2, 1)
    ]
    volumes = convert_series(_merge(tmp_path / "dyn", *phases), tmp_path / "out", name="dyn")
    assert [v.nifti_path.name for v in volumes] == ["dyn_t1.nii.gz", "dyn_t2.nii.gz"]
    assert [v.split for v in volumes] == [{"temporal_position": 1}, {"temporal_position": 2}]
    assert volumes[0].sop_instance_uids == phases[1].sop_instance_uids


def test_colour_image_is_skipped_with_reason(ct_series, tmp_path):
    ds = pydicom.dcmread(ct_series.files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(ds.Rows * ds.Columns * 3)
    ds.save_as(ct_series.series_dir / "rgb.dcm", enforce_file_format=True)
    (volume,) = convert_series(ct_series.series_dir, tmp_path / "out")
    (skipped,) = read_sidecar(volume.sidecar_path)["skipped_files"]
    assert skipped["file"].endswith("rgb.dcm") and "colour image (3 samples per pixel" in skipped["reason"]


def test_undecodable_pixel_data_names_file_and_transfer_syntax(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.PixelData = ds.PixelData[:40]  # truncated RLE stream
    ds.save_as(src / "broken.dcm")
    with pytest.raises(
        InvalidDicomError, match=r"broken\.dcm: cannot decode pixel data \(transfer syntax RLE Lossless\)"
    ):
        convert_series(src, tmp_path / "out")


def test_pydicom_bundled_multi_file_series(tmp_path):
    """pydicom's DICOMDIR test series: a real incomplete CT stack is refused, a multi-plane MR is split."""
    base = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    with pytest.raises(
        GeometryError, match=r"161 missing slice\(s\): gap of 202\.5000 mm between 17106 and 17136"
    ):
        convert_series(base / "77654033" / "CT2", tmp_path / "ct")
    volumes = convert_series(base / "98892003" / "MR700", tmp_path / "mr", name="mr")
    assert [v.nifti_path.name for v in volumes] == [f"mr_o{i}.nii.gz" for i in range(1, 8)]
    assert all(v.shape == (16, 16, 1) for v in volumes)
    assert sorted(uid for v in volumes for uid in v.sop_instance_uids) == sorted(
        pydicom.dcmread(p).SOPInstanceUID for p in (base / "98892003" / "MR700").iterdir()
    )


def test_dicom_frames_puts_a_mask_back_on_the_source_frames(synthetic_series, tmp_path):
    series = synthetic_series(orientation="oblique", reverse_instance_numbers=True, rows=14, columns=18)
    shuffle_files(series)
    (volume,) = convert_series(series.series_dir, tmp_path / "out")
    img = nib.load(volume.nifti_path)
    sidecar = read_sidecar(volume.sidecar_path)
    # a "mask" in the NIfTI layout: the truth transformed exactly as the image was
    mask = series.truth.transpose(2, 1, 0)[:, ::-1, :]
    frames = list(dicom_frames(mask, sidecar, affine=img.affine))
    assert [uid for uid, _, _ in frames] == series.sop_instance_uids
    for (_uid, frame_number, frame), truth in zip(frames, series.truth):
        assert frame_number is None and frame.shape == (14, 18)
        np.testing.assert_array_equal(frame, truth)
    with pytest.raises(GeometryError, match="not the same voxel grid"):
        next(dicom_frames(mask, sidecar, affine=np.eye(4)))
    with pytest.raises(GeometryError, match="does not match"):
        next(dicom_frames(mask[:, :, :-1], sidecar))


def test_simpleitk_reads_ours_like_dcm2niix(synthetic_series, tmp_path, tool):
    """nnU-Net reads NIfTI through SimpleITK: geometry and voxels must agree with dcm2niix's file there too."""
    import SimpleITK as sitk

    series = synthetic_series(orientation="oblique", rows=20, columns=24, pixel_spacing=(0.7, 0.9))
    (volume,) = convert_series(series.series_dir, tmp_path / "ours")
    run_dcm2niix(tool, series.series_dir, tmp_path / "ref")
    ours, ref = sitk.ReadImage(str(volume.nifti_path)), sitk.ReadImage(str(tmp_path / "ref" / "ref.nii.gz"))
    np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
    # and ITK's LPS origin is the DICOM position of the first slice's last row
    first = series.affine_lps @ [0, series.spec.rows - 1, 0, 1]
    np.testing.assert_allclose(ours.GetOrigin(), first[:3], atol=1e-3)


def test_values_beyond_int16_take_the_general_path(synthetic_series, tmp_path):
    # the streaming path writes int16 as it reads; a slice that int16 cannot hold sends the whole volume
    # the general way (uint16 here), and no partial file of the first attempt is left behind
    series = synthetic_series(modality="CT", extra={"RescaleIntercept": "32767"}, slices=4)
    expected = (series.volume.astype(np.int64) + 32767).transpose(2, 1, 0)[:, ::-1, :]
    assert expected.max() > np.iinfo(np.int16).max and expected.min() >= 0
    (volume,) = convert_series(series.series_dir, tmp_path / "out", compress=False, name="v")
    img = nib.load(volume.nifti_path)
    assert img.get_data_dtype() == np.uint16 and volume.dtype == "uint16"
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)
    assert read_sidecar(volume.sidecar_path)["dtype"] == "uint16"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.json", "v.nii"]
