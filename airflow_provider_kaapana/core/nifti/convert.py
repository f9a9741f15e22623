"""DICOM series → NIfTI with checked geometry and a sidecar that maps every slice back to its SOP instance.

:func:`convert_series` reads the headers of every file in a series directory, groups them into volumes,
orders the slices along the slice normal, checks the geometry, and writes ``<stem>.nii.gz`` plus
``<stem>.json`` per volume. The volume layout and affine are those dcm2niix writes for the same files
(as nibabel reads both), so masks predicted on it line up with the source images.

Voxel layout (identical to dcm2niix):

* NIfTI axis 0 = DICOM **columns** (index ``i`` = column ``i``), not flipped;
* NIfTI axis 1 = DICOM **rows, flipped**: index ``j`` = row ``Rows - 1 - j``;
* NIfTI axis 2 = **slices ordered by ascending position along the slice normal**
  ``n = row_direction × column_direction`` (``dot(ImagePositionPatient, n)``), never by InstanceNumber or
  file name; index ``k`` is the file ``source_files[k]`` / SOP instance ``sop_instance_uids[k]``.

So voxel ``(i, j, k)`` is pixel (row ``Rows-1-j``, column ``i``) of ``sop_instance_uids[k]``. The
sform and qform (code 1, scanner) hold the RAS affine: LPS ``[row·Δc, -col·Δr, n·Δs]`` with origin at the
first slice's last row, with the first two world axes negated.

Sidecar ``<stem>.json`` keys: ``format`` (``"kaapana-nifti-sidecar/1"``), ``nifti_file``,
``series_instance_uid``, ``study_instance_uid``, ``frame_of_reference_uid``, ``sop_class_uid``,
``modality``, ``sop_instance_uids`` and ``source_files`` and ``frame_numbers`` and
``image_positions_patient`` (one entry per NIfTI slice ``k``; ``frame_numbers[k]`` is the 1-based frame
of a multi-frame instance, else ``null``), ``affine`` (4x4 RAS, as in the file), ``shape``, ``dtype``,
``rows``, ``columns``, ``image_orientation_patient`` (6 floats, DICOM order), ``pixel_spacing``
(``[between rows, between columns]``, DICOM order), ``slice_spacing``, ``voxel_axes``
(``{"axis0": "columns", "axis1": "rows", "axis2": "slices", "flip_axis0": false, "flip_axis1": true,
"flip_axis2": false, "slice_order": "ascending position along the slice normal"}``), ``rescale``
(``{"slope": s, "intercept": b}`` or ``"per-slice"``), ``split`` (the values that separated this volume
from its siblings, e.g. ``{"echo": 2.0}`` (EchoNumbers, else EchoTime); ``{}`` when the series is one
volume) and ``skipped_files`` (``[{"file", "reason"}]``). For the SEG export: the frame of slice ``k`` of a
mask in this layout is ``mask[:, ::-1, k].T`` (rows x columns).

Documented handling of difficult series (each raises with the series UID and the files involved):

* several orientations, image sizes, echoes (EchoNumbers / EchoTime) or temporal positions
  (TemporalPositionIdentifier) in one series: **split** into one volume each, named
  ``<name>_<o1|s1|e2|t3...><suffix>`` in a deterministic order;
* several acquisitions (AcquisitionNumber) that repeat slice positions: split by acquisition (``_a2``);
  different acquisition numbers covering distinct positions stay one volume;
* remaining duplicate positions, uneven spacing or a missing slice (any adjacent gap off the typical
  (median) gap by more than ``spacing_rtol``): :class:`GeometryError`;
* gantry tilt or a sheared stack (a slice displaced within its plane by more than ``shear_tolerance`` of a
  pixel): :class:`GeometryError` (no resampling: a corrected copy would no longer match the source frames);
* missing ImagePositionPatient / ImageOrientationPatient / PixelSpacing, undecodable pixel data:
  :class:`InvalidDicomError` naming the file;
* non-image SOP classes (SEG, SR, PR, RTSTRUCT, KO...), colour images and non-DICOM files: skipped with
  the reason (logged, and listed in every sidecar);
* enhanced and legacy-converted multi-frame CT/MR/PET: converted frame by frame from the per-frame and
  shared functional groups (each frame is a slice; ``frame_numbers`` says which).

Output dtype: rescale slope/intercept applied; integer when every slope is 1 and every intercept is a
whole number (int16 when the values fit, as for CT in HU; else uint16/int32), float32 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "kaapana-nifti-sidecar/1"
VOXEL_AXES = {
    "axis0": "columns",
    "axis1": "rows",
    "axis2": "slices",
    "flip_axis0": False,
    "flip_axis1": True,
    "flip_axis2": False,
    "slice_order": "ascending position along the slice normal",
}

_UNCOMPRESSED_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# SOP classes that never carry an image volume, with the reason given when they are skipped.
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM SEG (segmentation), not an image",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / registration / surface object, not an image",
    "1.2.840.10008.5.1.4.1.1.88": "a structured report (SR/KO), not an image",
    "1.2.840.10008.5.1.4.1.1.11": "a presentation state (PR), not an image",
    "1.2.840.10008.5.1.4.1.1.481.3": "an RT structure set (RTSTRUCT), not an image",
    "1.2.840.10008.5.1.4.1.1.481": "an RT object (plan/dose/record), not an image volume",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document, not an image",
    "1.2.840.10008.5.1.4.1.1.9": "a waveform, not an image",
    "1.2.840.10008.5.1.4.1.1.67": "a real-world value map, not an image",
    "1.2.840.10008.5.1.4.1.1.78": "an ophthalmic measurement, not an image",
    "1.2.840.10008.5.1.4.1.1.91": "a content assessment, not an image",
}


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of every volume, and why."""

    path: Path
    reason: str


