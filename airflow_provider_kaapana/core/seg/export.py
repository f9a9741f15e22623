"""NIfTI label map -> standard DICOM Segmentation (highdicom), aligned pixel for pixel to its source series.

The label map is put back onto the *source DICOM grid by geometry*: every source pixel's patient position
(from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, LPS) is turned into RAS, through the
inverse NIfTI affine into a voxel index, and the nearest label voxel is taken. When the grids coincide this
is exact (and done by plain slicing); when they differ it is a nearest-neighbour resample. A NiftiConvert
sidecar (``<stem>.json`` with ``sop_instance_uids``), when present, is only a cross-check of that mapping.

Policies (see docs/operators/dicom_seg_export.rst):

* segment codes come from the label config, else from the curated table ``data/snomed_structures.json``,
  else the generic pair category *Tissue* / type *Tissue* (SCT 85756007) — never an invented code;
* an empty label is described without frames (``empty_label_policy="describe"``) or left out (``"omit"``);
* a label map without any labelled voxel on the source grid raises :class:`NoFindingsError`;
* the SEG's Series and SOP Instance UIDs are derived from (source series UID, model id, configuration), so
  a re-run produces the same UIDs and a PACS replaces the object instead of keeping two.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from airflow_provider_kaapana import __version__
from airflow_provider_kaapana.exceptions import (
    GeometryError,
    InvalidDicomError,
    KaapanaError,
    NoFindingsError,
)

log = logging.getLogger(__name__)

SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")
EMPTY_LABEL_POLICIES = ("describe", "omit")
UID_NAMESPACE = "kaapana-dicom-seg"
SEGMENTATION_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.66."  # SEG, Label Map SEG, surface SEG...
# Distinct, colour-blind-friendly defaults (Okabe-Ito, then a few more) for segments without a colour.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (128, 128, 128),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 255),
)
_CS_UNSAFE = re.compile(r"[^A-Z0-9 _]")
_GRID_TOL = 1e-3  # voxel units: how close to an integer grid counts as "the grids coincide"


class LabelConfigError(KaapanaError, ValueError):
    """A label config or label map cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class AlgorithmInfo:
    """Algorithm identification written for AUTOMATIC segments.

    ``family`` is a keyword of DICOM CID 7162 (``ArtificialIntelligence``, ``DeformableModels``...).
    """

    name: str = "nnU-Net"
    version: str = "2"
    family: str = "ArtificialIntelligence"

    def family_code(self) -> Code:
        from pydicom.sr.codedict import codes

        try:
            return getattr(codes.cid7162, self.family)
        except AttributeError:
            raise LabelConfigError(
                f"algorithm family {self.family!r} is not a keyword of DICOM CID 7162 "
                f"(e.g. 'ArtificialIntelligence')"
            ) from None


@dataclass(frozen=True)
class SegmentSpec:
    """How one label value of the map is described in the SEG."""

    label_value: int
    name: str
    category: Code
    property_type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    color_rgb: tuple[int, int, int] | None = None
    coded_from: str = "config"  # "config", "table" or "fallback": where the codes came from


@dataclass(frozen=True)
class ExportedSegment:
    segment_number: int
    label_value: int
    label: str
    frames: int  # frames holding this segment (0: described without frames)
    coded_from: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "segment_number": self.segment_number,
            "label_value": self.label_value,
            "label": self.label,
            "frames": self.frames,
            "coded_from": self.coded_from,
        }


@dataclass(frozen=True)
class SegExportResult:
    """What :func:`export_seg` wrote."""

    seg_path: Path
    series_instance_uid: str  # of the source series
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    segmentation_type: str
    number_of_frames: int
    segments: list[ExportedSegment]
    omitted_labels: list[str] = field(default_factory=list)  # empty labels left out (policy "omit")
    resampled: bool = False  # True when the label map's grid differs from the source grid

    def as_dict(self) -> dict[str, Any]:
        return {
            "seg_path": str(self.seg_path),
            "series_instance_uid": self.series_instance_uid,
            "seg_series_instance_uid": self.seg_series_instance_uid,
            "seg_sop_instance_uid": self.seg_sop_instance_uid,
            "segmentation_type": self.segmentation_type,
            "number_of_frames": self.number_of_frames,
            "segments": [s.as_dict() for s in self.segments],
            "omitted_labels": list(self.omitted_labels),
            "resampled": self.resampled,
        }


