"""Synthetic DICOM series with known geometry and an optional known truth mask.

Used by the tests, the demo and the benchmarks: every series is generated, nothing is downloaded.
Geometry follows DICOM (LPS patient coordinates): ``row_direction`` is the direction along a row
(increasing column index), ``column_direction`` along a column (increasing row index), and slices are
stacked along their cross product (the slice normal) unless ``slice_offsets`` says otherwise.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def oblique_orientation(
    degrees: float = 20.0, axis: Sequence[float] = (1.0, 0.5, 0.0)
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Axial orientation rotated by ``degrees`` about ``axis`` (Rodrigues' formula)."""
    k = np.asarray(axis, dtype=float)
    k /= np.linalg.norm(k)
    theta = math.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx
    row = rot @ np.array([1.0, 0.0, 0.0])
    col = rot @ np.array([0.0, 1.0, 0.0])
    return tuple(float(x) for x in row), tuple(float(x) for x in col)  # type: ignore[return-value]


@dataclass(frozen=True)
class Shape:
    """A labelled shape in patient space: a sphere (``radius``) or an axis-aligned box (``half_size``)."""

    label: int
    center_mm: tuple[float, float, float]
    radius: float | None = None
    half_size: tuple[float, float, float] | None = None
    intensity: float = 300.0

    def contains(self, points: np.ndarray) -> np.ndarray:
        d = points - np.asarray(self.center_mm)
        if self.radius is not None:
            return np.einsum("...i,...i->...", d, d) <= self.radius**2
        assert self.half_size is not None
        return np.all(np.abs(d) <= np.asarray(self.half_size), axis=-1)


@dataclass
class SeriesSpec:
    """Everything that defines a synthetic series. Defaults give a small axial CT."""

    modality: str = "CT"
    rows: int = 32
    columns: int = 32
    slices: int = 16
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (between rows, between columns), DICOM order
    slice_spacing: float = 2.0
    orientation: str | tuple[tuple[float, float, float], tuple[float, float, float]] = "axial"
    origin: tuple[float, float, float] = (-16.0, -16.0, -20.0)
    shapes: Sequence[Shape] | None = None  # None: one sphere of label 1 in the middle; []: no shapes
    noise_sd: float = 10.0
    seed: int = 0
    slice_offsets: Sequence[float] | None = None  # positions along the normal in mm, overriding spacing
    reverse_instance_numbers: bool = False  # InstanceNumber counts against the slice normal
    patient_id: str = "SYN0001"
    patient_name: str = "Synthetic^Patient"
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    series_number: int = 1
    series_description: str = "synthetic"
    body_part: str = "CHEST"
    study_date: str = "20260101"
    extra: dict[str, object] = field(default_factory=dict)  # attributes set on every instance
    per_instance: Callable[[int, Dataset], None] | None = None  # last chance to change instance k