@dataclass
class SliceInfo:
    """What one slice (a single-frame instance, or one frame of a multi-frame one) contributes."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: np.ndarray  # 6 floats, DICOM order
    position: np.ndarray  # 3 floats, LPS mm
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    slope: float
    intercept: float
    instance_number: int | None = None
    acquisition_number: int | None = None
    echo: float | None = None
    temporal_position: int | None = None
    frame_number: int | None = None  # 1-based, multi-frame only
    number_of_frames: int = 1
    file_size: int = 0
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    pixel_offset: int | None = None  # byte offset of (uncompressed) PixelData, when known from the header


@dataclass
class ConvertedVolume:
    """One NIfTI volume written by :func:`convert_series` and its sidecar."""

    nifti_path: Path
    sidecar_path: Path
    series_instance_uid: str
    shape: tuple[int, int, int]
    affine: np.ndarray  # 4x4 RAS, as written
    sop_instance_uids: list[str]  # entry k = the slice at index k of the third voxel axis
    dtype: str
    split: dict[str, object]
    split_suffix: str  # "" for an unsplit series, else e.g. "e2"


@dataclass
class _Volume:
    slices: list[SliceInfo]
    split: dict[str, object]
    suffix: str
    spacing: float = 0.0
    affine_ras: np.ndarray | None = None


# --------------------------------------------------------------------------- header reading


def _float_list(value: object) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return [float(v) for v in value]  # type: ignore[union-attr]
    return [float(value)]  # type: ignore[arg-type]


def _opt_float(value: object) -> float | None:
    try:
        return None if value in (None, "") else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _opt_int(value: object) -> int | None:
    try:
        return None if value in (None, "") else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def non_image_reason(sop_class_uid: str) -> str | None:
    """Why a SOP class is not converted (SEG, SR, PR, RTSTRUCT...), or None for an image class."""
    for prefix in sorted(_NON_IMAGE_PREFIXES, key=len, reverse=True):
        if sop_class_uid == prefix or sop_class_uid.startswith(prefix + "."):
            name = _uid_name(sop_class_uid)
            return f"{_NON_IMAGE_PREFIXES[prefix]} (SOP class {name})"
    return None


def _geometry_from(ds: Dataset) -> tuple[list[float], list[float], list[float]]:
    iop = _float_list(ds.get("ImageOrientationPatient"))
    ipp = _float_list(ds.get("ImagePositionPatient"))
    spacing = _float_list(ds.get("PixelSpacing"))
    return iop, ipp, spacing


def _check_geometry_tags(path: Path, iop: list[float], ipp: list[float], spacing: list[float]) -> None:
    missing = [
        name
        for name, value, n in (
            ("ImageOrientationPatient", iop, 6),
            ("ImagePositionPatient", ipp, 3),
            ("PixelSpacing", spacing, 2),
        )
        if len(value) != n
    ]
    if missing:
        raise InvalidDicomError(f"{path}: missing or malformed {', '.join(missing)}; cannot place the slice")
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(np.dot(row, col))) > 1e-3
    ):
        raise InvalidDicomError(f"{path}: ImageOrientationPatient {iop} is not two orthogonal unit vectors")
    if min(spacing) <= 0:
        raise InvalidDicomError(f"{path}: PixelSpacing {spacing} is not positive")


def _functional(ds: Dataset, frame_item: Dataset | None, seq: str) -> Dataset | None:
    """An item of a functional group macro, per-frame first, then shared."""
    for holder in (frame_item, _first(ds.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and seq in holder:
            item = _first(holder.get(seq))
            if item is not None:
                return item
    return None


def _first(seq: object) -> Dataset | None:
    try:
        return seq[0] if seq else None  # type: ignore[index]
    except (IndexError, TypeError):
        return None


# Tags read by the fast header parser: tag -> (keyword, "US" for binary unsigned short, else "str")
_WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "str"),
    0x00080018: ("SOPInstanceUID", "str"),
    0x00080060: ("Modality", "str"),
    0x00180050: ("SliceThickness", "str"),
    0x00180081: ("EchoTime", "str"),
    0x00180086: ("EchoNumbers", "str"),
    0x00180088: ("SpacingBetweenSlices", "str"),
    0x0020000D: ("StudyInstanceUID", "str"),
    0x0020000E: ("SeriesInstanceUID", "str"),
    0x00200012: ("AcquisitionNumber", "str"),
    0x00200013: ("InstanceNumber", "str"),
    0x00200032: ("ImagePositionPatient", "str"),
    0x00200037: ("ImageOrientationPatient", "str"),
    0x00200052: ("FrameOfReferenceUID", "str"),
    0x00200100: ("TemporalPositionIdentifier", "str"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "str"),
    0x00280008: ("NumberOfFrames", "str"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "str"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "str"),
    0x00281053: ("RescaleSlope", "str"),
}
# Enhanced multi-frame files carry their geometry in these sequences: pydicom reads those.
_FUNCTIONAL_GROUPS = {0x52009229, 0x52009230}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


class _FastHeader(dict):
    """The few attributes conversion needs, keyed by DICOM keyword (``get`` / ``in`` like a Dataset)."""

    transfer_syntax_uid: str = "1.2.840.10008.1.2.1"
    pixel_offset: int | None = None


def _element_length(data: bytes, pos: int, explicit: bool) -> tuple[int, int]:
    """(value length, header size) of the little-endian data element starting at ``pos``."""
    if explicit:
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            return struct.unpack_from("<I", data, pos + 8)[0], 12
        return struct.unpack_from("<H", data, pos + 6)[0], 8
    return struct.unpack_from("<I", data, pos + 4)[0], 8


def _skip_undefined(data: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length sequence or item whose content starts at ``pos``."""
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group == 0xFFFE:
            length = struct.unpack_from("<I", data, pos + 4)[0]
            if elem in (0xE0DD, 0xE00D):  # sequence / item delimiter
                return pos + 8
            pos += 8  # an item
            pos = _skip_undefined(data, pos, explicit) if length == _UNDEFINED else pos + length
            continue
        length, hdr = _element_length(data, pos, explicit)
        pos += hdr
        pos = _skip_undefined(data, pos, explicit) if length == _UNDEFINED else pos + length
    raise ValueError("sequence runs past the end of the header")


