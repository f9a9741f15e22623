"""The conversion rule, on every real sample series at hand: each volume written equals dcm2niix's conversion
of exactly its source files (voxels; affine within 1e-3 mm), or the series is refused with a reason.

The samples are third-party files shipped offline: pydicom's test files (single files, and the series of
its DICOMDIR test media) and nibabel's Siemens files. Where dcm2niix cannot read a file (its build has no
JPEG-LS), the reference is dcm2niix's conversion of the uncompressed twin that pydicom ships.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from airflow_provider_kaapana.core.nifti.convert import convert_series
from airflow_provider_kaapana.exceptions import GeometryError, KaapanaError

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
NICOM_DATA = Path(nib.__file__).parent / "nicom" / "tests" / "data"
NOT_DICOM = {".json", ".txt", ".dump", ".icc", ".gz"}
# dcm2niix (Debian build) has no JPEG-LS decoder: compare with its conversion of the uncompressed twin;
# where dcm2niix cannot parse a file at all, with its conversion of an uncompressed copy (same geometry)
TWINS = {"MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm"}
# files dcm2niix 1.0.20220720 rejects outright ("Illegal DICOM tag 0000,e000"): compared with nibabel's
# DICOM wrapper (an independent reading of the same geometry) instead
DCM2NIIX_CANNOT = {"nibabel:slicethickness_empty_string.dcm"}


def _cases() -> dict[str, list[Path]]:
    cases: dict[str, list[Path]] = {}
    for name in get_testdata_files():
        path = Path(name)
        if (
            "dicomdirtests" in path.parts
            or path.suffix in NOT_DICOM
            or path.name.startswith(("DICOMDIR", "README"))
        ):
            continue
        cases[path.name] = [path]
    base = PYDICOM_FILES / "dicomdirtests"
    for folder in sorted({p.parent for p in base.rglob("*") if p.is_file() and p.name != "DICOMDIR"}):
        if folder != base:
            cases["dicomdir:" + str(folder.relative_to(base))] = sorted(
                p for p in folder.iterdir() if p.is_file()
            )
    for path in sorted([*NICOM_DATA.glob("*.dcm"), *NICOM_DATA.glob("*.dcm.gz")]):
        cases["nibabel:" + path.name] = [path]
    return cases


CASES = _cases()


def dcm2niix_volumes(tool, files: list[Path], out_dir: Path) -> list[Path]:
    src = out_dir / "src"
    src.mkdir(parents=True)
    for i, path in enumerate(dict.fromkeys(files)):
        shutil.copy(path, src / f"{i:04d}_{path.name}")
    proc = subprocess.run(
        [tool("dcm2niix"), "-z", "n", "-f", "ref_%s", "-o", str(out_dir), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 2), proc.stdout + proc.stderr  # 2: no DICOM found
    return sorted(p for p in out_dir.glob("ref_*.nii") if "_ROI" not in p.name)  # ROI: overlay planes


def test_the_sample_covers_what_it_claims():
    assert len(CASES) > 90
    assert {
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "dicomdir:98892003/MR700",
        "nibabel:csa_slice_norm.dcm",
    } <= set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_conversion_equals_dcm2niix_or_is_refused(case, tool, tmp_path):
    files = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    for path in files:
        if path.suffix == ".gz":  # nibabel ships some samples gzipped
            (src / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copy(path, src / path.name)
    try:
        volumes = convert_series(src, tmp_path / "ours")
    except KaapanaError as exc:
        message = str(exc)
        # a refusal names the file or series and says why
        assert any(p.name in message for p in src.iterdir()) or "series" in message or str(src) in message
        assert len(message) > len(str(src)) + 20
        return
    assert volumes
    for k, volume in enumerate(volumes):
        sources = [Path(p) for p in dict.fromkeys(nib_json(volume.sidecar_path)["source_files"])]
        originals = sources  # the copies in src, byte for byte the samples
        twin = TWINS.get(originals[0].name)
        if twin:
            originals = [Path(get_testdata_file(twin))]
        refs = dcm2niix_volumes(tool, originals, tmp_path / f"ref{k}")
        if not refs:  # dcm2niix cannot parse the encapsulated data: give it an uncompressed copy
            refs = dcm2niix_volumes(
                tool, uncompressed(originals, tmp_path / f"plain{k}"), tmp_path / f"ref{k}b"
            )
        if case in DCM2NIIX_CANNOT:
            assert not refs
            assert_single_slice_matches_nibabel(volume.nifti_path, originals)
            continue
        assert len(refs) == 1, f"{case} volume {volume.nifti_path.name}: dcm2niix wrote {refs}"
        assert_equals_dcm2niix(case, nib.load(volume.nifti_path), nib.load(refs[0]), originals[0])


def assert_equals_dcm2niix(case: str, ours: nib.Nifti1Image, ref: nib.Nifti1Image, source: Path) -> None:
    """Same voxels, affine within 1e-3 mm. dcm2niix rotates a 3-D acquisition (MRAcquisitionType 3D) to
    the closest canonical orientation while ours keeps the DICOM slice axis third (the SEG contract): for
    those, the same image in world space is required (both reoriented to the closest canonical)."""
    ref_data = np.asarray(ref.dataobj)
    if ref_data.ndim == 4 and ref_data.shape[3] == 1:
        ref = nib.Nifti1Image(ref_data[..., 0], ref.affine)
    same_layout = ours.shape == ref.shape and np.allclose(ours.affine, ref.affine, atol=1e-3)
    if not same_layout:
        acquisition = pydicom.dcmread(source, stop_before_pixels=True).get("MRAcquisitionType")
        assert acquisition == "3D", f"{case}: layout differs from dcm2niix and this is no 3-D acquisition"
        ours, ref = nib.as_closest_canonical(ours), nib.as_closest_canonical(ref)
    assert ours.shape == ref.shape, f"{case}: shape {ours.shape} vs dcm2niix {ref.shape}"
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3, err_msg=case)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj), err_msg=case)


def uncompressed(files: list[Path], out_dir: Path) -> list[Path]:
    """Explicit VR little endian copies of ``files`` (pixel data decoded by pydicom's plugins)."""
    out_dir.mkdir()
    copies = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.decompress()
        ds.save_as(out_dir / path.name)
        copies.append(out_dir / path.name)
    return copies


def assert_single_slice_matches_nibabel(nifti_path: Path, files: list[Path]) -> None:
    """Voxels and in-plane affine of a one-slice volume against nibabel.nicom's wrapper of the file."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom.dicomwrappers import wrapper_from_data

    (path,) = files
    ds = pydicom.dcmread(path)
    wrapper = wrapper_from_data(ds)
    rows = int(ds.Rows)
    # nibabel's voxel axes are (row, column, slice); ours (column, rows flipped, slice), in RAS
    to_nibabel = np.array([[0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine @ to_nibabel
    ours = nib.load(nifti_path)
    # one slice: the third column places no voxel, the first two and the origin must agree
    np.testing.assert_allclose(ours.affine[:, [0, 1, 3]], expected[:, [0, 1, 3]], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj)[:, :, 0], ds.pixel_array[::-1].T)


def nib_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def test_single_slice_with_gantry_tilt_is_refused(tmp_path):
    """dcm2niix shears this CT slice by its GantryDetectorTilt (-22 degrees); one slice cannot confirm it."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("J2K_pixelrep_mismatch.dcm"), src)
    with pytest.raises(
        GeometryError, match=r"J2K_pixelrep_mismatch\.dcm with GantryDetectorTilt -22\.0 degrees"
    ):
        convert_series(src, tmp_path / "out")


def test_slices_in_different_frames_of_reference_are_refused(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892001" / "CT5N", src)
    first = sorted(src.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(first)
    with pytest.raises(GeometryError, match="slices in 2 frames of reference"):
        convert_series(src, tmp_path / "out")


def test_a_3d_acquisition_is_the_same_image_as_dcm2niix_in_another_axis_order(
    synthetic_series, tool, tmp_path
):
    """dcm2niix turns a sagittal 3-D MR (an MPRAGE, say) to RAS axis order; ours keeps the slices third."""
    series = synthetic_series(
        orientation="sagittal",
        modality="MR",
        slices=10,
        rows=16,
        columns=20,
        extra={"MRAcquisitionType": "3D"},
    )
    (volume,) = convert_series(series.series_dir, tmp_path / "ours")
    (ref_path,) = dcm2niix_volumes(tool, series.files, tmp_path / "ref")
    ours, ref = nib.load(volume.nifti_path), nib.load(ref_path)
    assert ours.shape == (20, 16, 10) and ref.shape == (10, 20, 16)
    assert np.asarray(ours.dataobj).std() > 0
    assert_equals_dcm2niix("3D sagittal", ours, ref, series.files[0])