@dataclass
class SyntheticSeries:
    """What was written, and the truth to compare against."""

    spec: SeriesSpec
    series_dir: Path
    files: list[Path]  # in slice order (along the normal)
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]  # in slice order
    frame_of_reference_uid: str
    affine_lps: np.ndarray  # 4x4: (column i, row j, slice k, 1) -> LPS mm
    volume: np.ndarray  # stored values, shape (slices, rows, columns)
    truth: np.ndarray  # label mask, shape (slices, rows, columns), uint8

    @property
    def affine_ras(self) -> np.ndarray:
        """The same affine in RAS (what nibabel/dcm2niix use): the first two axes negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps


def _directions(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(spec.orientation, str):
        if spec.orientation == "oblique":
            row, col = oblique_orientation()
        else:
            row, col = ORIENTATIONS[spec.orientation]
    else:
        row, col = spec.orientation
    row_v, col_v = np.asarray(row, float), np.asarray(col, float)
    return row_v, col_v, np.cross(row_v, col_v)


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["kaapana-synthetic", str(seed), *map(str, parts)])


def generate_series(
    out_dir: str | Path, spec: SeriesSpec | None = None, **overrides: object
) -> SyntheticSeries:
    """Write one synthetic series as ``out_dir/<index>.dcm`` files and return its truth.

    ``overrides`` are :class:`SeriesSpec` fields, for the common one-liner
    ``generate_series(tmp_path, orientation="coronal", slices=20)``. UIDs are deterministic for a seed.
    """
    spec = spec or SeriesSpec()
    for key, value in overrides.items():
        if not hasattr(spec, key):
            raise TypeError(f"unknown SeriesSpec field {key!r}")
        setattr(spec, key, value)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    row_v, col_v, normal = _directions(spec)
    dr, dc = spec.pixel_spacing
    offsets = (
        list(spec.slice_offsets)
        if spec.slice_offsets is not None
        else [k * spec.slice_spacing for k in range(spec.slices)]
    )
    n_slices = len(offsets)
    origin = np.asarray(spec.origin, float)

    affine = np.eye(4)
    affine[:3, 0] = row_v * dc
    affine[:3, 1] = col_v * dr
    affine[:3, 2] = normal * (offsets[1] - offsets[0] if n_slices > 1 else spec.slice_spacing)
    affine[:3, 3] = origin + normal * offsets[0]

    jj, ii = np.meshgrid(np.arange(spec.rows), np.arange(spec.columns), indexing="ij")
    in_plane = ii[..., None] * dc * row_v + jj[..., None] * dr * col_v  # (rows, cols, 3)

    if spec.shapes is None:
        extent = origin + normal * (offsets[0] + offsets[-1]) / 2
        centre = extent + row_v * dc * (spec.columns - 1) / 2 + col_v * dr * (spec.rows - 1) / 2
        radius = 0.3 * min(spec.rows * dr, spec.columns * dc, max(abs(offsets[-1] - offsets[0]), 1.0))
        shapes: Sequence[Shape] = [Shape(1, tuple(centre), radius=radius)]
    else:
        shapes = spec.shapes

    is_ct = spec.modality.upper() == "CT"
    intercept = -1024.0 if is_ct else 0.0
    background = -1000.0 if is_ct else 100.0  # in output units (HU for CT)
    study_uid = spec.study_instance_uid or _uid(spec.seed, spec.patient_id, "study")
    series_uid = spec.series_instance_uid or _uid(spec.seed, study_uid, spec.series_number, "series")
    for_uid = _uid(spec.seed, study_uid, "for")
    volume = np.zeros((n_slices, spec.rows, spec.columns), dtype=np.int16)
    truth = np.zeros((n_slices, spec.rows, spec.columns), dtype=np.uint8)
    files: list[Path] = []
    sop_uids: list[str] = []
    now = _dt.datetime(2026, 1, 1, 12, 0, 0)

    for k, offset in enumerate(offsets):
        position = origin + normal * offset
        points = position + in_plane
        values = np.full((spec.rows, spec.columns), background, dtype=float)
        for shape in shapes:
            inside = shape.contains(points)
            truth[k][inside] = shape.label
            values[inside] = background + shape.intensity if is_ct else shape.intensity
        values += rng.normal(0, spec.noise_sd, values.shape)
        stored = np.clip(np.round(values - intercept), -32768, 32767).astype(np.int16)
        volume[k] = stored

        sop_uid = _uid(spec.seed, series_uid, k)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop_class = CT_IMAGE_STORAGE if is_ct else MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1337.1"
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = spec.study_date
        ds.SeriesDate = spec.study_date
        ds.ContentDate = spec.study_date
        ds.StudyTime = "120000"
        ds.SeriesTime = "120000"
        ds.AcquisitionTime = (now + _dt.timedelta(seconds=k)).strftime("%H%M%S")
        ds.ContentTime = ds.AcquisitionTime
        ds.AccessionNumber = "ACC0001"
        ds.Modality = spec.modality.upper()
        ds.Manufacturer = "Kaapana Synthetic"
        ds.InstitutionName = "Synthetic Hospital"
        ds.StationName = "SYNTH01"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "synthetic study"
        ds.SeriesDescription = spec.series_description
        ds.ManufacturerModelName = "generate_series"
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.PatientAge = "056Y"
        ds.BodyPartExamined = spec.body_part
        ds.SliceThickness = f"{spec.slice_spacing:g}"
        if not is_ct:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = "10"
            ds.RepetitionTime = "500"
            ds.EchoNumbers = "1"
            ds.MagneticFieldStrength = "3"
        else:
            ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = spec.series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = (n_slices - k) if spec.reverse_instance_numbers else k + 1
        ds.ImagePositionPatient = [f"{x:.6f}" for x in position]
        ds.ImageOrientationPatient = [f"{x:.6f}" for x in (*row_v, *col_v)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(np.dot(position, normal)):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.PixelSpacing = [f"{dr:g}", f"{dc:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = "1"
        if is_ct:
            ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        for key, value in spec.extra.items():
            setattr(ds, key, value)
        ds.PixelData = stored.tobytes()
        if spec.per_instance is not None:
            spec.per_instance(k, ds)
        path = out / f"{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        sop_uids.append(str(ds.SOPInstanceUID))

    return SyntheticSeries(
        spec=spec,
        series_dir=out,
        files=files,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uids=sop_uids,
        frame_of_reference_uid=for_uid,
        affine_lps=affine,
        volume=volume,
        truth=truth,
    )