def _fast_header(path: Path, chunk: int = 1 << 16) -> _FastHeader | None:
    """Parse a Part-10 file's header up to PixelData without pydicom (~20x faster for a series).

    Handles implicit and explicit VR little endian datasets (also those of encapsulated transfer syntaxes);
    returns None for anything else (no preamble, big endian, deflated, functional groups), which then
    goes to pydicom.
    """
    with open(path, "rb") as fh:
        data = fh.read(chunk)
        if len(data) < 144 or data[128:132] != b"DICM":
            return None
        out = _FastHeader()
        pos = 132
        transfer_syntax = None
        while pos + 8 <= len(data):  # file meta: always explicit VR little endian
            group, elem = struct.unpack_from("<HH", data, pos)
            if group != 0x0002:
                break
            if data[pos + 4 : pos + 6] in _LONG_VRS:
                length, hdr = struct.unpack_from("<I", data, pos + 8)[0], 12
            else:
                length, hdr = struct.unpack_from("<H", data, pos + 6)[0], 8
            if elem == 0x0010:
                transfer_syntax = data[pos + hdr : pos + hdr + length].decode("ascii").strip("\x00 ")
            pos += hdr + length
        if transfer_syntax in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", None):
            return None
        out.transfer_syntax_uid = transfer_syntax
        explicit = transfer_syntax != "1.2.840.10008.1.2"
        everything = False
        while True:
            if pos + 12 > len(data) and not everything:
                data += fh.read()
                everything = True
            if pos + 8 > len(data):
                break
            group, elem = struct.unpack_from("<HH", data, pos)
            tag = group << 16 | elem
            length, hdr = _element_length(data, pos, explicit)
            if tag == 0x7FE00010:
                out.pixel_offset = pos + hdr if length != _UNDEFINED else None
                break
            if tag in _FUNCTIONAL_GROUPS:
                return None
            if length == _UNDEFINED:
                data += fh.read()
                everything = True
                # an undefined-length UN element holds implicit VR content (PS3.5 6.2.2)
                implicit_inside = not explicit or data[pos + 4 : pos + 6] == b"UN"
                pos = _skip_undefined(data, pos + hdr, not implicit_inside)
                continue
            end = pos + hdr + length
            if end > len(data):
                data += fh.read()
                if end > len(data):
                    raise ValueError(f"element {tag:08X} runs past the end of the file")
            wanted = _WANTED.get(tag)
            if wanted is not None:
                keyword, kind = wanted
                raw = data[pos + hdr : end]
                if kind == "US":
                    out[keyword] = struct.unpack_from("<H", raw)[0]
                else:
                    values = raw.decode("latin-1").strip("\x00 ").split("\\")
                    out[keyword] = values[0].strip() if len(values) == 1 else [v.strip() for v in values]
            pos = end
        return out


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def read_slices(path: Path) -> list[SliceInfo]:
    """Headers of one file as slices (one per frame of a multi-frame instance).

    Raises :class:`InvalidDicomError` for an image that cannot be placed (missing geometry tags...), and
    the internal ``_NotAnImage`` with the reason when the file is to be skipped (non-DICOM, SEG, SR...).
    Little-endian files are parsed by :func:`_fast_header`; everything else (big endian, deflated,
    enhanced multi-frame) by pydicom.
    """
    try:
        ds: Any = _fast_header(path)
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        ds = None
    if ds is None:
        import pydicom
        from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (PydicomInvalidDicomError, EOFError, OSError, ValueError, struct.error) as exc:
            raise _NotAnImage(f"not a readable DICOM file ({exc})") from exc
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        pixel_offset = None
    else:
        transfer_syntax = ds.transfer_syntax_uid
        pixel_offset = ds.pixel_offset
    sop_class = str(ds.get("SOPClassUID", ""))
    reason = non_image_reason(sop_class)
    if reason:
        raise _NotAnImage(reason)
    if "Rows" not in ds or "Columns" not in ds:
        raise _NotAnImage(f"no image pixel module (SOP class {_uid_name(sop_class) or '?'})")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise _NotAnImage(
            f"colour image ({samples} samples per pixel, {ds.get('PhotometricInterpretation', '?')}); "
            "only greyscale volumes are converted"
        )
    base = {
        "path": path,
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "sop_class_uid": sop_class,
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "transfer_syntax_uid": transfer_syntax,
        "rows": int(ds.get("Rows")),
        "columns": int(ds.get("Columns")),
        "bits_allocated": int(ds.get("BitsAllocated", 16) or 16),
        "bits_stored": int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        "pixel_representation": int(ds.get("PixelRepresentation", 0) or 0),
        "instance_number": _opt_int(ds.get("InstanceNumber")),
        "acquisition_number": _opt_int(ds.get("AcquisitionNumber")),
        "file_size": path.stat().st_size,
        "slice_thickness": _opt_float(ds.get("SliceThickness")),
        "spacing_between_slices": _opt_float(ds.get("SpacingBetweenSlices")),
        "pixel_offset": pixel_offset,
    }
    if not base["sop_instance_uid"] or not base["series_instance_uid"]:
        raise InvalidDicomError(f"{path}: missing SOPInstanceUID or SeriesInstanceUID")
    n_frames = _opt_int(ds.get("NumberOfFrames")) or 1
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_slices(ds, path, base, n_frames)
    if n_frames > 1:
        raise InvalidDicomError(
            f"{path}: multi-frame instance ({n_frames} frames) without per-frame functional groups "
            f"(SOP class {_uid_name(sop_class)}); cannot place its frames"
        )
    iop, ipp, spacing = _geometry_from(ds)
    _check_geometry_tags(path, iop, ipp, spacing)
    echo = _opt_int(ds.get("EchoNumbers"))
    return [
        SliceInfo(
            **base,
            pixel_spacing=(spacing[0], spacing[1]),
            orientation=np.asarray(iop, float),
            position=np.asarray(ipp, float),
            slope=_opt_float(ds.get("RescaleSlope")) or 1.0,
            intercept=_opt_float(ds.get("RescaleIntercept")) or 0.0,
            echo=float(echo) if echo is not None else _opt_float(ds.get("EchoTime")),
            temporal_position=_opt_int(ds.get("TemporalPositionIdentifier")),
        )
    ]


