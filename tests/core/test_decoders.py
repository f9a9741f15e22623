"""Pixel-data decoders: one file of each compressed transfer syntax, decoded through the conversion path
(:func:`decode_pixels`, pydicom with the pylibjpeg plugins of the core dependencies) and compared with a
reference decode: the uncompressed twin pydicom ships, dcmtk's decoders (dcmdjpeg, dcmdjpls, dcmdrle) or
dcm2niix (OpenJPEG) for JPEG 2000.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from airflow_provider_kaapana.core.nifti.convert import convert_series
from airflow_provider_kaapana.core.nifti.pixels import decode_pixels


def dcmtk_decoded(tool, name: str, path: Path, out: Path) -> np.ndarray:
    subprocess.run([tool(name), str(path), str(out)], check=True, capture_output=True, timeout=60)
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    return ds.pixel_array


def syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def test_jpeg_lossless_sv1_equals_the_uncompressed_original_and_dcmdjpeg(tool, tmp_path):
    """1.2.840.10008.1.2.4.70, encoded by dcmtk from pydicom's CT_small (pydicom ships no greyscale SV1)."""
    original = Path(get_testdata_file("CT_small.dcm"))
    sv1 = tmp_path / "ct_sv1.dcm"
    subprocess.run([tool("dcmcjpeg"), "+e1", str(original), str(sv1)], check=True, timeout=60)
    assert syntax_of(sv1) == "1.2.840.10008.1.2.4.70"
    ours = decode_pixels(sv1)
    np.testing.assert_array_equal(ours, pydicom.dcmread(original).pixel_array)
    np.testing.assert_array_equal(ours, dcmtk_decoded(tool, "dcmdjpeg", sv1, tmp_path / "dj.dcm"))


def test_jpeg_lossless_sv1_series_converts_like_uncompressed(tool, tmp_path):
    """The whole conversion (not only the decoder) of an SV1 copy equals that of the original."""
    plain, sv1 = tmp_path / "plain", tmp_path / "sv1"
    plain.mkdir()
    sv1.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), plain / "ct.dcm")
    subprocess.run(
        [tool("dcmcjpeg"), "+e1", str(plain / "ct.dcm"), str(sv1 / "ct.dcm")], check=True, timeout=60
    )
    (a,) = convert_series(plain, tmp_path / "a")
    (b,) = convert_series(sv1, tmp_path / "b")
    np.testing.assert_array_equal(
        np.asarray(nib.load(a.nifti_path).dataobj), np.asarray(nib.load(b.nifti_path).dataobj)
    )


@pytest.mark.parametrize(
    ("name", "syntax", "twin"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR_small.dcm"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR_small.dcm"),
    ],
)
def test_lossless_syntaxes_equal_their_uncompressed_twin(name, syntax, twin):
    path = Path(get_testdata_file(name))
    assert syntax_of(path) == syntax
    np.testing.assert_array_equal(decode_pixels(path), pydicom.dcmread(get_testdata_file(twin)).pixel_array)


@pytest.mark.parametrize(
    ("name", "syntax", "decoder", "tolerance"),
    [
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81", "dcmdjpls", 0),  # JPEG-LS is deterministic
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", "dcmdjpls", 0),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "dcmdrle", 0),
        # lossy DCT: libjpeg (ours) and IJG (dcmtk) may round an inverse DCT differently by one
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", "dcmdjpeg", 1),
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "dcmdjpeg", 2),
    ],
)
def test_syntaxes_equal_dcmtk_decoders(name, syntax, decoder, tolerance, tool, tmp_path):
    path = Path(get_testdata_file(name))
    assert syntax_of(path) == syntax
    reference = dcmtk_decoded(tool, decoder, path, tmp_path / "ref.dcm")
    ours = decode_pixels(path)
    assert ours.shape == reference.shape
    diff = np.abs(ours.astype(np.int64) - reference.astype(np.int64))
    assert diff.max() <= tolerance
    if tolerance:
        assert diff.mean() < 0.05  # a rounding difference, not a different image


def test_jpeg_2000_lossy_equals_dcm2niix(tool, tmp_path):
    """1.2.840.10008.1.2.4.91 (dcmtk has no JPEG 2000 decoder; dcm2niix decodes it with OpenJPEG)."""
    path = Path(get_testdata_file("693_J2KI.dcm"))
    assert syntax_of(path) == "1.2.840.10008.1.2.4.91"
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(path, src)
    subprocess.run(
        [tool("dcm2niix"), "-z", "n", "-f", "ref", "-o", str(tmp_path), str(src)],
        check=True,
        capture_output=True,
    )
    ref = np.asarray(nib.load(tmp_path / "ref.nii").dataobj)[:, :, 0]
    ds = pydicom.dcmread(path)
    stored = decode_pixels(path)
    assert float(ds.get("RescaleSlope", 1)) == 1.0
    np.testing.assert_array_equal(stored[::-1].T + int(ds.get("RescaleIntercept", 0)), ref)
