"""Siemens MOSAIC: real Siemens headers (nibabel's test files) unpacked like dcm2niix, or refused with a reason.

nibabel ships real Siemens mosaics whose pixel data was blanked (or cropped) to keep them small; the tests
put a seeded random pattern into the mosaic frame, so that any tile taken from the wrong place, in the
wrong order or flipped shows, and compare voxels and affine with dcm2niix on the very same files.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from airflow_provider_kaapana.core.nifti.convert import convert_series, dicom_frames, read_sidecar
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

NICOM_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"


def real_mosaic(name: str) -> pydicom.Dataset:
    path = NICOM_DATA / name
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return pydicom.dcmread(fh)
    return pydicom.dcmread(path)


def with_random_pixels(ds: pydicom.Dataset, seed: int) -> pydicom.Dataset:
    """The mosaic with a random 12-bit pattern in its whole frame."""
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(ds.Rows, ds.Columns), dtype=np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def dcm2niix(tool, series_dir: Path, out_dir: Path) -> nib.Nifti1Image:
    out_dir.mkdir(parents=True)
    proc = subprocess.run(
        [tool("dcm2niix"), "-z", "n", "-f", "ref", "-o", str(out_dir), str(series_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return nib.load(out_dir / "ref.nii")


def test_dwi_mosaic_series_matches_dcm2niix(tool, tmp_path):
    """Two mosaics of one DWI series (b=0, b=1000): one volume each, equal to dcm2niix's 4-D volumes."""
    src = tmp_path / "dwi"
    src.mkdir()
    for seed, name in enumerate(["siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"]):
        with_random_pixels(real_mosaic(name), seed).save_as(src / f"IM{seed}")  # CD-style names
    volumes = convert_series(src, tmp_path / "ours", name="dwi")
    ref = dcm2niix(tool, src, tmp_path / "ref")
    assert ref.shape == (128, 128, 48, 2)
    assert [v.nifti_path.name for v in volumes] == ["dwi_v1.nii.gz", "dwi_v2.nii.gz"]
    ref_data = np.asarray(ref.dataobj)
    for t, volume in enumerate(volumes):
        ours = nib.load(volume.nifti_path)
        assert ours.shape == (128, 128, 48)
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), ref_data[..., t])
        assert np.asarray(ours.dataobj).std() > 100  # the pattern is there, not a blank volume
    b0, b1000 = (read_sidecar(v.sidecar_path) for v in volumes)
    assert b0["mosaic"]["grid"] == 7 and b0["mosaic"]["tiles"] == list(range(48))
    assert b0["diffusion"]["b_value"] == 0 and b0["diffusion"]["bvec"] == [0.0, 0.0, 0.0]
    assert b1000["diffusion"]["b_value"] == 1000
    bvec = np.asarray(b1000["diffusion"]["bvec"])
    np.testing.assert_allclose(np.linalg.norm(bvec), 1, atol=1e-6)
    assert abs(bvec[0]) > 0.99  # the gradient of this acquisition is along x
    assert b1000["split"]["mosaic_volume"] == {"index": 2, "acquisition_number": 2, "instance_number": 2}
    assert b1000["sop_instance_uids"] == [b1000["sop_instance_uids"][0]] * 48
    # FSL gradient files for the series, one column per volume in _v order
    assert (tmp_path / "ours" / "dwi.bval").read_text().split() == ["0", "1000"]
    bvecs = np.loadtxt(tmp_path / "ours" / "dwi.bvec")
    assert bvecs.shape == (3, 2)
    np.testing.assert_allclose(bvecs[:, 1], bvec, atol=1e-6)
    # stacked, our volumes are dcm2niix's 4-D image
    stacked = nib.concat_images([nib.load(v.nifti_path) for v in volumes])
    np.testing.assert_array_equal(np.asarray(stacked.dataobj), ref_data)