def _enhanced_slices(ds: Dataset, path: Path, base: dict, n_frames: int) -> list[SliceInfo]:
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n_frames:
        raise InvalidDicomError(
            f"{path}: {len(per_frame)} per-frame functional group items for {n_frames} frames"
        )
    out = []
    for f, item in enumerate(per_frame):
        where = f"{path} frame {f + 1}"
        orient = _functional(ds, item, "PlaneOrientationSequence")
        pos = _functional(ds, item, "PlanePositionSequence")
        measures = _functional(ds, item, "PixelMeasuresSequence")
        iop = _float_list(orient.get("ImageOrientationPatient")) if orient is not None else []
        ipp = _float_list(pos.get("ImagePositionPatient")) if pos is not None else []
        spacing = _float_list(measures.get("PixelSpacing")) if measures is not None else []
        _check_geometry_tags(Path(where), iop, ipp, spacing)
        transform = _functional(ds, item, "PixelValueTransformationSequence")
        slope = _opt_float(transform.get("RescaleSlope")) if transform is not None else None
        intercept = _opt_float(transform.get("RescaleIntercept")) if transform is not None else None
        echo_item = _functional(ds, item, "MREchoSequence")
        echo = _opt_float(echo_item.get("EffectiveEchoTime")) if echo_item is not None else None
        content = _functional(ds, item, "FrameContentSequence")
        temporal = _opt_int(content.get("TemporalPositionIndex")) if content is not None else None
        thickness = _opt_float(measures.get("SliceThickness")) if measures is not None else None
        out.append(
            SliceInfo(
                **{**base, "slice_thickness": thickness or base["slice_thickness"]},
                pixel_spacing=(spacing[0], spacing[1]),
                orientation=np.asarray(iop, float),
                position=np.asarray(ipp, float),
                slope=slope if slope is not None else (_opt_float(ds.get("RescaleSlope")) or 1.0),
                intercept=intercept
                if intercept is not None
                else (_opt_float(ds.get("RescaleIntercept")) or 0.0),
                echo=echo,
                temporal_position=temporal,
                frame_number=f + 1,
                number_of_frames=n_frames,
            )
        )
    return out


class _NotAnImage(Exception):
    """Internal: a file to skip, with the reason."""


# --------------------------------------------------------------------------- grouping and geometry