# --------------------------------------------------------------------------------------------------
# codes and label configs


def _code(entry: Mapping[str, Any], where: str) -> Code:
    try:
        return Code(
            value=str(entry["value"]),
            scheme_designator=str(entry.get("scheme", entry.get("scheme_designator", "SCT"))),
            meaning=str(entry["meaning"]),
        )
    except (KeyError, TypeError):
        raise LabelConfigError(
            f"{where}: a code needs 'value', 'meaning' and optionally 'scheme' (default SCT), got {entry!r}"
        ) from None


def normalise_structure_name(name: str) -> str:
    """``"Kidney Left"`` / ``"kidney-left"`` -> ``"kidney_left"`` (the table's key style)."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@lru_cache(maxsize=1)
def _structure_table() -> dict[str, Any]:
    text = resources.files("airflow_provider_kaapana").joinpath("data/snomed_structures.json").read_text()
    return json.loads(text)


def fallback_codes() -> tuple[Code, Code]:
    """The documented generic pair for names the table does not know: SCT 85756007 Tissue / Tissue."""
    fb = _structure_table()["fallback"]
    return _code(fb["category"], "fallback"), _code(fb["type"], "fallback")


def lookup_structure(name: str) -> tuple[Code, Code, Code | None] | None:
    """(category, type, modifier) from the curated SNOMED CT table, or ``None`` for an unknown name."""
    entry = _structure_table()["structures"].get(normalise_structure_name(name))
    if entry is None:
        return None
    modifier = _code(entry["modifier"], name) if "modifier" in entry else None
    return _code(entry["category"], name), _code(entry["type"], name), modifier


def known_structures() -> list[str]:
    return sorted(_structure_table()["structures"])


def segment_spec_for_name(label_value: int, name: str, **extra: Any) -> SegmentSpec:
    """A segment described from its name alone: the curated table, else the generic fallback."""
    found = lookup_structure(name)
    if found is not None:
        category, property_type, modifier = found
        return SegmentSpec(label_value, name, category, property_type, modifier, coded_from="table", **extra)
    category, property_type = fallback_codes()
    return SegmentSpec(label_value, name, category, property_type, coded_from="fallback", **extra)


def _as_label_value(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise LabelConfigError(
            f"{where}: label value {raw!r} is not an integer (region-based labels are not supported)"
        )
    try:
        value = int(raw)
    except ValueError:
        raise LabelConfigError(f"{where}: label value {raw!r} is not an integer") from None
    if value < 0 or value > 65535:
        raise LabelConfigError(f"{where}: label value {value} is outside 0..65535")
    return value


def _rgb(raw: Any, where: str) -> tuple[int, int, int]:
    if not (isinstance(raw, (list, tuple)) and len(raw) == 3 and all(isinstance(v, int) for v in raw)):
        raise LabelConfigError(f"{where}: colour must be [R, G, B] with integers 0..255, got {raw!r}")
    if not all(0 <= v <= 255 for v in raw):
        raise LabelConfigError(f"{where}: colour values must be 0..255, got {raw!r}")
    return (raw[0], raw[1], raw[2])


def _rich_segment(item: Mapping[str, Any], where: str) -> SegmentSpec:
    if "label_value" not in item or "name" not in item:
        raise LabelConfigError(f"{where}: each segment needs 'label_value' and 'name'")
    value = _as_label_value(item["label_value"], where)
    name = str(item["name"])
    extra: dict[str, Any] = {}
    if "color" in item:
        extra["color_rgb"] = _rgb(item["color"], where)
    if "anatomic_region" in item:
        extra["anatomic_region"] = _code(item["anatomic_region"], where)
    if "category" in item or "type" in item:
        if not ("category" in item and "type" in item):
            raise LabelConfigError(f"{where}: give both 'category' and 'type' codes, or neither")
        modifier = _code(item["modifier"], where) if "modifier" in item else None
        return SegmentSpec(
            value,
            name,
            _code(item["category"], where),
            _code(item["type"], where),
            modifier,
            coded_from="config",
            **extra,
        )
    base = segment_spec_for_name(value, str(item.get("structure", name)), **extra)
    return SegmentSpec(
        value,
        name,
        base.category,
        base.property_type,
        base.type_modifier,
        base.anatomic_region,
        base.color_rgb,
        base.coded_from,
    )


@dataclass(frozen=True)
class LabelConfig:
    """Segments by label value, plus an optional algorithm identification from the config file."""

    segments: dict[int, SegmentSpec]
    algorithm: AlgorithmInfo | None = None


def parse_label_config(data: Mapping[str, Any], source: str = "<label config>") -> LabelConfig:
    """Read an nnU-Net ``dataset.json`` (v2 ``labels``: name -> value; v1: value -> name) or a rich config.

    The predict step's ``labels.json`` (the bare ``labels`` mapping of the model) is read like a dataset.json.

    Rich config: ``{"segments": [{"label_value": 1, "name": "liver", "category": {...}, "type": {...},
    "modifier": {...}, "anatomic_region": {...}, "color": [R, G, B], "structure": "liver"}, ...],
    "algorithm": {"name": ..., "version": ..., "family": ...}}``; codes are ``{"value", "scheme",
    "meaning"}``. Label value 0 is background and never a segment.
    """
    segments: dict[int, SegmentSpec] = {}
    algorithm = None
    if "segments" in data:
        items = data["segments"]
        if not isinstance(items, list):
            raise LabelConfigError(f"{source}: 'segments' must be a list")
        for i, item in enumerate(items):
            spec = _rich_segment(item, f"{source} segments[{i}]")
            if spec.label_value in segments:
                raise LabelConfigError(f"{source}: label value {spec.label_value} is described twice")
            if spec.label_value != 0:
                segments[spec.label_value] = spec
        if "algorithm" in data:
            alg = data["algorithm"]
            algorithm = AlgorithmInfo(
                name=str(alg.get("name", "nnU-Net")),
                version=str(alg.get("version", "2")),
                family=str(alg.get("family", "ArtificialIntelligence")),
            )
    elif "labels" in data or (
        data and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values())
    ):
        # a dataset.json, or the bare ``labels.json`` the predict step writes beside its label maps
        labels = data.get("labels", data)
        if not isinstance(labels, Mapping):
            raise LabelConfigError(f"{source}: 'labels' must be a mapping")
        v1_style = all(str(k).strip().isdigit() for k in labels)
        for key, raw in labels.items():
            name, value_raw = (str(raw), key) if v1_style else (str(key), raw)
            value = _as_label_value(value_raw, f"{source} labels[{key!r}]")
            if value == 0:
                continue
            if value in segments:
                raise LabelConfigError(f"{source}: label value {value} is named twice")
            segments[value] = segment_spec_for_name(value, name)
    else:
        raise LabelConfigError(f"{source}: neither 'labels' (nnU-Net dataset.json) nor 'segments' found")
    return LabelConfig(segments=dict(sorted(segments.items())), algorithm=algorithm)


def load_label_config(path: str | Path) -> LabelConfig:
    """:func:`parse_label_config` of a JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabelConfigError(f"{path}: cannot read label config: {exc}") from exc
    if not isinstance(data, Mapping):
        raise LabelConfigError(f"{path}: label config must be a JSON object")
    return parse_label_config(data, str(path))


