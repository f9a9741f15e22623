"""The source series' geometry, and placing a label map on its grid by patient position, pixel for pixel.

Every source pixel's patient position (ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS)
is turned into RAS, through the inverse NIfTI affine into a voxel index, and the nearest label voxel is
taken: exact re-indexing (plain slicing) when the grids coincide, a nearest-neighbour resample otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from airflow_provider_kaapana.core.dicom.discovery import dicom_files
from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.seg.codes import LabelConfigError
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

log = logging.getLogger(__name__)

SEGMENTATION_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.66."  # SEG, Label Map SEG, surface SEG...
_GRID_TOL = 1e-3  # voxel units: how close to an integer grid counts as "the grids coincide"


@dataclass(frozen=True)
class SourceSeries:
    """The source slices (headers, no pixel data) sorted along the slice normal, and their geometry.

    A series of single-frame instances has one dataset per slice; an enhanced (or legacy-converted)
    multi-frame instance has the same dataset at every slice and ``frame_numbers[k]`` (1-based) says
    which of its frames slice ``k`` is.
    """

    datasets: list[Dataset]
    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm, in sorted order
    row_direction: np.ndarray  # along a row (increasing column), LPS
    column_direction: np.ndarray  # along a column (increasing row), LPS
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int
    frame_numbers: list[int] | None = None  # multi-frame source: the frame of each sorted slice

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def slice_keys(self) -> list[tuple[str, int | None]]:
        """(SOPInstanceUID, frame number or None) of each sorted slice."""
        frames = self.frame_numbers or [None] * len(self.datasets)
        return list(zip(self.sop_instance_uids, frames))


def load_source_series(source_dir: str | Path) -> SourceSeries:
    """Read the source series' headers and sort its instances along the slice normal.

    Refuses (naming the file) multi-frame instances, more than one series, frame of reference or
    orientation, differing matrix size or pixel spacing, and two instances at the same position.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise InvalidDicomError(f"{source_dir}: source series directory does not exist")
    datasets: list[tuple[Path, Dataset]] = []
    for path in dicom_files(source_dir):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            log.debug("skipping non-DICOM file %s", path)
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class.startswith(SEGMENTATION_SOP_CLASS_PREFIX) or (
            "ImagePositionPatient" not in ds
            and "PixelSpacing" not in ds
            and "PerFrameFunctionalGroupsSequence" not in ds
        ):
            log.debug("skipping %s: not a source image (SOP class %s)", path, sop_class or "none")
            continue
        datasets.append((path, ds))
    if not datasets:
        raise InvalidDicomError(f"{source_dir}: no DICOM image files found (only non-images or non-DICOM)")
    multi_frame = [(path, ds) for path, ds in datasets if "PerFrameFunctionalGroupsSequence" in ds]
    if multi_frame:
        return _multi_frame_source(source_dir, datasets, multi_frame)

    first_path, first = datasets[0]
    required = ("SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")
    for path, ds in datasets:
        missing = [k for k in (*required, "PixelSpacing", "Rows", "Columns") if k not in ds]
        if missing:
            raise InvalidDicomError(f"{path}: missing {', '.join(missing)}")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidDicomError(f"{path}: multi-frame source images are not supported")
        for key in ("SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            # they are copied into what we write (SEG references, statistics): a hostile one is refused
            validate_uid(str(ds.get(key, "")), f"{key} of {path}")
    for key in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(key)) for _, ds in datasets}
        if len(values) > 1:
            raise InvalidDicomError(f"{source_dir}: source instances differ in {key}: {sorted(values)}")
    raw_iop0, raw_spacing0 = stored_value(first, _IOP), stored_value(first, _PIXEL_SPACING)
    iop0 = (
        _floats(raw_iop0) if raw_iop0 is not None else np.asarray(first.ImageOrientationPatient, dtype=float)
    )
    spacing0 = (
        _floats(raw_spacing0) if raw_spacing0 is not None else np.asarray(first.PixelSpacing, dtype=float)
    )
    for path, ds in datasets[1:]:
        # the same stored bytes are the same values: no conversion (a third of the checks' time)
        if (raw_iop0 is None or stored_value(ds, _IOP) != raw_iop0) and not np.allclose(
            np.asarray(ds.ImageOrientationPatient, dtype=float), iop0, atol=1e-4
        ):
            raise GeometryError(f"{path}: ImageOrientationPatient differs from {first_path.name}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise GeometryError(f"{path}: matrix size differs from {first_path.name}")
        if (raw_spacing0 is None or stored_value(ds, _PIXEL_SPACING) != raw_spacing0) and not np.allclose(
            np.asarray(ds.PixelSpacing, dtype=float), spacing0, atol=1e-5
        ):
            raise GeometryError(f"{path}: PixelSpacing differs from {first_path.name}")
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along_sorted = along[order]
    if len(along_sorted) > 1 and np.min(np.diff(along_sorted)) < 1e-4:
        k = int(np.argmin(np.diff(along_sorted)))
        raise GeometryError(
            f"{source_dir}: {datasets[order[k]][0].name} and {datasets[order[k + 1]][0].name} lie at the same "
            f"position along the slice normal"
        )
    return SourceSeries(
        datasets=[datasets[i][1] for i in order],
        positions=positions[order],
        row_direction=row_dir,
        column_direction=col_dir,
        pixel_spacing=(float(spacing0[0]), float(spacing0[1])),
        rows=int(first.Rows),
        columns=int(first.Columns),
    )


_IOP, _PIXEL_SPACING = 0x00200037, 0x00280030


def stored_value(ds: Dataset, tag: int) -> bytes | None:
    """The element's value bytes as read from the file while pydicom has not converted it yet, else None."""
    element = ds._dict.get(tag)  # type: ignore[attr-defined]
    return element.value if element is not None and getattr(element, "is_raw", False) else None


def _floats(stored: bytes) -> np.ndarray:
    """A stored DS value (``b"1.0\\0.0 "``) as floats, as pydicom converts it (leaves the element raw for
    the byte comparisons of :func:`stored_value`)."""
    return np.asarray([float(v) for v in stored.split(b"\\")], dtype=float)


def _multi_frame_source(
    source_dir: Path, datasets: list[tuple[Path, Dataset]], multi_frame: list[tuple[Path, Dataset]]
) -> SourceSeries:
    """One enhanced / legacy-converted multi-frame instance as the source: its frames sorted by position.

    The frames are placed from the per-frame and shared functional groups by the NIfTI conversion's own
    reader (:func:`~airflow_provider_kaapana.core.nifti.scan.read_slices`), so the SEG and the NIfTI agree
    on every frame. A SEG references the frames of one multi-frame image: several multi-frame instances, or
    a mix with single-frame ones, are refused.
    """
    from airflow_provider_kaapana.core.nifti.scan import read_slices

    if len(datasets) > 1:
        names = ", ".join(p.name for p, _ in datasets[:5])
        raise InvalidDicomError(
            f"{source_dir}: {len(multi_frame)} multi-frame and {len(datasets) - len(multi_frame)} other image "
            f"instances ({names}): a SEG can reference the frames of one multi-frame source image only"
        )
    path, ds = multi_frame[0]
    slices = read_slices(path)
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise GeometryError(
                f"{path} frame {s.frame_number}: ImageOrientationPatient differs from frame 1"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-5):
            raise GeometryError(f"{path} frame {s.frame_number}: PixelSpacing differs from frame 1")
    if not str(ds.get("FrameOfReferenceUID", "")):
        raise InvalidDicomError(f"{path}: missing FrameOfReferenceUID")
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    positions = np.array([s.position for s in slices])
    along = positions @ np.cross(row_dir, col_dir)
    order = np.argsort(along, kind="stable")
    if len(order) > 1 and np.min(np.diff(along[order])) < 1e-4:
        k = int(np.argmin(np.diff(along[order])))
        raise GeometryError(
            f"{path}: frames {slices[order[k]].frame_number} and {slices[order[k + 1]].frame_number} lie at the "
            "same position along the slice normal"
        )
    return SourceSeries(
        datasets=[ds] * len(slices),
        positions=positions[order],
        row_direction=row_dir,
        column_direction=col_dir,
        pixel_spacing=(float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        rows=first.rows,
        columns=first.columns,
        frame_numbers=[int(slices[i].frame_number or 0) for i in order],
    )


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _slice_mapping(source: SourceSeries, inv_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source slice the NIfTI voxel coordinate of pixel (0, 0), and the steps per column and per row."""
    dr, dc = source.pixel_spacing
    lin, trans = inv_affine[:3, :3], inv_affine[:3, 3]
    bases = (lin @ (_LPS_TO_RAS @ source.positions.T)).T + trans  # (n, 3)
    step_col = lin @ (_LPS_TO_RAS @ (source.row_direction * dc))
    step_row = lin @ (_LPS_TO_RAS @ (source.column_direction * dr))
    return bases, step_col, step_row


def _unit_axis(step: np.ndarray) -> tuple[int, int] | None:
    """(axis, sign) when ``step`` is +-1 along one voxel axis and 0 along the others."""
    axis = int(np.argmax(np.abs(step)))
    sign = 1 if step[axis] > 0 else -1
    expected = np.zeros(3)
    expected[axis] = sign
    return (axis, sign) if np.allclose(step, expected, atol=_GRID_TOL) else None


def uncovered_slices(
    label_shape: Sequence[int], affine_ras: np.ndarray, source: SourceSeries
) -> tuple[list[int], bool]:
    """Source slices (sorted order) with pixels outside the label map's voxel grid, and whether the
    label map lies on the source's pixel grid (its axes along the source rows and columns).

    The label map's grid is a box in voxel space and each source slice maps to it affinely, so a slice
    is covered when its four corner pixels are (up to half a voxel, the nearest-neighbour reach).
    """
    try:
        bases, step_col, step_row = _slice_mapping(source, np.linalg.inv(affine_ras))
    except np.linalg.LinAlgError:
        raise GeometryError("label map affine is singular") from None
    upper = np.asarray(label_shape[:3], dtype=float) - 0.5 + _GRID_TOL
    corners = [r * step_row + c * step_col for r in (0, source.rows - 1) for c in (0, source.columns - 1)]
    missing = [
        k
        for k, base in enumerate(bases)
        if any(np.any(base + d < -0.5 - _GRID_TOL) or np.any(base + d > upper) for d in corners)
    ]
    return missing, _unit_axis(step_col) is not None and _unit_axis(step_row) is not None


def resample_to_source(
    labels: np.ndarray, affine_ras: np.ndarray, source: SourceSeries, out_dtype: type = np.uint16
) -> tuple[np.ndarray, bool]:
    """The label map on the source grid, shape (slices, rows, columns) in sorted source order.

    Returns ``(array, resampled)``; ``resampled`` is False when every source pixel lies on a voxel
    centre (the grids coincide up to axis order, flips, cropping or missing slices: pure re-indexing)
    and True when some slice needed a nearest-neighbour resample. Source pixels outside the label map
    are background (0).
    """
    if labels.ndim != 3:
        raise LabelConfigError(f"label map must be 3-D, got shape {labels.shape}")
    try:
        inv = np.linalg.inv(affine_ras)
    except np.linalg.LinAlgError:
        raise GeometryError("label map affine is singular") from None
    bases, step_col, step_row = _slice_mapping(source, inv)
    n, rows, cols = len(source.datasets), source.rows, source.columns
    out = np.zeros((n, rows, cols), dtype=out_dtype)
    shape = np.asarray(labels.shape)
    col_axis, row_axis = _unit_axis(step_col), _unit_axis(step_row)
    aligned = col_axis is not None and row_axis is not None and col_axis[0] != row_axis[0]
    resampled = False
    col_terms = [np.arange(cols, dtype=np.float32) * np.float32(step_col[a]) for a in range(3)]
    row_terms = [np.arange(rows, dtype=np.float32) * np.float32(step_row[a]) for a in range(3)]
    order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
    flat_labels = labels.ravel(order=order)  # a view for contiguous arrays
    strides = (1, shape[0], shape[0] * shape[1]) if order == "F" else (shape[1] * shape[2], shape[2], 1)
    for k in range(n):
        base = bases[k]
        if aligned and np.allclose(base, np.rint(base), atol=_GRID_TOL):
            # Grids coincide on this slice: a (possibly flipped / transposed) 2-D slab of the label map.
            start = np.rint(base).astype(int)
            (ca, cs), (ra, rs) = col_axis, row_axis  # type: ignore[misc]
            slice_axis = 3 - ca - ra
            s = start[slice_axis]
            if 0 <= s < shape[slice_axis]:
                r_range = _clipped_progression(start[ra], rs, rows, shape[ra])
                c_range = _clipped_progression(start[ca], cs, cols, shape[ca])
                if r_range is not None and c_range is not None:
                    index: list[int | slice] = [slice(None)] * 3
                    index[slice_axis] = s
                    index[ra], index[ca] = r_range[1], c_range[1]
                    plane = labels[tuple(index)]  # a view: remaining axes in increasing order
                    if ca < ra:
                        plane = plane.T  # -> (source row, source column)
                    out[k, r_range[0], c_range[0]] = plane
            continue
        # General case: nearest voxel of every source pixel (float32 is ample for voxel indices).
        resampled = True
        inside = np.ones((rows, cols), dtype=bool)
        flat_index = np.zeros((rows, cols), dtype=np.intp)
        for axis in range(3):
            coord = np.rint(
                (np.float32(base[axis]) + row_terms[axis][:, None]) + col_terms[axis][None, :]
            ).astype(np.intp)
            inside &= (coord >= 0) & (coord < shape[axis])
            flat_index += coord * strides[axis]
        if inside.any():
            out[k] = np.where(inside, flat_labels[np.where(inside, flat_index, 0)], 0)
    return out, resampled


def _clipped_progression(start: int, step: int, count: int, size: int) -> tuple[slice, slice] | None:
    """Source positions ``0..count-1`` map to voxels ``start + step * n``; the in-bounds part as
    (slice of source positions, slice of voxel indices), or ``None`` when none is inside."""
    n = np.arange(count)
    voxels = start + step * n
    ok = np.nonzero((voxels >= 0) & (voxels < size))[0]
    if ok.size == 0:
        return None
    first, last = int(ok[0]), int(ok[-1])
    v_first, v_last = int(voxels[first]), int(voxels[last])
    stop = v_last + step
    return slice(first, last + 1), slice(v_first, stop if stop >= 0 else None, step)


def _lattice_map(side_affine: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(signed permutation, whole-voxel shift)`` taking label-map voxels to sidecar-grid voxels when
    both grids share their voxel centres (within 1e-3 voxel), axes possibly flipped or permuted; else None."""
    m = np.linalg.inv(side_affine) @ affine
    rotation, shift = m[:3, :3], m[:3, 3]
    if not np.allclose(rotation, np.round(rotation), atol=1e-4) or not np.allclose(
        shift, np.round(shift), atol=1e-3
    ):
        return None
    signed = np.round(rotation)
    if not (np.abs(signed).sum(axis=0) == 1).all() or not (np.abs(signed).sum(axis=1) == 1).all():
        return None
    return signed, np.round(shift)


def check_sidecar(
    sidecar_path: Path, label_shape: Sequence[int], affine: np.ndarray, source: SourceSeries
) -> None:
    """Cross-check NiftiConvert's slice -> SOPInstanceUID list against the geometric mapping."""
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, ValueError) as exc:
        raise LabelConfigError(f"{sidecar_path}: cannot read sidecar: {exc}") from exc
    series_uid = sidecar.get("series_instance_uid")
    if series_uid and series_uid != source.series_instance_uid:
        raise GeometryError(
            f"{sidecar_path}: sidecar is for series {series_uid}, source is {source.series_instance_uid}"
        )
    for_uid = sidecar.get("frame_of_reference_uid")
    if for_uid and for_uid != str(source.datasets[0].FrameOfReferenceUID):
        raise GeometryError(f"{sidecar_path}: sidecar frame of reference {for_uid} differs from the source")
    sop_uids = sidecar.get("sop_instance_uids")
    side_affine = sidecar.get("affine")
    side_shape = sidecar.get("shape")
    if side_affine is not None:
        # the sidecar describes the image the label map was predicted on: a label map on another grid
        # is not what it claims to be (a silent resample could shift every mask); the same grid with
        # flipped or permuted axes maps voxel for voxel and is taken
        side = np.asarray(side_affine, dtype=float)
        lattice = _lattice_map(side, affine)
        if lattice is not None and side_shape:
            signed, shift = lattice
            permuted = [int(n) for n in np.abs(signed) @ np.asarray(label_shape[:3], dtype=float)]
            if permuted != list(side_shape)[:3]:
                raise GeometryError(
                    f"{sidecar_path}: sidecar shape {side_shape} differs from the label map {list(label_shape)}"
                )
            corners = np.array(
                [
                    [i, j, k]
                    for i in (0, label_shape[0] - 1)
                    for j in (0, label_shape[1] - 1)
                    for k in (0, label_shape[2] - 1)
                ],
                dtype=float,
            )
            mapped = corners @ signed.T + shift
            if not ((mapped >= 0) & (mapped <= np.asarray(side_shape[:3], dtype=float) - 1)).all():
                lattice = None  # the same lattice, shifted off the image
        elif lattice is not None and not np.allclose(side, affine, atol=1e-3):
            lattice = None  # without the sidecar's shape: only the very same grid
        if lattice is None:
            worst = float(np.max(np.abs(side - affine)))
            raise GeometryError(
                f"{sidecar_path}: the label map's affine differs from its sidecar's by up to {worst:.4g} mm "
                f"(label map {np.round(affine, 4).tolist()}, sidecar {np.round(side, 4).tolist()}); "
                "refusing to resample it"
            )
    if not sop_uids or side_affine is None:
        return  # nothing to compare slice by slice
    frames = sidecar.get("frame_numbers") or [None] * len(sop_uids)
    listed = list(zip(sop_uids, frames))
    unlisted = [key for key in source.slice_keys if key not in set(listed)]
    if unlisted:
        log.warning(
            "%s: %d source slices are not in the sidecar (e.g. %s)",
            sidecar_path,
            len(unlisted),
            unlisted[0],
        )
    bases, _, _ = _slice_mapping(source, np.linalg.inv(np.asarray(side_affine, dtype=float)))
    # the slice axis is the third voxel axis of the sidecar's grid by its contract
    index_of = {key: k for k, key in enumerate(listed)}
    for key, base in zip(source.slice_keys, bases):
        if key in index_of and abs(base[2] - index_of[key]) > 0.5:
            what = f"instance {key[0]}" + (f" frame {key[1]}" if key[1] is not None else "")
            raise GeometryError(
                f"{sidecar_path}: {what} maps to slice {base[2]:.2f} by geometry but the sidecar "
                f"lists it at {index_of[key]}"
            )


def source_series_instance_uid(source_dir: str | Path) -> str:
    """SeriesInstanceUID of the first DICOM file in ``source_dir`` (sorted by name)."""
    for path in dicom_files(source_dir):
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"]
            )
        except pydicom.errors.InvalidDicomError:
            continue
        if "SeriesInstanceUID" in ds and not str(ds.get("SOPClassUID", "")).startswith(
            SEGMENTATION_SOP_CLASS_PREFIX
        ):
            return str(ds.SeriesInstanceUID)
    raise InvalidDicomError(f"{source_dir}: no DICOM file with a SeriesInstanceUID")