def _iter_files(series_dir: Path) -> Iterable[Path]:
    for path in sorted(series_dir.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.name != "DICOMDIR":
            yield path


def scan_series(series_dir: str | Path) -> tuple[list[SliceInfo], list[SkippedFile]]:
    """Read every file's header under ``series_dir``: the image slices, and the files skipped with why."""
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise InvalidDicomError(f"{series_dir}: not a directory")
    slices: list[SliceInfo] = []
    skipped: list[SkippedFile] = []
    seen: dict[tuple[str, int | None], Path] = {}
    for path in _iter_files(series_dir):
        try:
            file_slices = read_slices(path)
        except _NotAnImage as exc:
            skipped.append(SkippedFile(path, str(exc)))
            continue
        for s in file_slices:
            key = (s.sop_instance_uid, s.frame_number)
            if key in seen:
                skipped.append(SkippedFile(path, f"duplicate of {seen[key]} (same SOPInstanceUID)"))
                break
            seen[key] = path
        else:
            slices.extend(file_slices)
    return slices, skipped


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _cluster(values: list[np.ndarray], tol: float) -> list[int]:
    """Index of the cluster each vector falls in (clusters by first appearance)."""
    centres: list[np.ndarray] = []
    labels = []
    for v in values:
        for i, c in enumerate(centres):
            if np.max(np.abs(v - c)) <= tol:
                labels.append(i)
                break
        else:
            centres.append(v)
            labels.append(len(centres) - 1)
    return labels


def _split(slices: list[SliceInfo]) -> list[_Volume]:
    """Split one series' slices by orientation, size, echo, temporal position (and acquisition on repeats)."""
    orient_labels = _cluster([s.orientation for s in slices], 1e-4)
    # name orientation groups by their normal, so the order does not depend on file names
    orient_centres = {}
    for s, lab in zip(slices, orient_labels):
        orient_centres.setdefault(lab, tuple(np.round(s.orientation, 4)))
    orient_rank = {lab: r for r, lab in enumerate(sorted(orient_centres, key=orient_centres.get))}
    size_keys = sorted({(s.rows, s.columns, *np.round(s.pixel_spacing, 5)) for s in slices})
    groups: dict[tuple, list[SliceInfo]] = {}
    for s, lab in zip(slices, orient_labels):
        size = size_keys.index((s.rows, s.columns, *np.round(s.pixel_spacing, 5)))
        key = (
            orient_rank[lab],
            size,
            -1.0 if s.echo is None else s.echo,
            -1 if s.temporal_position is None else s.temporal_position,
        )
        groups.setdefault(key, []).append(s)
    keys = sorted(groups)
    varying = [len({k[i] for k in keys}) > 1 for i in range(4)]
    volumes = []
    for key in keys:
        members = groups[key]
        split: dict[str, object] = {}
        parts = []
        o, size, echo, temporal = key
        if varying[0]:
            split["orientation"] = [float(x) for x in members[0].orientation]
            parts.append(f"o{o + 1}")
        if varying[1]:
            split["rows_columns_spacing"] = list(size_keys[size])
            parts.append(f"s{size + 1}")
        if varying[2]:
            echo_numbers = sorted({k[2] for k in keys})
            split["echo"] = echo if echo >= 0 else None
            parts.append(f"e{echo_numbers.index(echo) + 1}")
        if varying[3]:
            split["temporal_position"] = temporal if temporal >= 0 else None
            parts.append(f"t{temporal if temporal >= 0 else 0}")
        volumes.extend(_split_acquisitions(members, split, "_".join(parts)))
    return volumes


def _positions(slices: list[SliceInfo]) -> np.ndarray:
    normal = _normal(slices[0].orientation)
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _split_acquisitions(members: list[SliceInfo], split: dict, suffix: str) -> list[_Volume]:
    d = _positions(members)
    repeated = len(np.unique(np.round(d, 3))) < len(d)
    acquisitions = sorted({s.acquisition_number or 0 for s in members})
    if not repeated or len(acquisitions) < 2:
        return [_Volume(members, split, suffix)]
    out = []
    for acq in acquisitions:
        sub = [s for s in members if (s.acquisition_number or 0) == acq]
        out.append(
            _Volume(sub, {**split, "acquisition_number": acq}, "_".join(filter(None, [suffix, f"a{acq}"])))
        )
    return out


def _order_and_check(volume: _Volume, series_uid: str, spacing_rtol: float, shear_tolerance: float) -> None:
    """Sort along the normal, check duplicates/spacing/shear, and compute the affine (dcm2niix layout)."""
    slices = volume.slices
    normal = _normal(slices[0].orientation)
    d = _positions(slices)
    order = np.argsort(d, kind="stable")
    slices[:] = [slices[i] for i in order]
    d = d[order]
    first = slices[0]
    n = len(slices)
    label = f"series {series_uid}" + (f" ({volume.suffix})" if volume.suffix else "")
    dr, dc = first.pixel_spacing
    if n > 1:
        gaps = np.diff(d)
        dup = np.flatnonzero(gaps < 1e-3 * max(float(np.median(gaps)), 1e-3) + 1e-4)
        if dup.size:
            a, b = slices[dup[0]], slices[dup[0] + 1]
            raise GeometryError(
                f"{label}: duplicate slice position {d[dup[0]]:.3f} mm along the normal in "
                f"{a.path.name} and {b.path.name} ({len(dup)} duplicate pair(s)); "
                "not split because EchoNumbers/TemporalPositionIdentifier/AcquisitionNumber are equal"
            )
        spacing = (d[-1] - d[0]) / (n - 1)
        typical = float(np.median(gaps))
        deviation = np.abs(gaps - typical)
        bad = np.flatnonzero(deviation > spacing_rtol * typical)
        if bad.size:
            k = int(np.argmax(deviation))
            ratio = gaps[k] / typical
            missing = ratio > 1.5 and abs(ratio - round(ratio)) <= spacing_rtol * round(ratio)
            kind = f"{round(ratio) - 1} missing slice(s)" if missing else "uneven slice spacing"
            raise GeometryError(
                f"{label}: {kind}: gap of {gaps[k]:.4f} mm between {slices[k].path.name} and "
                f"{slices[k + 1].path.name}, expected {typical:.4f} mm (smallest gap {np.min(gaps):.4f}, "
                f"largest {np.max(gaps):.4f}; {bad.size} of {n - 1} adjacent pairs off by more than "
                f"{spacing_rtol:.0%})"
            )
        # in-plane displacement of each slice relative to a stack straight along the normal
        offsets = np.array([s.position - first.position for s in slices])
        in_plane = offsets - np.outer(d - d[0], normal)
        worst = float(np.max(np.linalg.norm(in_plane, axis=1)))
        if worst > shear_tolerance * min(dr, dc):
            angle = np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), d[-1] - d[0]))
            raise GeometryError(
                f"{label}: slices are not stacked along the slice normal (gantry tilt or shear of "
                f"{angle:.2f} degrees; {slices[-1].path.name} is displaced {worst:.3f} mm within its plane); "
                "refusing to write a sheared volume"
            )
    else:
        spacing = first.spacing_between_slices or first.slice_thickness or 1.0
    volume.spacing = float(spacing)
    row, col = first.orientation[:3], first.orientation[3:]
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = -col * dr
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = first.position + col * dr * (first.rows - 1)
    volume.affine_ras = _LPS_TO_RAS @ lps