# --------------------------------------------------------------------------------------------------
# source series and geometry


@dataclass(frozen=True)
class SourceSeries:
    """Single-frame source instances (no pixel data) sorted along the slice normal, and their geometry."""

    datasets: list[Dataset]
    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm, in sorted order
    row_direction: np.ndarray  # along a row (increasing column), LPS
    column_direction: np.ndarray  # along a column (increasing row), LPS
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    columns: int

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


def load_source_series(source_dir: str | Path) -> SourceSeries:
    """Read the source series' headers and sort its instances along the slice normal.

    Refuses (naming the file) multi-frame instances, more than one series, frame of reference or
    orientation, differing matrix size or pixel spacing, and two instances at the same position.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise InvalidDicomError(f"{source_dir}: source series directory does not exist")
    datasets: list[tuple[Path, Dataset]] = []
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            log.debug("skipping non-DICOM file %s", path)
            continue
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class.startswith(SEGMENTATION_SOP_CLASS_PREFIX) or (
            "ImagePositionPatient" not in ds and "PixelSpacing" not in ds
        ):
            log.debug("skipping %s: not a source image (SOP class %s)", path, sop_class or "none")
            continue
        datasets.append((path, ds))
    if not datasets:
        raise InvalidDicomError(f"{source_dir}: no DICOM files found")

    first_path, first = datasets[0]
    required = ("SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")
    for path, ds in datasets:
        missing = [k for k in (*required, "PixelSpacing", "Rows", "Columns") if k not in ds]
        if missing:
            raise InvalidDicomError(f"{path}: missing {', '.join(missing)}")
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidDicomError(f"{path}: multi-frame source images are not supported")
    for key in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(key)) for _, ds in datasets}
        if len(values) > 1:
            raise InvalidDicomError(f"{source_dir}: source instances differ in {key}: {sorted(values)}")
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    spacing0 = np.asarray(first.PixelSpacing, dtype=float)
    for path, ds in datasets[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop0, atol=1e-4):
            raise GeometryError(f"{path}: ImageOrientationPatient differs from {first_path.name}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise GeometryError(f"{path}: matrix size differs from {first_path.name}")
        if not np.allclose(np.asarray(ds.PixelSpacing, dtype=float), spacing0, atol=1e-5):
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


def load_label_map(label_map_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(integer label array with voxel axes as stored, RAS affine) of a NIfTI label map."""
    import nibabel as nib

    path = Path(label_map_path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for unreadable files
        raise LabelConfigError(f"{path}: cannot read NIfTI label map: {exc}") from exc
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LabelConfigError(f"{path}: label map must be 3-D, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise LabelConfigError(f"{path}: label map holds non-integer values")
        data = rounded
    if data.size and (data.min() < 0 or data.max() > 65535):
        raise LabelConfigError(f"{path}: label values must lie in 0..65535")
    if data.dtype not in (np.uint8, np.uint16):
        data = data.astype(np.uint8 if data.max(initial=0) <= 255 else np.uint16)
    return data, np.asarray(img.affine, dtype=float)


def _check_sidecar(
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
    if not sop_uids or side_affine is None or not np.allclose(np.asarray(side_affine), affine, atol=1e-3):
        return  # a different grid (e.g. resampled by the model): nothing to compare slice by slice
    side_shape = sidecar.get("shape")
    if side_shape and list(side_shape)[:3] != list(label_shape):
        raise GeometryError(
            f"{sidecar_path}: sidecar shape {side_shape} differs from the label map {list(label_shape)}"
        )
    unlisted = [uid for uid in source.sop_instance_uids if uid not in set(sop_uids)]
    if unlisted:
        log.warning(
            "%s: %d source instances are not in the sidecar (e.g. %s)",
            sidecar_path,
            len(unlisted),
            unlisted[0],
        )
    bases, _, _ = _slice_mapping(source, np.linalg.inv(affine))
    # the slice axis is the third voxel axis by the sidecar's contract
    index_of = {uid: k for k, uid in enumerate(sop_uids)}
    for ds, base in zip(source.datasets, bases):
        uid = str(ds.SOPInstanceUID)
        if uid in index_of and abs(base[2] - index_of[uid]) > 0.5:
            raise GeometryError(
                f"{sidecar_path}: instance {uid} maps to slice {base[2]:.2f} by geometry but the sidecar "
                f"lists it at {index_of[uid]}"
            )


# --------------------------------------------------------------------------------------------------
# export


def seg_uids(source_series_instance_uid: str, model_id: str, configuration: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG: the same for the same source, model and configuration."""
    parts = [UID_NAMESPACE, source_series_instance_uid, model_id, configuration]
    return generate_uid(entropy_srcs=[*parts, "series"]), generate_uid(entropy_srcs=[*parts, "instance"])


def _content_label(text: str) -> str:
    label = _CS_UNSAFE.sub("_", text.upper())[:16].strip()
    return label or "SEGMENTATION"


def _segment_description(number: int, spec: SegmentSpec, algorithm: AlgorithmInfo):
    import highdicom as hd

    rgb = spec.color_rgb or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
    algorithm_identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=algorithm.family_code(), version=algorithm.version
    )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.name[:64],
        segmented_property_category=spec.category,
        segmented_property_type=spec.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification,
        anatomic_regions=[spec.anatomic_region] if spec.anatomic_region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    if spec.type_modifier is not None:
        modifier = hd.sr.CodedConcept(
            value=spec.type_modifier.value,
            scheme_designator=spec.type_modifier.scheme_designator,
            meaning=spec.type_modifier.meaning,
        )
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            modifier
        ]
    return description


def _write_atomically(dataset: Dataset, out_path: Path) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)


def export_seg(
    label_map_path: str | Path,
    source_dir: str | Path,
    label_config: str | Path | LabelConfig | Mapping[str, Any],
    out_path: str | Path,
    *,
    segmentation_type: str = "BINARY",
    algorithm: AlgorithmInfo | None = None,
    empty_label_policy: str = "describe",
    model_id: str = "nnunet",
    configuration: str = "default",
    sidecar_path: str | Path | None = None,
    series_number: int = 901,
    series_description: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    max_fractional_value: int = 255,
    expected_series_instance_uid: str | None = None,
) -> SegExportResult:
    """Write ``out_path``: a DICOM SEG of ``label_map_path`` referencing the series in ``source_dir``.

    ``label_config`` is a path to an nnU-Net ``dataset.json`` or a rich config (see
    :func:`parse_label_config`), or an already parsed :class:`LabelConfig` / mapping. ``algorithm``
    defaults to the config's ``algorithm`` entry, else ``AlgorithmInfo()`` (nnU-Net 2, AI).
    ``sidecar_path`` defaults to ``<label map stem>.json`` beside the label map when that file exists
    and lists ``sop_instance_uids``. Label values present in the map but missing from the config are
    exported with the fallback codes and a warning. Raises :class:`NoFindingsError` when no labelled
    pixel lands on the source grid (nothing is written then). ``expected_series_instance_uid``, when
    given, must be the source series' UID (guards against pairing a label map with the wrong series).
    """
    segmentation_type = segmentation_type.upper()
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}")
    if empty_label_policy not in EMPTY_LABEL_POLICIES:
        raise ValueError(
            f"empty_label_policy must be one of {EMPTY_LABEL_POLICIES}, got {empty_label_policy!r}"
        )
    import highdicom as hd

    label_map_path, out_path = Path(label_map_path), Path(out_path)
    if isinstance(label_config, LabelConfig):
        config = label_config
    elif isinstance(label_config, Mapping):
        config = parse_label_config(label_config)
    else:
        config = load_label_config(label_config)
    algorithm = algorithm or config.algorithm or AlgorithmInfo()

    source = load_source_series(source_dir)
    if expected_series_instance_uid and expected_series_instance_uid != source.series_instance_uid:
        raise InvalidDicomError(
            f"{source_dir}: holds series {source.series_instance_uid}, expected {expected_series_instance_uid}"
        )
    labels, affine = load_label_map(label_map_path)
    if sidecar_path is None:
        candidate = label_map_path.with_name(_nifti_stem(label_map_path) + ".json")
        sidecar_path = candidate if candidate.is_file() else None
    if sidecar_path is not None:
        _check_sidecar(Path(sidecar_path), labels.shape, affine, source)

    on_grid, resampled = resample_to_source(labels, affine, source, out_dtype=labels.dtype.type)
    del labels
    # frames per label value: slices in which the label occurs at least once
    per_slice = [np.bincount(on_grid[k].ravel()) for k in range(on_grid.shape[0])]
    max_value = max((len(c) - 1 for c in per_slice), default=0)
    frames_of = np.zeros(max(max_value + 1, 1), dtype=np.int64)
    for counts in per_slice:
        frames_of[: len(counts)] += counts > 0

    specs = dict(config.segments)
    for value in np.nonzero(frames_of)[0]:
        value = int(value)
        if value and value not in specs:
            log.warning(
                "%s: label value %d is not in the label config; exported as 'label %d' with the generic code",
                label_map_path,
                value,
                value,
            )
            specs[value] = segment_spec_for_name(value, f"label {value}")

    def frames(value: int) -> int:
        return int(frames_of[value]) if value < len(frames_of) else 0

    if not any(frames(v) for v in specs):
        raise NoFindingsError(
            f"{label_map_path}: no labelled voxel on the grid of source series {source.series_instance_uid}"
        )
    omitted = [specs[v].name for v in specs if frames(v) == 0] if empty_label_policy == "omit" else []
    kept = [v for v in sorted(specs) if empty_label_policy == "describe" or frames(v) > 0]
    lut = np.zeros(max(max_value, max(kept)) + 1, dtype=np.uint8 if len(kept) < 256 else np.uint16)
    for number, value in enumerate(kept, start=1):
        lut[value] = number
    if kept != list(range(1, len(kept) + 1)) or max_value > len(kept):
        on_grid = lut[on_grid]  # label values -> consecutive segment numbers

    descriptions = [_segment_description(n, specs[v], algorithm) for n, v in enumerate(kept, start=1)]
    seg_series_uid, seg_sop_uid = seg_uids(source.series_instance_uid, model_id, configuration)
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=on_grid,
        segmentation_type=segmentation_type,
        segment_descriptions=descriptions,
        series_instance_uid=seg_series_uid,
        series_number=series_number,
        sop_instance_uid=seg_sop_uid,
        instance_number=1,
        manufacturer="airflow-provider-kaapana",
        manufacturer_model_name=f"{algorithm.name} {model_id}"[:64],
        software_versions=f"airflow-provider-kaapana {__version__}",
        device_serial_number="0",
        max_fractional_value=max_fractional_value,
        content_label=_content_label(model_id),
        content_description=(series_description or f"{algorithm.name} {model_id} {configuration}")[:64],
        series_description=(series_description or f"SEG {algorithm.name} {model_id}")[:64],
        transfer_syntax_uid=transfer_syntax_uid,
        omit_empty_frames=True,
    )
    del on_grid
    _write_atomically(seg, out_path)
    number_of_frames = int(getattr(seg, "NumberOfFrames", 0))
    segments = [
        ExportedSegment(n, v, specs[v].name, frames(v), specs[v].coded_from)
        for n, v in enumerate(kept, start=1)
    ]
    return SegExportResult(
        seg_path=out_path,
        series_instance_uid=source.series_instance_uid,
        seg_series_instance_uid=seg_series_uid,
        seg_sop_instance_uid=seg_sop_uid,
        segmentation_type=segmentation_type,
        number_of_frames=number_of_frames,
        segments=segments,
        omitted_labels=omitted,
        resampled=resampled,
    )


def source_series_instance_uid(source_dir: str | Path) -> str:
    """SeriesInstanceUID of the first DICOM file in ``source_dir`` (sorted by name)."""
    for path in sorted(p for p in Path(source_dir).rglob("*") if p.is_file()):
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


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


__all__ = [
    "AlgorithmInfo",
    "ExportedSegment",
    "LabelConfig",
    "LabelConfigError",
    "SegExportResult",
    "SegmentSpec",
    "SourceSeries",
    "export_seg",
    "fallback_codes",
    "load_label_config",
    "load_label_map",
    "load_source_series",
    "lookup_structure",
    "parse_label_config",
    "resample_to_source",
    "seg_uids",
    "source_series_instance_uid",
]
