"""Series thumbnails: the middle slice along the normal, windowed, at most 256 px, refused cleanly."""

from __future__ import annotations

import base64
import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from airflow_provider_kaapana.core.index.document import build_series_documents
from airflow_provider_kaapana.core.index.thumbnail import (
    MAX_DATA_URL_CHARS,
    ThumbnailError,
    series_thumbnail,
    write_thumbnail,
)
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.testing.synthetic import Shape

# written in this order (InstanceNumber 1..9); along the normal the middle one is offset 8 (file 2),
# by InstanceNumber it would be file 4 (offset 12)
OFFSETS = [16.0, 0.0, 8.0, 4.0, 12.0, 2.0, 14.0, 6.0, 10.0]
MIDDLE_FILE = OFFSETS.index(8.0)
# a box only in the middle slice (z = -20 + 8), in its upper left corner: rows and columns 2..10
BOX = Shape(1, (-10.0, -10.0, -12.0), half_size=(4.0, 4.0, 0.5), intensity=1040.0)  # -1000 + 1040 = 40 HU


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _no_window(_k: int, ds: pydicom.Dataset) -> None:
    del ds.WindowCenter, ds.WindowWidth


def test_the_middle_slice_along_the_normal_is_shown_upright(synthetic_series):
    series = synthetic_series(slice_offsets=OFFSETS, shapes=[BOX], noise_sd=0.0, per_instance=_no_window)
    thumbnail = series_thumbnail(series.files)
    assert thumbnail.sop_instance_uid == series.sop_instance_uids[MIDDLE_FILE]
    assert (thumbnail.slice_index, thumbnail.slice_count) == (4, 9)
    pixels = _pixels(thumbnail.png)
    assert pixels.shape == (32, 32) and pixels.dtype == np.uint8  # small images are never enlarged
    # percentile window: background (-1000 HU) black, the box (40 HU) white, where it is in the slice
    assert thumbnail.window_source == "percentile" and thumbnail.window == (-1000.0, 40.0)
    assert (pixels[2:11, 2:11] == 255).all()
    assert (pixels[12:, :] == 0).all() and (pixels[:, 12:] == 0).all()


def test_the_instance_window_is_used(synthetic_series):
    # WindowCenter 0 / WindowWidth 2000: -1000 HU is the last black value, 40 HU a mid grey
    series = synthetic_series(
        slice_offsets=OFFSETS, shapes=[BOX], noise_sd=0.0, extra={"WindowCenter": "0", "WindowWidth": "2000"}
    )
    thumbnail = series_thumbnail(series.files)
    assert thumbnail.window_source == "header" and thumbnail.window == (-1000.0, 999.0)
    pixels = _pixels(thumbnail.png)
    assert int(pixels[6, 6]) == round((40 + 1000) / 1999 * 255)
    assert int(pixels[20, 20]) == 0
    # the synthetic default (40/400, a soft-tissue window): the box at 40 HU is mid grey, the air black
    default = _pixels(
        series_thumbnail(synthetic_series(slice_offsets=OFFSETS, shapes=[BOX], noise_sd=0.0).files).png
    )
    assert int(default[6, 6]) == round((40 - (40 - 0.5 - 199.5)) / 399 * 255) and int(default[20, 20]) == 0


def test_monochrome1_is_inverted(synthetic_series):
    def monochrome1(_k: int, ds: pydicom.Dataset) -> None:
        ds.PhotometricInterpretation = "MONOCHROME1"
        _no_window(_k, ds)

    series = synthetic_series(slice_offsets=OFFSETS, shapes=[BOX], noise_sd=0.0, per_instance=monochrome1)
    pixels = _pixels(series_thumbnail(series.files).png)
    assert int(pixels[6, 6]) == 0 and int(pixels[20, 20]) == 255


def test_size_is_at_most_256_with_square_pixels(synthetic_series):
    large = series_thumbnail(synthetic_series(rows=300, columns=400, slices=3, noise_sd=5.0).files)
    assert (large.width, large.height) == (256, 192) and _pixels(large.png).shape == (192, 256)
    # rows 1 mm apart, columns 0.5 mm: the picture is twice as high as the pixel grid is
    tall = series_thumbnail(synthetic_series(rows=64, columns=64, slices=3, pixel_spacing=(1.0, 0.5)).files)
    assert (tall.width, tall.height) == (64, 128)


def test_the_document_copy_fits_its_limit(synthetic_series):
    noisy = series_thumbnail(
        synthetic_series(rows=512, columns=512, slices=3, noise_sd=400.0, per_instance=_no_window).files
    )
    assert len(noisy.png) > MAX_DATA_URL_CHARS  # pure noise does not compress: the copy is shrunk
    url = noisy.data_url()
    assert url is not None and url.startswith("data:image/png;base64,") and len(url) <= MAX_DATA_URL_CHARS
    shrunk = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(shrunk.size) < 256


def test_series_without_an_image_are_refused_with_the_reason(synthetic_series, tmp_path):
    series = synthetic_series(slices=2)
    sr = tmp_path / "sr.dcm"
    ds = pydicom.dcmread(series.files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.save_as(sr)
    with pytest.raises(
        ThumbnailError, match=r"series X: no image slice to show \(sr.dcm: a structured report"
    ):
        series_thumbnail([sr], label="series X")
    with pytest.raises(ThumbnailError, match="no files"):
        series_thumbnail([], label="series X")


def test_undecodable_pixels_leave_the_document_without_a_thumbnail(synthetic_series, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    def broken_jpeg2000(_k: int, ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
        ds["PixelData"].VR = "OB"

    series = synthetic_series(slices=3, per_instance=broken_jpeg2000)
    with pytest.raises(ThumbnailError, match=r"cannot decode 000\d\.dcm"):
        series_thumbnail(series.files)
    workspace = RunWorkspace(tmp_path / "ws", "dag", "run")
    docs, errors = build_series_documents([series.series_dir], thumbnails=workspace)
    assert not errors and len(docs) == 1
    assert "thumbnail" not in docs[0].document["kaapana"] and docs[0].thumbnail_path is None
    assert "cannot decode" in (docs[0].thumbnail_refused or "")


def test_the_document_carries_the_thumbnail_and_the_workspace_the_png(synthetic_series, tmp_path):
    series = synthetic_series(slice_offsets=OFFSETS, shapes=[BOX], noise_sd=0.0)
    workspace = RunWorkspace(tmp_path / "ws", "kaapana_ingest", "manual__1")
    docs, _ = build_series_documents([series.series_dir], thumbnails=workspace)
    kaapana = docs[0].document["kaapana"]
    png = workspace.step_dir(series.series_instance_uid, "index", create=False) / "thumbnail.png"
    assert docs[0].thumbnail_path == str(png) and png.is_file()
    assert kaapana["thumbnail"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    # the index step finds the middle from the positions in its own facts: the same slice as the scan
    assert kaapana["thumbnail_of"]["sop_instance_uid"] == series.sop_instance_uids[MIDDLE_FILE]
    assert (kaapana["thumbnail_of"]["slice_index"], kaapana["thumbnail_of"]["slice_count"]) == (4, 9)
    assert png.read_bytes() == series_thumbnail(series.files).png
    # written again by a retry: the same file, complete
    again = write_thumbnail(series_thumbnail(series.files), png.parent)
    assert again == png and again.read_bytes() == png.read_bytes()