# --------------------------------------------------------------------------- pixel data


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


def _read_stored(slices: list[SliceInfo]) -> np.ndarray:
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
            if s.number_of_frames > 1:
                decoded = {s.path: arr}
        pixels = arr[s.frame_number - 1] if s.frame_number else arr
        if pixels.shape != (rows, cols):
            raise InvalidDicomError(
                f"{s.path}: decoded pixels have shape {pixels.shape}, expected {(rows, cols)}"
            )
        out[k] = pixels[::-1]
    return out


def _decode_with_pydicom(s: SliceInfo) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(s.path)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/failed decoders
        name = _uid_name(s.transfer_syntax_uid) or s.transfer_syntax_uid
        raise InvalidDicomError(
            f"{s.path}: cannot decode pixel data (transfer syntax {name}): {exc}. Install a pydicom "
            "pixel-data plugin for it (pylibjpeg, pylibjpeg-openjpeg or gdcm) or send it uncompressed."
        ) from exc
    return np.asarray(arr)


def _rescale(stored: np.ndarray, slices: list[SliceInfo]) -> tuple[np.ndarray, dict | str]:
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


# --------------------------------------------------------------------------- writing


_NIFTI_DTYPES = {
    np.dtype(np.uint8): 2,
    np.dtype(np.int16): 4,
    np.dtype(np.int32): 8,
    np.dtype(np.float32): 16,
    np.dtype(np.int8): 256,
    np.dtype(np.uint16): 512,
    np.dtype(np.uint32): 768,
}
_NIFTI1_HEADER = np.dtype(
    [
        ("sizeof_hdr", "<i4"),
        ("data_type", "S10"),
        ("db_name", "S18"),
        ("extents", "<i4"),
        ("session_error", "<i2"),
        ("regular", "S1"),
        ("dim_info", "u1"),
        ("dim", "<i2", (8,)),
        ("intent_p", "<f4", (3,)),
        ("intent_code", "<i2"),
        ("datatype", "<i2"),
        ("bitpix", "<i2"),
        ("slice_start", "<i2"),
        ("pixdim", "<f4", (8,)),
        ("vox_offset", "<f4"),
        ("scl_slope", "<f4"),
        ("scl_inter", "<f4"),
        ("slice_end", "<i2"),
        ("slice_code", "u1"),
        ("xyzt_units", "u1"),
        ("cal_max", "<f4"),
        ("cal_min", "<f4"),
        ("slice_duration", "<f4"),
        ("toffset", "<f4"),
        ("glmax", "<i4"),
        ("glmin", "<i4"),
        ("descrip", "S80"),
        ("aux_file", "S24"),
        ("qform_code", "<i2"),
        ("sform_code", "<i2"),
        ("quatern", "<f4", (3,)),
        ("qoffset", "<f4", (3,)),
        ("srow", "<f4", (3, 4)),
        ("intent_name", "S16"),
        ("magic", "S4"),
    ]
)
assert _NIFTI1_HEADER.itemsize == 348


