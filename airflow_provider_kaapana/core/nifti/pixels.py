"""Pixel data of a volume's slices: uncompressed frames read straight into the volume, others decoded by
pydicom, then rescale slope/intercept applied in the smallest exact dtype."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from airflow_provider_kaapana.core.dicom.elements import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from airflow_provider_kaapana.core.nifti.mosaic import tile_of
from airflow_provider_kaapana.core.nifti.scan import SliceInfo, uid_name
from airflow_provider_kaapana.exceptions import InvalidDicomError

_UNCOMPRESSED_LE = {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN}
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _stored_dtype(s: SliceInfo) -> np.dtype:
    if s.bits_allocated not in (8, 16, 32):
        raise InvalidDicomError(f"{s.path}: BitsAllocated {s.bits_allocated} is not supported")
    kind = "i" if s.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{s.bits_allocated // 8}")


def _raw_frame_offset(s: SliceInfo, nbytes: int, fh) -> int | None:
    """Offset of the frame's bytes when PixelData is the last element, uncompressed LE; else None."""
    if s.transfer_syntax_uid not in _UNCOMPRESSED_LE:
        return None
    frame_offset = (s.frame_number - 1 if s.frame_number else 0) * nbytes
    if s.pixel_offset is not None:
        return (
            s.pixel_offset + frame_offset if s.pixel_offset + frame_offset + nbytes <= s.file_size else None
        )
    total = nbytes * s.number_of_frames
    padded = total + (total & 1)
    start = s.file_size - padded
    if start < 12:
        return None
    fh.seek(start - 12)
    head = fh.read(12)
    length = struct.pack("<I", padded)
    explicit = head[:4] == _PIXEL_TAG and head[4:6] in (b"OW", b"OB") and head[8:12] == length
    implicit = head[4:8] == _PIXEL_TAG and head[8:12] == length
    if not (explicit or implicit):
        return None
    return start + frame_offset


def _fix_bits(frame: np.ndarray, s: SliceInfo) -> np.ndarray:
    unused = s.bits_allocated - s.bits_stored
    if unused <= 0:
        return frame
    if s.pixel_representation == 1:
        return (frame << unused) >> unused
    return frame & ((1 << s.bits_stored) - 1)


def read_stored(slices: list[SliceInfo]) -> np.ndarray:
    """Stored values, shape (slices, rows, columns) with the rows already flipped (NIfTI axis 1)."""
    first = slices[0]
    dtype = _stored_dtype(first)
    rows, cols = first.rows, first.columns
    out = np.empty((len(slices), rows, cols), dtype=dtype)
    frame = np.empty((rows, cols), dtype=dtype)
    nbytes = frame.nbytes
    decoded: dict[Path, np.ndarray] = {}
    for k, s in enumerate(slices):
        if _stored_dtype(s) != dtype:
            raise InvalidDicomError(
                f"{s.path}: pixel type {_stored_dtype(s)} differs from {dtype} of {first.path.name}"
            )
        if s.mosaic is None:
            with open(s.path, "rb", buffering=0) as fh:
                offset = _raw_frame_offset(s, nbytes, fh)
                if offset is not None:
                    fh.seek(offset)
                    got = fh.readinto(memoryview(frame).cast("B"))
                    if got != nbytes:
                        raise InvalidDicomError(f"{s.path}: pixel data truncated ({got} of {nbytes} bytes)")
                    out[k] = _fix_bits(frame, s)[::-1]
                    continue
        arr = decoded.get(s.path)
        if arr is None:
            arr = _decode_with_pydicom(s)
            if s.number_of_frames > 1 or s.mosaic is not None:
                decoded = {s.path: arr}  # the next slices come from the same file
        pixels = arr[s.frame_number - 1] if s.frame_number else arr
        if s.mosaic is not None:
            pixels = tile_of(pixels, s.mosaic)
        if pixels.shape != (rows, cols):
            raise InvalidDicomError(
                f"{s.path}: decoded pixels have shape {pixels.shape}, expected {(rows, cols)}"
            )
        out[k] = pixels[::-1]
    return out


def _decode_with_pydicom(s: SliceInfo) -> np.ndarray:
    return decode_pixels(s.path, s.transfer_syntax_uid)


def decode_pixels(path: Path, transfer_syntax_uid: str | None = None) -> np.ndarray:
    """Stored pixel values of a file (frames, rows, columns; or rows, columns), decoded by pydicom.

    Compressed syntaxes go through pydicom's plugins (core dependencies): pylibjpeg-libjpeg for JPEG
    baseline/extended/lossless (Process 14 SV1 included) and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000,
    pylibjpeg-rle (or pydicom's own decoder) for RLE. Raises :class:`InvalidDicomError` naming the file.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InvalidDicomError(f"{path}: cannot read: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidDicomError(f"{path}: has no pixel data")
    syntax = transfer_syntax_uid or str(ds.file_meta.get("TransferSyntaxUID", ""))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/failed decoders
        name = uid_name(syntax) or syntax
        raise InvalidDicomError(f"{path}: cannot decode pixel data (transfer syntax {name}): {exc}") from exc
    return np.asarray(arr)


def apply_rescale(stored: np.ndarray, slices: list[SliceInfo]) -> tuple[np.ndarray, dict | str]:
    """Stored values -> modality values, in the smallest exact dtype; and the sidecar's ``rescale`` entry."""
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    uniform = bool(np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]))
    rescale: dict | str = (
        {"slope": float(slopes[0]), "intercept": float(intercepts[0])} if uniform else "per-slice"
    )
    if np.all(slopes == 1.0) and np.all(intercepts == np.round(intercepts)):
        if uniform and intercepts[0] == 0:
            if stored.dtype.itemsize == 1 or stored.dtype in (np.int16, np.uint16, np.int32):
                return stored, rescale
        lo = int(stored.min()) + int(intercepts.min())
        hi = int(stored.max()) + int(intercepts.max())
        for target in (np.int16, np.uint16, np.int32):
            info = np.iinfo(target)
            if info.min <= lo and hi <= info.max:
                break
        else:
            target = None
        if target is not None:
            if uniform and stored.dtype == target:
                stored += target(intercepts[0])  # in place: no second copy of a large volume
                return stored, rescale
            out = np.empty(stored.shape, dtype=target)
            for k in range(len(slices)):
                out[k] = stored[k].astype(np.int64) + int(intercepts[k])
            return out, rescale
    out = np.empty(stored.shape, dtype=np.float32)
    for k in range(len(slices)):
        out[k] = stored[k].astype(np.float32) * np.float32(slopes[k]) + np.float32(intercepts[k])
    return out, rescale
