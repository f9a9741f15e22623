"""Reading a source series (rescaled intensities, LPS geometry) and a SEG or NIfTI label map onto its grid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from scipy import ndimage

from airflow_provider_kaapana.core.seg.geometry import SourceSeries, load_source_series, resample_to_source
from airflow_provider_kaapana.core.seg.labels import load_label_config, load_label_map
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

SEGMENTATION_STORAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage (BINARY, FRACTIONAL)
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage (LABELMAP)
}
_UNITS = {"CT": "HU"}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array axes (slice, row, column) and the 4x4 affine from (column, row, slice) to LPS mm."""

    shape: tuple[int, int, int]
    affine_lps: np.ndarray

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Step lengths along (column, row, slice), the DICOM order of ``voxel_spacing_mm``."""
        return tuple(float(x) for x in np.linalg.norm(self.affine_lps[:3, :3], axis=0))  # type: ignore[return-value]

    def index_to_lps(self, index_krc: np.ndarray) -> np.ndarray:
        """(n, 3) array indices (slice, row, column) -> (n, 3) LPS mm."""
        crs = np.asarray(index_krc, dtype=float)[:, ::-1]
        return crs @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]


@dataclass(frozen=True)
class SourceImage:
    """The source series as a volume (slice, row, column) in its rescaled unit, with its geometry."""

    series: SourceSeries
    grid: Grid
    pixels: np.ndarray  # float32
    modality: str
    intensity_unit: str


@dataclass(frozen=True)
class SegmentInfo:
    """One segment: its number (SEG) or label value (label map), name and SNOMED CT property type."""

    segment_number: int
    label: str
    code: dict[str, str] | None


@dataclass(frozen=True)
class SegmentMask:
    """One segment's mask as its bounding box on the grid and the boolean array inside it.

    ``box`` is None for an empty segment. Keeping only the box keeps a 5-label CT at a few crops
    instead of five full-size arrays.
    """

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice] | None
    crop: np.ndarray | None

    @classmethod
    def from_full(cls, mask: np.ndarray) -> SegmentMask:
        boxes = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
        box = boxes[0] if boxes and boxes[0] is not None else None
        return cls(mask.shape, box, None if box is None else np.ascontiguousarray(mask[box]))  # type: ignore[arg-type]

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> SegmentMask:
        return cls(shape, None, None)

    def within(self, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The mask inside ``box`` (which must contain this mask's box)."""
        out = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        if self.box is not None:
            out[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(self.box, box))] = self.crop
        return out

    def full(self) -> np.ndarray:
        return self.within((slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])))


@dataclass
class Segmentation:
    """Segments and their masks on a grid, by segment number / label value."""

    grid: Grid
    segments: list[SegmentInfo]
    masks: dict[int, SegmentMask]
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    resampled: bool = False
    algorithm: dict[str, str] | None = None