def _quaternion(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """NIfTI qform parameters (b, c, d), voxel sizes and qfac of an affine (nifti1.h's algorithm)."""
    rzs = affine[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    rot = rzs / zooms
    u, _, vt = np.linalg.svd(rot)  # nearest orthonormal matrix: IOP is stored with limited precision
    rot = u @ vt
    qfac = 1.0
    if np.linalg.det(rot) < 0:
        qfac = -1.0
        rot[:, 2] *= -1
    (r11, r12, r13), (r21, r22, r23), (r31, r32, r33) = rot
    a = r11 + r22 + r33 + 1.0
    if a > 0.5:
        a = 0.5 * np.sqrt(a)
        b, c, d = 0.25 * (r32 - r23) / a, 0.25 * (r13 - r31) / a, 0.25 * (r21 - r12) / a
    else:
        xd, yd, zd = 1.0 + r11 - (r22 + r33), 1.0 + r22 - (r11 + r33), 1.0 + r33 - (r11 + r22)
        if xd > 1.0:
            b = 0.5 * np.sqrt(xd)
            c, d, a = 0.25 * (r12 + r21) / b, 0.25 * (r13 + r31) / b, 0.25 * (r32 - r23) / b
        elif yd > 1.0:
            c = 0.5 * np.sqrt(yd)
            b, d, a = 0.25 * (r12 + r21) / c, 0.25 * (r23 + r32) / c, 0.25 * (r13 - r31) / c
        else:
            d = 0.5 * np.sqrt(zd)
            b, c, a = 0.25 * (r13 + r31) / d, 0.25 * (r23 + r32) / d, 0.25 * (r21 - r12) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return np.array([b, c, d]), zooms, qfac


def _nifti_header(shape: tuple[int, int, int], dtype: np.dtype, affine: np.ndarray) -> bytes:
    """A NIfTI-1 single-file header (+ empty extension flag) with qform = sform = ``affine`` (code 1).

    Written directly (no nibabel import on the conversion path); the tests read it back with nibabel.
    """
    code = _NIFTI_DTYPES.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"no NIfTI-1 datatype for {dtype}")
    hdr = np.zeros((), dtype=_NIFTI1_HEADER)
    hdr["sizeof_hdr"] = 348
    hdr["regular"] = b"r"
    hdr["dim"] = [3, *shape, 1, 1, 1, 1]
    hdr["datatype"] = code
    hdr["bitpix"] = np.dtype(dtype).itemsize * 8
    quatern, zooms, qfac = _quaternion(affine)
    hdr["pixdim"] = [qfac, *zooms, 1.0, 1.0, 1.0, 1.0]
    hdr["vox_offset"] = 352
    hdr["scl_slope"] = 1.0
    hdr["xyzt_units"] = 2 | 8  # mm, s
    hdr["descrip"] = b"airflow-provider-kaapana"
    hdr["qform_code"] = 1  # scanner
    hdr["sform_code"] = 1
    hdr["quatern"] = quatern
    hdr["qoffset"] = affine[:3, 3]
    hdr["srow"] = affine[:3, :]
    hdr["magic"] = b"n+1"
    return hdr.tobytes() + b"\x00\x00\x00\x00"


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _deflater(level: int) -> tuple[Any, int]:
    """ISA-L's zlib-compatible deflate when the ``isal`` package is installed (about 4x faster), else zlib.

    ISA-L has levels 0-3; zlib levels 1-9 map onto them (1 -> 1, 2-5 -> 2, 6-9 -> 3).
    """
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib, level
    return isal_zlib, 0 if level <= 0 else 1 if level == 1 else 2 if level <= 5 else 3


def write_gzip(
    path: Path, parts: Sequence[bytes | memoryview], *, level: int = 1, threads: int | None = None
) -> None:
    """Write ``parts`` as one gzip member, deflating blocks in parallel (pigz-style).

    Each block is raw deflate primed with the previous 32 KiB as dictionary and ended with a sync
    flush, so the concatenation is one valid deflate stream that any gzip reader accepts. Deflate is
    ISA-L's when ``isal`` is installed (see :func:`_deflater`), else zlib's.
    """
    block = 1 << 22
    views = [memoryview(p).cast("B") for p in parts]
    jobs: list[tuple[memoryview, memoryview | None]] = []
    prev: memoryview | None = None
    for view in views:
        for start in range(0, len(view), block):
            chunk = view[start : start + block]
            dictionary = view[max(0, start - 32768) : start] if start else prev
            jobs.append((chunk, dictionary))
        if len(view):
            prev = view[max(0, len(view) - 32768) :]

    deflater, level = _deflater(level)

    def deflate(index: int) -> bytes:
        chunk, dictionary = jobs[index]
        if dictionary is not None and len(dictionary):
            comp = deflater.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, dictionary)
        else:
            comp = deflater.compressobj(level, zlib.DEFLATED, -15, 9)
        last = index == len(jobs) - 1
        return comp.compress(chunk) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def crc() -> tuple[int, int]:
        value, size = 0, 0
        for view in views:
            value = zlib.crc32(view, value)
            size += len(view)
        return value, size

    n_threads = threads or _threads()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with ThreadPoolExecutor(max_workers=n_threads + 1) as pool, open(tmp, "wb") as out:
        crc_future = pool.submit(crc)
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff")  # mtime 0: same input, same bytes
        pending: deque = deque()
        for index in range(len(jobs)):
            pending.append(pool.submit(deflate, index))
            if len(pending) > 2 * n_threads:
                out.write(pending.popleft().result())
        while pending:
            out.write(pending.popleft().result())
        if not jobs:
            out.write(zlib.compress(b"", level)[2:-4])
        value, size = crc_future.result()
        out.write(struct.pack("<II", value & 0xFFFFFFFF, size & 0xFFFFFFFF))
    os.replace(tmp, path)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, compress: bool, level: int) -> None:
    # data is (slices, rows, columns) C-order == NIfTI (i, j, k) with i fastest: no transpose needed
    header = _nifti_header((data.shape[2], data.shape[1], data.shape[0]), data.dtype, affine)
    body = memoryview(np.ascontiguousarray(data)).cast("B")
    if compress:
        write_gzip(path, [header, body], level=level)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        out.write(header)
        out.write(body)
    os.replace(tmp, path)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- public entry point


