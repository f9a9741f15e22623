"""Slice geometry: check the placing tags, order slices along the normal, refuse gaps, tilt and shear,
and compute the RAS affine of the dcm2niix voxel layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.nifti.scan import SliceInfo, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_geometry_tags(path: Path, iop: list[float], ipp: list[float], spacing: list[float]) -> None:
    """Raise :class:`InvalidDicomError` naming ``path`` unless IOP, IPP and PixelSpacing can place a slice."""
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
    # plain floats, not numpy: this runs once per file (numpy's per-call overhead was 10% of a header scan)
    if not all(math.isfinite(v) for v in (*iop, *ipp, *spacing)):
        raise InvalidDicomError(
            f"{path}: ImageOrientationPatient/ImagePositionPatient/PixelSpacing not finite"
        )
    row, col = iop[:3], iop[3:]
    if (
        abs(math.hypot(*row) - 1) > 1e-3
        or abs(math.hypot(*col) - 1) > 1e-3
        or abs(sum(r * c for r, c in zip(row, col))) > 1e-3
    ):
        raise InvalidDicomError(f"{path}: ImageOrientationPatient {iop} is not two orthogonal unit vectors")
    if min(spacing) <= 0:
        raise InvalidDicomError(f"{path}: PixelSpacing {spacing} is not positive")


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """``row_direction x column_direction`` of an ImageOrientationPatient (6 floats, DICOM order)."""
    return np.cross(orientation[:3], orientation[3:])


def positions_along_normal(slices: list[SliceInfo]) -> np.ndarray:
    """``dot(ImagePositionPatient, n)`` of each slice, ``n`` the first slice's normal."""
    normal = slice_normal(slices[0].orientation)
    return np.array([float(np.dot(s.position, normal)) for s in slices])


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array of finite floats, with the same arithmetic (the middle value, or the
    mean ``(a + b) / 2`` of the middle two): ``np.median`` imports ``numpy.ma`` on first use, 18 ms of
    every conversion's start-up with NumPy 2.4."""
    ordered = np.sort(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return float((ordered[mid - 1] + ordered[mid]) / 2)


def order_and_check(volume: Volume, series_uid: str, spacing_rtol: float, shear_tolerance: float) -> None:
    """Sort along the normal, check duplicates/spacing/shear, and compute the affine (dcm2niix layout)."""
    slices = volume.slices
    normal = slice_normal(slices[0].orientation)
    d = positions_along_normal(slices)
    order = np.argsort(d, kind="stable")
    slices[:] = [slices[i] for i in order]
    d = d[order]
    first = slices[0]
    n = len(slices)
    label = f"series {series_uid}" + (f" ({volume.suffix})" if volume.suffix else "")
    dr, dc = first.pixel_spacing
    if n > 1:
        gaps = np.diff(d)
        dup = np.flatnonzero(gaps < 1e-3 * max(_median(gaps), 1e-3) + 1e-4)
        if dup.size:
            a, b = slices[dup[0]], slices[dup[0] + 1]
            raise GeometryError(
                f"{label}: duplicate slice position {d[dup[0]]:.3f} mm along the normal in "
                f"{a.path.name} and {b.path.name} ({len(dup)} duplicate pair(s)); "
                "not split because EchoNumbers/TemporalPositionIdentifier/AcquisitionNumber are equal"
            )
        spacing = (d[-1] - d[0]) / (n - 1)
        typical = _median(gaps)
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
        if first.gantry_tilt and abs(first.gantry_tilt) > 0.01:
            # dcm2niix shears the affine by the stated tilt; from one slice it cannot be checked
            raise GeometryError(
                f"{label}: single slice {first.path.name} with GantryDetectorTilt {first.gantry_tilt} degrees: "
                "the tilt of the stack cannot be verified from one slice"
            )
        spacing = first.spacing_between_slices or first.slice_thickness or 1.0
    frames_of_reference = sorted({s.frame_of_reference_uid for s in slices})
    if len(frames_of_reference) > 1:
        raise GeometryError(
            f"{label}: slices in {len(frames_of_reference)} frames of reference ({', '.join(frames_of_reference)}): "
            "their positions are not in one coordinate system"
        )
    volume.spacing = float(spacing)
    row, col = first.orientation[:3], first.orientation[3:]
    lps = np.eye(4)
    lps[:3, 0] = row * dc
    lps[:3, 1] = -col * dr
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = first.position + col * dr * (first.rows - 1)
    volume.affine_ras = LPS_TO_RAS @ lps