def source_grid(series: SourceSeries) -> Grid:
    """The grid of a sorted single-frame series; refuses uneven slice spacing (the affine would lie)."""
    dr, dc = series.pixel_spacing
    n = len(series.datasets)
    normal = np.cross(series.row_direction, series.column_direction)
    if n > 1:
        steps = np.diff(series.positions, axis=0)
        step = steps.mean(axis=0)
        if not np.allclose(steps, step, atol=1e-3 * max(1.0, float(np.linalg.norm(step)))):
            raise GeometryError(f"series {series.series_instance_uid}: slices are not evenly spaced")
    else:
        step = normal * float(series.datasets[0].get("SliceThickness", 1.0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = series.row_direction * dc
    affine[:3, 1] = series.column_direction * dr
    affine[:3, 2] = step
    affine[:3, 3] = series.positions[0]
    return Grid((n, series.rows, series.columns), affine)


def load_source_image(series_dir: str | Path) -> SourceImage:
    """The series in ``series_dir`` as a rescaled float32 volume (CT in HU) on its own grid."""
    series = _single_frame(load_source_series(series_dir))
    grid = source_grid(series)
    pixels = np.empty(grid.shape, dtype=np.float32)
    for k, header in enumerate(series.datasets):
        # the headers are already read: decode only the pixel data (pydicom.pixels reads just what it needs)
        pixels[k] = pixel_array(header.filename)
        slope = float(header.get("RescaleSlope", 1) or 1)
        intercept = float(header.get("RescaleIntercept", 0) or 0)
        if slope != 1.0:
            pixels[k] *= np.float32(slope)
        if intercept != 0.0:
            pixels[k] += np.float32(intercept)
    modality = str(series.datasets[0].get("Modality", ""))
    return SourceImage(series, grid, pixels, modality, _UNITS.get(modality, "1"))


def _code_dict(code: Any) -> dict[str, str]:
    return {"scheme": str(code.scheme_designator), "value": str(code.value), "meaning": str(code.meaning)}


def _is_seg(path: Path) -> bool:
    if path.name.endswith((".nii", ".nii.gz")):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (pydicom.errors.InvalidDicomError, OSError):
        return False
    return str(ds.get("SOPClassUID", "")) in SEGMENTATION_STORAGES


def load_segmentation(
    path: str | Path,
    source: SourceSeries | None = None,
    label_config: str | Path | None = None,
) -> Segmentation:
    """A DICOM SEG (needs ``source``) or a NIfTI label map as masks on the source grid.

    A label map without ``source`` stays on its own grid (its RAS affine turned to LPS). ``label_config``
    (nnU-Net ``dataset.json`` or rich config) names a label map's values and gives their codes.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidDicomError(f"{path}: segmentation file does not exist")
    if _is_seg(path):
        if source is None:
            raise GeometryError(f"{path}: a DICOM SEG needs its source series to be measured")
        return _load_seg(path, source)
    return _load_label_map(path, source, label_config)


def _single_frame(series: SourceSeries) -> SourceSeries:
    """Refuse a multi-frame source: these measurements read one instance per slice."""
    if series.frame_numbers is not None:
        raise InvalidDicomError(
            f"series {series.series_instance_uid} is one multi-frame instance: measuring on multi-frame "
            "sources is not supported (convert it to NIfTI and measure the label map on that grid)"
        )
    return series


def _load_seg(path: Path, source: SourceSeries) -> Segmentation:
    import highdicom as hd

    _single_frame(source)

    seg = hd.seg.segread(path)
    referenced = {str(uid) for _study, _series, uid in seg.get_source_image_uids()}
    if not referenced & set(source.sop_instance_uids):
        # highdicom would decode a SEG of other images as empty frames: refuse instead of measuring nothing
        raise GeometryError(
            f"{path}: SEG {seg.SOPInstanceUID} references none of the instances of series "
            f"{source.series_instance_uid} (it was made on another series)"
        )
    numbers = list(seg.segment_numbers)
    frames = seg.get_pixels_by_source_instance(
        source.sop_instance_uids,
        segment_numbers=numbers,
        combine_segments=False,
        assert_missing_frames_are_empty=True,
    )  # (slices, rows, columns, segments)
    # FRACTIONAL values come rescaled to 0..1: a voxel belongs to the segment from a fraction of 0.5
    masks = {n: SegmentMask.from_full(frames[..., i] >= 0.5) for i, n in enumerate(numbers)}
    segments = []
    for n in numbers:
        desc = seg.get_segment_description(n)
        segments.append(SegmentInfo(n, str(desc.segment_label), _code_dict(desc.segmented_property_type)))
    algorithm = None
    desc = seg.get_segment_description(numbers[0]) if numbers else None
    if desc is not None and desc.algorithm_identification is not None:
        ident = desc.algorithm_identification[0]
        algorithm = {"name": str(ident.AlgorithmName), "version": str(ident.AlgorithmVersion)}
    return Segmentation(
        grid=source_grid(source),
        segments=segments,
        masks=masks,
        sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        algorithm=algorithm,
    )


def _load_label_map(path: Path, source: SourceSeries | None, label_config: str | Path | None) -> Segmentation:
    data, affine_ras = load_label_map(path)
    if source is not None:
        labels, resampled = resample_to_source(data, affine_ras, source)
        grid = source_grid(source)
    else:
        # voxel axes (i, j, k) -> array (k, j, i); RAS -> LPS
        labels, resampled = np.ascontiguousarray(data.transpose(2, 1, 0)), False
        grid = Grid(labels.shape, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras)  # type: ignore[arg-type]
    specs: Mapping[int, Any] = load_label_config(label_config).segments if label_config else {}
    boxes = ndimage.find_objects(labels)  # one pass: the box of every label value present
    present = {v: box for v, box in enumerate(boxes, start=1) if box is not None}
    segments, masks = [], {}
    for v in sorted(set(specs) | set(present)):
        spec = specs.get(v)
        name = spec.name if spec is not None else f"label {v}"
        code = _code_dict(spec.property_type) if spec is not None else None
        segments.append(SegmentInfo(v, name, code))
        box = present.get(v)
        masks[v] = SegmentMask(grid.shape, box, None if box is None else labels[box] == v)
    return Segmentation(grid=grid, segments=segments, masks=masks, resampled=resampled)


def segmentation_file(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the one DICOM SEG in the folder (a received SEG series)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InvalidDicomError(f"{path}: no such segmentation file or folder")
    found = sorted(p for p in path.rglob("*") if p.is_file() and _is_seg(p))
    if len(found) != 1:
        what = (
            "no DICOM SEG"
            if not found
            else f"{len(found)} DICOM SEGs ({', '.join(p.name for p in found[:3])})"
        )
        raise InvalidDicomError(f"{path}: {what}; expected exactly one")
    return found[0]


def referenced_source_series(seg_path: str | Path) -> dict[str, str]:
    """``{"study_instance_uid", "series_instance_uid"}`` of the image series a DICOM SEG was made on."""
    path = segmentation_file(seg_path)
    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "ReferencedSeriesSequence"]
    )
    refs = ds.get("ReferencedSeriesSequence") or []
    uids = {str(item.SeriesInstanceUID) for item in refs if item.get("SeriesInstanceUID")}
    if len(uids) != 1:
        raise InvalidDicomError(
            f"{path}: the SEG references {len(uids)} source series (Referenced Series Sequence); expected one"
        )
    return {"study_instance_uid": str(ds.StudyInstanceUID), "series_instance_uid": uids.pop()}
