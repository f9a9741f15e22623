"""Pixel data of a volume's slices: uncompressed frames read straight into the volume, others decoded by
pydicom, then rescale slope/intercept applied in the smallest exact dtype. Volumes of uncompressed CT/MR
slices stream instead, one frame at a time (:func:`streaming_dtype`): into the ``.nii`` file by several
workers with positioned writes (:func:`write_rescaled_frames`), or into the gzip writer
(:func:`iter_rescaled`)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from airflow_provider_kaapana.core.dicom.elements import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from airflow_provider_kaapana.core.nifti.mosaic import tile_of
from airflow_provider_kaapana.core.nifti.scan import SliceInfo, uid_name
from airflow_provider_kaapana.exceptions import InvalidDicomError

_UNCOMPRESSED_LE = {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN}
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
try:
    _IOV_MAX = max(16, min(1024, os.sysconf("SC_IOV_MAX")))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
    _IOV_MAX = 16


def _stored_dtype(s: SliceInfo) -> np.dtype:
    if s.bits_allocated not in (8, 16, 32):
        raise InvalidDicomError(f"{s.path}: BitsAllocated {s.bits_allocated} is not supported")
    kind = "i" if s.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{s.bits_allocated // 8}")


def _raw_frame_offset(s: SliceInfo, nbytes: int, fd: int) -> int | None:
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
    head = os.pread(fd, 12, start - 12)
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
                offset = _raw_frame_offset(s, nbytes, fh.fileno())
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


def rescale_entry(slices: list[SliceInfo]) -> dict | str:
    """The sidecar's ``rescale`` entry: ``{"slope", "intercept"}`` when all slices share them, else
    ``"per-slice"``."""
    first = slices[0]
    if all(s.slope == first.slope and s.intercept == first.intercept for s in slices):
        return {"slope": float(first.slope), "intercept": float(first.intercept)}
    return "per-slice"


class NotStreamable(Exception):
    """Internal: the volume cannot take the streaming path after all (see :func:`iter_rescaled`)."""


def streaming_dtype(slices: list[SliceInfo]) -> np.dtype | None:
    """The output dtype of the streaming path (:func:`iter_rescaled`), or None when it does not apply.

    It applies to uncompressed little-endian single-frame slices of 8/16-bit stored values whose rescale
    is slope 1 and whole-number intercepts (CT in HU, most MR): the dtype is then the one
    :func:`apply_rescale` picks when the values fit it, the stored dtype for a zero intercept and int16
    otherwise (:func:`iter_rescaled` gives up with :class:`NotStreamable` on a value that int16 cannot
    hold, and the volume goes the general way).
    """
    first = slices[0]
    if first.bits_allocated not in (8, 16) or not hasattr(os, "preadv"):  # preadv: POSIX, not Windows
        return None
    dtype = _stored_dtype(first)
    for s in slices:
        if (
            s.mosaic is not None
            or s.frame_number is not None
            or s.transfer_syntax_uid not in _UNCOMPRESSED_LE
            or s.bits_allocated != first.bits_allocated
            or not 0 < s.bits_stored <= s.bits_allocated
            or s.pixel_representation != first.pixel_representation
            or s.rows != first.rows
            or s.columns != first.columns
            or s.slope != 1.0
            or s.intercept != round(s.intercept)
        ):
            return None
    if all(s.intercept == 0 for s in slices):
        return dtype  # apply_rescale keeps 8- and 16-bit stored values as they are
    return np.dtype(np.int16)


class _FrameReader:
    """Reads single-frame slices of a :func:`streaming_dtype` volume into reused buffers, rescaled.

    One ``preadv`` per frame at its known offset, then the unused high bits and the intercept applied in
    place (NumPy releases the GIL for both, so several readers run in parallel). The range check is
    one-sided where the stored bits already bound the other side: for signed 16-bit CT and an intercept of
    -1024 only the minimum is looked at. Where stored and output dtype are the same (CT, MR), the intercept
    is added in place in 16-bit arithmetic, which is exact because the range check comes first (3x faster
    than the int32 add and cast it replaces: 18 against 61 ms for 300 frames of 512 x 512).
    """

    def __init__(self, first: SliceInfo, target: np.dtype) -> None:
        self.stored_dtype = _stored_dtype(first)
        self.target = np.dtype(target)
        self.frame = np.empty((first.rows, first.columns), dtype=self.stored_dtype)
        self.frame_bytes = memoryview(self.frame).cast("B")
        same = self.stored_dtype == self.target
        # the buffer that ends up holding the output values (the frame itself where the dtypes agree)
        self.out = self.frame if same else np.empty((first.rows, first.columns), dtype=self.target)
        self.info = np.iinfo(self.target)

    def read(self, s: SliceInfo) -> np.ndarray:
        """Slice ``s``'s modality values in the target dtype (rows not flipped), in the reused ``out``."""
        frame = self.frame
        nbytes = frame.nbytes
        fd = os.open(s.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            offset = _raw_frame_offset(s, nbytes, fd)
            if offset is None:
                raise NotStreamable(f"{s.path}: pixel data offset unknown")
            got = os.preadv(fd, [self.frame_bytes], offset)
        finally:
            os.close(fd)
        if got != nbytes:
            raise InvalidDicomError(f"{s.path}: pixel data truncated ({got} of {nbytes} bytes)")
        low, high = _fix_bits_in_place(frame, s)
        intercept = int(s.intercept)
        if intercept == 0 and self.out is frame:
            return frame
        info = self.info
        # look at the values only where the stored bits allow a value outside the target dtype
        if low + intercept < info.min and int(frame.min()) + intercept < info.min:
            raise NotStreamable(f"{s.path}: rescaled values do not fit {self.target}")
        if high + intercept > info.max and int(frame.max()) + intercept > info.max:
            raise NotStreamable(f"{s.path}: rescaled values do not fit {self.target}")
        if self.out is frame:
            # modular 16/8-bit add: exact, since every result fits the dtype (checked above)
            span = 1 << (8 * self.target.itemsize)
            wrapped = (intercept - info.min) % span + info.min
            np.add(frame, self.target.type(wrapped), out=frame)
        else:
            np.add(frame, np.int32(intercept), out=self.out, casting="unsafe")
        return self.out


def _fix_bits_in_place(frame: np.ndarray, s: SliceInfo) -> tuple[int, int]:
    """Clear (unsigned) or sign-extend (signed) the bits above BitsStored in place, as :func:`_fix_bits`
    does; return the range of values the stored bits can hold."""
    bits = frame.dtype.itemsize * 8
    unused = s.bits_allocated - s.bits_stored  # 0 <= unused < bits: streaming_dtype checked BitsStored
    if unused > 0:
        bits -= unused
        if s.pixel_representation == 1:
            np.left_shift(frame, unused, out=frame)
            np.right_shift(frame, unused, out=frame)
        else:
            np.bitwise_and(frame, (1 << bits) - 1, out=frame)
    if frame.dtype.kind == "i":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def iter_rescaled(slices: list[SliceInfo], target: np.dtype) -> Iterator[np.ndarray]:
    """Each slice's modality values in ``target`` dtype, rows flipped (NIfTI axis 1), one at a time.

    For :func:`streaming_dtype`'s volumes (the ``.nii.gz`` writer; ``.nii`` files take
    :func:`write_rescaled_frames`): each frame is read at its offset and rescaled in a reused buffer
    (:class:`_FrameReader`), so the volume is never held in memory. Raises :class:`NotStreamable` when a
    value does not fit ``target`` or a frame's offset cannot be found; the caller then takes the general
    path.
    """
    reader = _FrameReader(slices[0], target)
    flipped = np.empty_like(reader.out)
    for s in slices:
        np.copyto(flipped, reader.read(s)[::-1])
        yield flipped


def write_rescaled_frames(
    fd: int, offset: int, slices: list[SliceInfo], target: np.dtype, threads: int
) -> None:
    """Write each slice's modality values in ``target`` dtype, rows flipped (NIfTI axis 1), into the open
    file ``fd``: slice ``k`` at ``offset + k * frame bytes``.

    For :func:`streaming_dtype`'s volumes. Each of ``threads`` workers (the caller's thread is one) takes
    the next slice, reads and rescales it in its own buffer (:class:`_FrameReader`) and writes it with one
    ``pwritev`` whose vectors are that buffer's rows in reverse order, so the kernel's copy into the page
    cache does the flip. Reads, the rescale and writes release the GIL, so the workers overlap.
    Measured on the 512 x 512 x 300 CT (2 cores): 48-68 ms with 2 workers against 81 ms for the
    :func:`iter_rescaled` loop it replaces for ``.nii``. Raises :class:`NotStreamable` (as
    :func:`iter_rescaled`) or :class:`InvalidDicomError`; the first error stops every worker.
    """
    import threading

    if not slices:
        return
    first = slices[0]
    frame_size = first.rows * first.columns * np.dtype(target).itemsize
    next_slice = iter(range(len(slices))).__next__  # one shared iterator: next() is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        try:
            reader = _FrameReader(first, target)
            rows = _reversed_rows(reader.out)
            while not errors:
                try:
                    k = next_slice()
                except StopIteration:
                    return
                reader.read(slices[k])
                _pwrite_all(fd, rows, offset + k * frame_size)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            errors.append(exc)

    helpers = [threading.Thread(target=work, daemon=True) for _ in range(min(threads, len(slices)) - 1)]
    for thread in helpers:
        thread.start()
    work()
    for thread in helpers:
        thread.join()
    if errors:
        raise errors[0]


def _reversed_rows(frame: np.ndarray) -> list[tuple[list[memoryview], int]]:
    """The rows of a C-order 2-D array, last first, as byte views in groups of at most IOV_MAX (with the
    byte count of each group)."""
    raw = memoryview(frame).cast("B")
    step = frame.strides[0]
    rows = [raw[r * step : (r + 1) * step] for r in range(frame.shape[0] - 1, -1, -1)]
    return [
        (rows[i : i + _IOV_MAX], step * len(rows[i : i + _IOV_MAX])) for i in range(0, len(rows), _IOV_MAX)
    ]


def _pwrite_all(fd: int, groups: list[tuple[list[memoryview], int]], offset: int) -> None:
    """Write the groups of views back to back at ``offset`` (``pwritev`` may write less than asked)."""
    for views, want in groups:
        done = os.pwritev(fd, views, offset)
        if done < want:  # short write (a signal, a full disk): finish it plainly, or raise OSError
            rest = memoryview(b"".join(views))[done:]
            while rest:
                n = os.pwrite(fd, rest, offset + want - len(rest))
                rest = rest[n:]
        offset += want


def apply_rescale(stored: np.ndarray, slices: list[SliceInfo]) -> tuple[np.ndarray, dict | str]:
    """Stored values -> modality values, in the smallest exact dtype; and the sidecar's ``rescale`` entry."""
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    uniform = bool(np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]))
    rescale = rescale_entry(slices)
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