def convert_series(
    series_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    suffix: str = "",
    compress: bool = True,
    compression_level: int = 1,
    spacing_rtol: float = 0.01,
    shear_tolerance: float = 0.1,
) -> list[ConvertedVolume]:
    """Convert the DICOM series in ``series_dir`` to NIfTI volume(s) + sidecar JSON in ``out_dir``.

    ``name`` is the file stem (default: the SeriesInstanceUID); a series split into several volumes
    gets ``_<part>`` appended (``_e2``, ``_o1``...), then ``suffix`` (e.g. nnU-Net's ``_0000``).
    ``spacing_rtol``: allowed relative deviation of each adjacent slice gap from the typical (median) gap.
    ``shear_tolerance``: allowed in-plane displacement of any slice, in pixels. Several series in one
    directory give one volume set each (stem ``name`` is then prefixed to each SeriesInstanceUID).

    Raises :class:`GeometryError` or :class:`InvalidDicomError` naming the series/file when the input
    cannot become a correct volume; nothing is written for a series that fails its checks.
    """
    series_dir, out_dir = Path(series_dir), Path(out_dir)
    slices, skipped = scan_series(series_dir)
    for item in skipped:
        log.warning("skipped %s: %s", item.path, item.reason)
    if not slices:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5]) or "no files"
        raise InvalidDicomError(f"{series_dir}: no image slices to convert ({reasons})")
    by_series: dict[str, list[SliceInfo]] = {}
    for s in slices:
        by_series.setdefault(s.series_instance_uid, []).append(s)

    plans: list[tuple[str, str, _Volume]] = []
    for series_uid in sorted(by_series):
        volumes = _split(by_series[series_uid])
        for volume in volumes:
            _order_and_check(volume, series_uid, spacing_rtol, shear_tolerance)
        if len(by_series) == 1:
            base = name or series_uid
        else:
            base = f"{name}_{series_uid}" if name else series_uid
        for volume in volumes:
            plans.append((series_uid, base, volume))

    out_dir.mkdir(parents=True, exist_ok=True)
    skipped_json = [{"file": str(s.path.absolute()), "reason": s.reason} for s in skipped]
    results = []
    for series_uid, base, volume in plans:
        stem = "_".join(filter(None, [base, volume.suffix])) + suffix
        nifti_path = out_dir / (stem + (".nii.gz" if compress else ".nii"))
        sidecar_path = out_dir / f"{stem}.json"
        data, rescale = _rescale(_read_stored(volume.slices), volume.slices)
        assert volume.affine_ras is not None
        _write_nifti(nifti_path, data, volume.affine_ras, compress, compression_level)
        first = volume.slices[0]
        shape = (first.columns, first.rows, len(volume.slices))
        sop_uids = [s.sop_instance_uid for s in volume.slices]
        _write_json(
            sidecar_path,
            {
                "format": SIDECAR_FORMAT,
                "nifti_file": nifti_path.name,
                "series_instance_uid": series_uid,
                "study_instance_uid": first.study_instance_uid,
                "frame_of_reference_uid": first.frame_of_reference_uid,
                "sop_class_uid": first.sop_class_uid,
                "modality": first.modality,
                "sop_instance_uids": sop_uids,
                "source_files": [str(s.path.absolute()) for s in volume.slices],
                "frame_numbers": [s.frame_number for s in volume.slices],
                "image_positions_patient": [[float(x) for x in s.position] for s in volume.slices],
                "affine": volume.affine_ras.tolist(),
                "shape": list(shape),
                "dtype": str(data.dtype),
                "rows": first.rows,
                "columns": first.columns,
                "image_orientation_patient": [float(x) for x in first.orientation],
                "pixel_spacing": [float(x) for x in first.pixel_spacing],
                "slice_spacing": volume.spacing,
                "voxel_axes": VOXEL_AXES,
                "rescale": rescale,
                "split": volume.split,
                "skipped_files": skipped_json,
            },
        )
        results.append(
            ConvertedVolume(
                nifti_path=nifti_path,
                sidecar_path=sidecar_path,
                series_instance_uid=series_uid,
                shape=shape,
                affine=volume.affine_ras,
                sop_instance_uids=sop_uids,
                dtype=str(data.dtype),
                split=volume.split,
                split_suffix=volume.suffix,
            )
        )
        del data
    return results


def read_sidecar(path: str | Path) -> dict:
    """The sidecar of a converted volume (pass the ``.json`` or the ``.nii[.gz]`` path)."""
    path = Path(path)
    if path.name.endswith(".nii.gz"):
        path = path.with_name(path.name[: -len(".nii.gz")] + ".json")
    elif path.suffix == ".nii":
        path = path.with_suffix(".json")
    return json.loads(path.read_text())


def dicom_frames(
    array: np.ndarray, sidecar: dict, affine: np.ndarray | None = None, atol_mm: float = 1e-3
) -> Iterator[tuple[str, int | None, np.ndarray]]:
    """Put a volume in this module's layout (a mask predicted on the NIfTI) back onto the source frames.

    Yields ``(sop_instance_uid, frame_number, frame)`` for each slice ``k`` of the third axis, ``frame``
    being ``array[:, ::-1, k].T`` (rows x columns, DICOM pixel order) and ``frame_number`` the 1-based
    frame of a multi-frame source (else None). Pass the mask file's ``affine`` to have it checked against
    the sidecar's (a :class:`GeometryError` when they differ by more than ``atol_mm``).
    """
    shape = tuple(sidecar["shape"])
    if tuple(array.shape[:3]) != shape:
        raise GeometryError(
            f"volume of shape {array.shape} does not match {sidecar.get('nifti_file')} (shape {shape})"
        )
    if affine is not None:
        expected = np.asarray(sidecar["affine"], float)
        if not np.allclose(np.asarray(affine, float), expected, atol=atol_mm):
            raise GeometryError(
                f"affine {np.asarray(affine).round(4).tolist()} differs from that of "
                f"{sidecar.get('nifti_file')} ({expected.round(4).tolist()}): not the same voxel grid"
            )
    frames = sidecar.get("frame_numbers") or [None] * shape[2]
    for k, (uid, frame_number) in enumerate(zip(sidecar["sop_instance_uids"], frames)):
        yield uid, frame_number, array[:, ::-1, k].T
