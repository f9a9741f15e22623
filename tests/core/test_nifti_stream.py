"""The streaming ``.nii`` path (frames read by offset, rescaled in place, written as reversed rows by
several workers) against the general path (whole volume read, rescaled, written): the same bytes, and
the cases where it must give way to the general path or fail without leaving a file behind."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from airflow_provider_kaapana.core.nifti import convert, pixels, scan
from airflow_provider_kaapana.core.nifti.writer import write_nifti_frames
from airflow_provider_kaapana.exceptions import InvalidDicomError


def _set_pixels(ds, stored: np.ndarray, *, bits_allocated: int, bits_stored: int, signed: bool) -> None:
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.tobytes()


def _with_garbage_bits(k: int, ds, *, signed: bool) -> None:
    """12 stored bits with noise in the 4 unused high bits, which a reader must clear or sign-extend."""
    values = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.int32)
    rng = np.random.default_rng(k)
    garbage = rng.integers(0, 16, values.shape) << 12
    twelve = (values & 0x0FFF) if not signed else np.clip(values - 1024, -2048, 2047) & 0x0FFF
    stored = (twelve | garbage).astype(np.uint16)
    _set_pixels(ds, stored, bits_allocated=16, bits_stored=12, signed=signed)


def _unsigned16(k: int, ds) -> None:
    values = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.int32)
    _set_pixels(
        ds, np.clip(values + 200, 0, 65535).astype("<u2"), bits_allocated=16, bits_stored=16, signed=False
    )


def _eight_bit(k: int, ds, signed: bool = False) -> None:
    values = np.frombuffer(ds.PixelData, dtype="<i2").astype(np.int32)
    stored = (
        np.clip(values // 8, -128, 127).astype(np.int8)
        if signed
        else np.clip(values // 8, 0, 255).astype(np.uint8)
    )
    _set_pixels(ds, stored, bits_allocated=8, bits_stored=8, signed=signed)


def _intercept_per_slice(k: int, ds) -> None:
    ds.RescaleIntercept = str(-1024 + 3 * k)


CASES = {
    "ct_int16_intercept": {},
    "mr_int16_no_intercept": {"modality": "MR"},
    "ct_signed_12_bits_garbage": {"per_instance": lambda k, ds: _with_garbage_bits(k, ds, signed=True)},
    "mr_unsigned_12_bits_garbage": {
        "modality": "MR",
        "per_instance": lambda k, ds: _with_garbage_bits(k, ds, signed=False),
    },
    "ct_unsigned_16_intercept": {"per_instance": _unsigned16},  # uint16 stored, int16 written
    "mr_unsigned_16": {"modality": "MR", "per_instance": _unsigned16},
    "mr_uint8": {"modality": "MR", "per_instance": _eight_bit},
    "ct_uint8_intercept": {"per_instance": _eight_bit},
    "ct_int8_intercept": {"per_instance": lambda k, ds: _eight_bit(k, ds, signed=True)},
    "ct_intercept_per_slice": {"per_instance": _intercept_per_slice},
    "ct_intercept_beyond_int16": {  # the intercept itself does not fit int16, the values do
        "per_instance": lambda k, ds: (
            _set_pixels(
                ds,
                np.full((ds.Rows, ds.Columns), 40000 + k, dtype="<u2"),
                bits_allocated=16,
                bits_stored=16,
                signed=False,
            ),
            setattr(ds, "RescaleIntercept", "-40000"),
        )
    },
    "tall_more_rows_than_iov_max": {"rows": 1100, "columns": 3, "slices": 3},
    "oblique_non_square": {"rows": 20, "columns": 28, "pixel_spacing": (0.6, 0.9), "orientation": "oblique"},
}


def _general(monkeypatch) -> None:
    monkeypatch.setattr(convert, "streaming_dtype", lambda slices: None)


def _convert_both(series_dir: Path, tmp_path: Path, monkeypatch, compress: bool = False):
    (streamed,) = convert.convert_series(series_dir, tmp_path / "stream", name="v", compress=compress)
    with monkeypatch.context() as m:
        _general(m)
        (general,) = convert.convert_series(series_dir, tmp_path / "general", name="v", compress=compress)
    return streamed, general


def _payload(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


def _sidecar_without_file(path: Path) -> str:
    return path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_nii_has_the_bytes_of_the_general_path(case, synthetic_series, tmp_path, monkeypatch):
    series = synthetic_series(**{"slices": 6, **CASES[case]})
    assert pixels.streaming_dtype(scan.scan_series(series.series_dir)[0]) is not None  # it does stream
    streamed, general = _convert_both(series.series_dir, tmp_path, monkeypatch)
    assert streamed.nifti_path.read_bytes() == general.nifti_path.read_bytes()
    assert streamed.sidecar_path.read_text() == general.sidecar_path.read_text()
    assert streamed.dtype == general.dtype
    assert sorted(p.name for p in streamed.nifti_path.parent.iterdir()) == ["v.json", "v.nii"]


@pytest.mark.parametrize("case", ["ct_int16_intercept", "ct_signed_12_bits_garbage", "ct_uint8_intercept"])
def test_streamed_nii_gz_has_the_bytes_of_the_general_path(case, synthetic_series, tmp_path, monkeypatch):
    series = synthetic_series(**{"slices": 5, **CASES[case]})
    streamed, general = _convert_both(series.series_dir, tmp_path, monkeypatch, compress=True)
    assert _payload(streamed.nifti_path) == _payload(general.nifti_path)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_any_number_of_workers_writes_the_same_file(threads, synthetic_series, tmp_path, monkeypatch):
    series = synthetic_series(slices=7)
    monkeypatch.setattr(convert, "_STREAM_THREADS", 1)
    (one,) = convert.convert_series(series.series_dir, tmp_path / "one", name="v", compress=False)
    monkeypatch.setattr(convert, "_STREAM_THREADS", threads)
    (many,) = convert.convert_series(series.series_dir, tmp_path / "many", name="v", compress=False)
    assert many.nifti_path.read_bytes() == one.nifti_path.read_bytes()


def test_short_writes_are_completed(synthetic_series, tmp_path, monkeypatch):
    series = synthetic_series(slices=4)
    (before,) = convert.convert_series(series.series_dir, tmp_path / "a", name="v", compress=False)
    real = os.pwritev
    monkeypatch.setattr(pixels.os, "pwritev", lambda fd, views, offset: real(fd, views[:3], offset))
    (after,) = convert.convert_series(series.series_dir, tmp_path / "b", name="v", compress=False)
    assert after.nifti_path.read_bytes() == before.nifti_path.read_bytes()


def test_values_below_int16_take_the_general_path(synthetic_series, tmp_path):
    # int16 stored values plus an intercept of -1024 can go below int16: that slice stops the stream and
    # the volume is written as int32 the general way, as before
    def low_corner(k, ds):
        stored = np.frombuffer(ds.PixelData, dtype="<i2").copy()
        if k == 2:
            stored[0] = -32000
        ds.PixelData = stored.tobytes()

    series = synthetic_series(slices=4, per_instance=low_corner)
    (volume,) = convert.convert_series(series.series_dir, tmp_path / "out", compress=False, name="v")
    assert volume.dtype == "int32"
    data = np.asanyarray(nib.load(volume.nifti_path).dataobj)
    stored = series.volume.astype(np.int64)
    stored[2, 0, 0] = -32000
    np.testing.assert_array_equal(data, (stored - 1024).transpose(2, 1, 0)[:, ::-1, :])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.json", "v.nii"]


def test_unknown_pixel_offset_takes_the_general_path(synthetic_series, tmp_path, monkeypatch):
    # headers read by pydicom carry no pixel offset; the frame is then found from the end of the file, and
    # where PixelData is not the last element (trailing padding) the general path decodes the file
    def trailing_padding(k, ds):
        ds.DataSetTrailingPadding = b"\x00" * 8

    series = synthetic_series(slices=4, per_instance=trailing_padding)
    (reference,) = convert.convert_series(series.series_dir, tmp_path / "ref", compress=False, name="v")
    monkeypatch.setattr(scan, "_fast_header", lambda path, chunk=0: None)
    called = []
    real_read_stored = convert.read_stored
    monkeypatch.setattr(convert, "read_stored", lambda slices: called.append(1) or real_read_stored(slices))
    (volume,) = convert.convert_series(series.series_dir, tmp_path / "out", compress=False, name="v")
    assert called, "the general path was not taken"
    assert volume.nifti_path.read_bytes() == reference.nifti_path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v.json", "v.nii"]


def test_compressed_and_multiframe_slices_do_not_stream(synthetic_series):
    series = synthetic_series(slices=3)
    slices, _ = scan.scan_series(series.series_dir)
    assert pixels.streaming_dtype(slices) is not None
    for change in (
        {"transfer_syntax_uid": "1.2.840.10008.1.2.5"},  # RLE
        {"transfer_syntax_uid": "1.2.840.10008.1.2.4.70"},  # JPEG lossless
        {"transfer_syntax_uid": "1.2.840.10008.1.2.2"},  # big endian
        {"frame_number": 1},
        {"slope": 2.0},
        {"intercept": 0.5},
        {"bits_stored": 0},
        {"bits_stored": 17},
        {"rows": slices[0].rows + 1},
        {"pixel_representation": 1 - slices[0].pixel_representation},
    ):
        changed = [slices[0], slices[1]._replace(**change), slices[2]]
        assert pixels.streaming_dtype(changed) is None, change


def test_a_file_truncated_after_the_scan_fails_without_leaving_a_file(
    synthetic_series, tmp_path, monkeypatch
):
    # the read happens in a worker thread: its error reaches the caller, and no partial .nii is left
    series = synthetic_series(slices=6)
    real_scan = convert.scan_series

    def scan_then_truncate(series_dir):
        result = real_scan(series_dir)
        victim = series.files[3]
        os.truncate(victim, victim.stat().st_size - 100)
        return result

    monkeypatch.setattr(convert, "scan_series", scan_then_truncate)
    with pytest.raises(InvalidDicomError, match=series.files[3].name):
        convert.convert_series(series.series_dir, tmp_path / "out", compress=False, name="v")
    assert list((tmp_path / "out").iterdir()) == []


def test_write_nifti_frames_refuses_a_wrong_size_and_leaves_nothing(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="bytes written"):
        write_nifti_frames(tmp_path / "v.nii", (2, 2, 2), np.dtype(np.int16), affine, lambda fd, offset: None)
    assert list(tmp_path.iterdir()) == []

    def fail(fd, offset):
        os.pwrite(fd, b"\x00" * 8, offset)
        raise pixels.NotStreamable("stop")

    with pytest.raises(pixels.NotStreamable):
        write_nifti_frames(tmp_path / "v.nii", (2, 2, 2), np.dtype(np.int16), affine, fail)
    assert list(tmp_path.iterdir()) == []


def test_header_chunk_ending_between_two_elements_is_read_on(synthetic_series):
    # the first read of a header may end exactly where an element ends: the walk is then clean but
    # incomplete, and the rest (RescaleIntercept, PixelData...) must still be read
    from airflow_provider_kaapana.core.dicom.elements import ElementWalker, read_file_meta

    series = synthetic_series(slices=1)
    path = series.files[0]
    data = path.read_bytes()
    _meta, start = read_file_meta(data)
    boundaries = [
        begin for _tag, _vr, begin, _value, _end, _undefined in ElementWalker(data, False).spans(start)
    ]
    whole = scan._fast_header(path)
    assert whole is not None and whole.pixel_offset is not None and "RescaleIntercept" in whole
    for boundary in boundaries[1:]:
        head = scan._fast_header(path, chunk=boundary)
        assert head == whole and head.pixel_offset == whole.pixel_offset, boundary


def test_a_nii_conversion_imports_only_what_it_needs(ct_series, tmp_path):
    # start-up is a third of a .nii conversion's wall time (docs/guides/benchmarks_nifti.rst): the
    # streaming path needs neither pydicom nor nibabel nor the gzip writer nor logging (no file skipped),
    # and none of NumPy's lazily imported numpy.ma (np.median and np.unique would import it)
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from airflow_provider_kaapana.core.nifti.convert import convert_series\n"
        "convert_series(sys.argv[1], sys.argv[2], compress=False)\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ct_series.series_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert not loaded & {"pydicom", "nibabel", "isal", "logging", "numpy.ma", "gzip"}


def test_median_is_numpys():
    from airflow_provider_kaapana.core.nifti.geometry import _median

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 5, 16, 299, 300):
        for values in (rng.normal(size=n) * 700, np.round(rng.uniform(0.5, 3.0, size=n), 3), np.full(n, 0.7)):
            assert _median(values) == float(np.median(values))


def test_walker_inline_path_walks_as_header_does(pydicom_test_files):
    # the walker decodes short explicit VR element headers inline; on every bundled file, cut short and
    # with bytes flipped, it must find, stop and fail exactly as the plain header() path does
    import random

    from airflow_provider_kaapana.core.dicom.elements import ElementWalker, read_walkable_start

    class Plain(ElementWalker):
        inline_explicit = False

    def outcome(cls, data, start, implicit):
        walker = cls(data, implicit, wanted=scan._WANTED, stop=scan._STOP_TAGS)
        try:
            end = walker.dataset(start)
        except InvalidDicomError as exc:
            return type(exc).__name__, str(exc), walker.found
        return end, walker.stopped, walker.found

    rng = random.Random(7)
    checked = 0
    for path in pydicom_test_files:
        with open(path, "rb") as fh:
            try:
                head = read_walkable_start(fh, 1 << 30)
            except (InvalidDicomError, UnicodeDecodeError, KeyError):
                continue
        if head is None:
            continue
        data, start, syntax = head
        implicit = syntax == "1.2.840.10008.1.2"
        variants = [data, data[: max(start, len(data) // 3)]]
        for _ in range(6):
            damaged = bytearray(data[: min(len(data), 4096)])
            damaged[rng.randrange(start, len(damaged))] ^= 1 << rng.randrange(8)
            variants.append(bytes(damaged))
        for variant in variants:
            assert outcome(ElementWalker, variant, start, implicit) == outcome(
                Plain, variant, start, implicit
            )
            checked += 1
    assert checked > 100


def test_without_pwritev_the_slices_stream_through_one_writer(synthetic_series, tmp_path, monkeypatch):
    series = synthetic_series(slices=4)
    (reference,) = convert.convert_series(series.series_dir, tmp_path / "a", name="v", compress=False)
    monkeypatch.delattr(os, "pwritev")
    (volume,) = convert.convert_series(series.series_dir, tmp_path / "b", name="v", compress=False)
    assert volume.nifti_path.read_bytes() == reference.nifti_path.read_bytes()


@pytest.mark.parametrize("header_bytes", [100, 20_000, 70_000])
def test_long_headers_are_read_on_in_steps(header_bytes, synthetic_series, tmp_path):
    # headers longer than the first 16 KiB (and than 64 KiB) are read on: the same header and the same
    # voxels as a series whose header fits
    def padded(k, ds):
        ds.add_new(0x00091010, "LO", "kaapana")  # private creator of the padding below
        ds.add_new(0x00091011, "OB", b"\x00" * header_bytes)

    series = synthetic_series(slices=3, per_instance=padded)
    whole = scan._fast_header(series.files[0], chunk=1 << 30)
    head = scan._fast_header(series.files[0])
    assert head == whole and head.pixel_offset == whole.pixel_offset > header_bytes
    (volume,) = convert.convert_series(series.series_dir, tmp_path / "out", compress=False, name="v")
    expected = (series.volume.astype(np.int64) - 1024).transpose(2, 1, 0)[:, ::-1, :]
    np.testing.assert_array_equal(np.asanyarray(nib.load(volume.nifti_path).dataobj), expected)