def test_oblique_mosaic_matches_dcm2niix(tool, tmp_path):
    """An oblique mosaic (slice normal tilted 26 degrees) of 32 slices in a 6x6 grid."""
    src = tmp_path / "oblique"
    src.mkdir()
    with_random_pixels(real_mosaic("csa_slice_norm.dcm"), 7).save_as(src / "mosaic.dcm")
    (volume,) = convert_series(src, tmp_path / "ours")
    ours, ref = nib.load(volume.nifti_path), dcm2niix(tool, src, tmp_path / "ref")
    assert ours.shape == ref.shape[:3] == (64, 64, 32)
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj).reshape(ours.shape))


def test_mosaic_is_never_converted_as_one_flat_slice(tmp_path):
    """The failure this module exists for: a mosaic read as a 896x896x1 image."""
    src = tmp_path / "dwi"
    src.mkdir()
    with_random_pixels(real_mosaic("siemens_dwi_0.dcm.gz"), 1).save_as(src / "a.dcm")
    (volume,) = convert_series(src, tmp_path / "ours")
    assert volume.shape == (128, 128, 48)


def _refused(tmp_path: Path, ds: pydicom.Dataset, match: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ds.save_as(src / "mosaic.dcm")
    with pytest.raises(InvalidDicomError, match=match):
        convert_series(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mosaic_that_does_not_divide_into_its_grid_is_refused(tmp_path):
    # nibabel's cropped 256x256 copy of the 48-slice mosaic: dcm2niix writes a 36x36x48 volume from it
    _refused(tmp_path, real_mosaic("0.dcm"), r"256x256 pixels does not divide into the 7x7 tile grid")


def test_mosaic_without_csa_header_is_refused(tmp_path):
    ds = with_random_pixels(real_mosaic("siemens_dwi_0.dcm.gz"), 2)
    del ds[0x00291010]
    _refused(tmp_path, ds, r"mosaic\.dcm: Siemens MOSAIC without the CSA image header")


def test_mosaic_whose_csa_normal_disagrees_with_orientation_is_refused(tmp_path):
    ds = with_random_pixels(real_mosaic("siemens_dwi_0.dcm.gz"), 3)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: the CSA normal says axial
    _refused(tmp_path, ds, r"SliceNormalVector .* is not parallel to the normal")


def test_mosaic_without_slice_spacing_is_refused(tmp_path):
    ds = with_random_pixels(real_mosaic("siemens_dwi_0.dcm.gz"), 4)
    del ds.SpacingBetweenSlices
    del ds.SliceThickness
    _refused(tmp_path, ds, r"without SpacingBetweenSlices or SliceThickness")


def test_mosaic_slices_cannot_be_put_back_on_dicom_frames(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(NICOM_DATA / "csa_slice_norm.dcm", src)
    ds = with_random_pixels(pydicom.dcmread(src / "csa_slice_norm.dcm"), 5)
    ds.save_as(src / "csa_slice_norm.dcm")
    (volume,) = convert_series(src, tmp_path / "out")
    sidecar = read_sidecar(volume.sidecar_path)
    with pytest.raises(GeometryError, match="Siemens MOSAIC"):
        list(dicom_frames(np.zeros(volume.shape, np.uint8), sidecar))


def test_private_mosaic_count_counts_only_under_the_siemens_creator(tmp_path):
    """(0019,100A) is NumberOfImagesInMosaic only in the SIEMENS MR HEADER block; GE uses it otherwise."""
    from pydicom.data import get_testdata_file

    src = tmp_path / "ge"
    src.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x0A, "US", 16)
    ds.save_as(src / "ct.dcm")
    (volume,) = convert_series(src, tmp_path / "out")
    assert volume.shape == (128, 128, 1)

    siemens = with_random_pixels(real_mosaic("siemens_dwi_0.dcm.gz"), 6)
    siemens.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]  # no MOSAIC: the private count says it
    assert siemens[0x00190010].value == "SIEMENS MR HEADER"
    siemens_dir = tmp_path / "siemens"
    siemens_dir.mkdir()
    siemens.save_as(siemens_dir / "a")
    (mosaic,) = convert_series(siemens_dir, tmp_path / "out2")
    assert mosaic.shape == (128, 128, 48)
