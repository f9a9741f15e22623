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

This module orchestrates; the steps live beside it: :mod:`.scan` (headers, grouping into volumes),
:mod:`.geometry` (order, checks, affine), :mod:`.pixels` (stored values, rescale), :mod:`.writer`
(NIfTI-1, gzip, sidecar).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from airflow_provider_kaapana.core.nifti.geometry import order_and_check, slice_normal
from airflow_provider_kaapana.core.nifti.pixels import (
    NotStreamable,
    apply_rescale,
    iter_rescaled,
    read_stored,
    rescale_entry,
    streaming_dtype,
    write_rescaled_frames,
)
from airflow_provider_kaapana.core.nifti.scan import SliceInfo, Volume, scan_series, split_volumes
from airflow_provider_kaapana.core.nifti.writer import (
    write_json,
    write_nifti,
    write_nifti_frames,
    write_nifti_slices,
    write_text,
)
from airflow_provider_kaapana.core.paths import path_component
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger; ``logging`` is imported on first use (5.6 ms of a 0.2 s ``.nii`` conversion's
    start-up when imported with the module)."""
    import logging

    return logging.getLogger(__name__)


SIDECAR_FORMAT = "kaapana-nifti-sidecar/1"
# workers reading and writing the slices of an uncompressed .nii: they share one file, so beyond a few the
# kernel's per-file write lock is the limit (2 measured 48-68 ms against 70 ms for 1 on 2 cores)
_STREAM_THREADS = min(4, max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
VOXEL_AXES = {
    "axis0": "columns",
    "axis1": "rows",
    "axis2": "slices",
    "flip_axis0": False,
    "flip_axis1": True,
    "flip_axis2": False,
    "slice_order": "ascending position along the slice normal",
}


class ConvertedVolume(NamedTuple):
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
        _log().warning("skipped %s: %s", item.path, item.reason)
    if not slices:
        reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5]) or "no files"
        raise InvalidDicomError(f"{series_dir}: no image slices to convert ({reasons})")
    plans = _plan_volumes(slices, name, spacing_rtol, shear_tolerance)  # every check before any write
    stems = [_file_stem(base, volume.suffix, suffix, series_uid, name) for series_uid, base, volume in plans]

    out_dir.mkdir(parents=True, exist_ok=True)
    skipped_json = [{"file": str(s.path.absolute()), "reason": s.reason} for s in skipped]
    results = []
    for (series_uid, _base, volume), stem in zip(plans, stems):
        results.append(
            _write_volume(
                volume, series_uid, out_dir, stem, compress, compression_level, skipped_json=skipped_json
            )
        )
    _write_fsl_gradients(plans, out_dir, suffix)
    return results


def _file_stem(base: str, part: str, suffix: str, series_uid: str, name: str | None) -> str:
    """The checked file stem ``<base>[_<part>]<suffix>``: one file name inside ``out_dir``, never a path."""
    stem = "_".join(filter(None, [base, part])) + suffix
    source = "--name/suffix" if name else "the SeriesInstanceUID in the files"
    # the longest extension (".nii.gz" / ".json") must fit too
    path_component(stem, f"NIfTI file name from {source} ({series_uid[:80]!r})", max_bytes=255 - 7)
    return stem


def _write_fsl_gradients(plans: list[tuple[str, str, Volume]], out_dir: Path, suffix: str) -> None:
    """``<stem>.bval`` / ``<stem>.bvec`` (FSL) per diffusion series: one column per volume, in the order of
    the ``_v1``, ``_v2``... volumes, so that those stacked as a 4-D image pair with them as dcm2niix's do."""
    by_base: dict[str, list[dict | None]] = {}
    for _series_uid, base, volume in plans:
        by_base.setdefault(base, []).append(_diffusion_entry(volume))
    for base, entries in by_base.items():
        if not entries or any(e is None for e in entries):
            continue
        bvals = " ".join(f"{e['b_value']:g}" for e in entries if e is not None)
        rows = [" ".join(f"{e['bvec'][axis]:.6f}" for e in entries if e is not None) for axis in range(3)]
        write_text(out_dir / f"{base}{suffix}.bval", bvals + "\n")
        write_text(out_dir / f"{base}{suffix}.bvec", "\n".join(rows) + "\n")


def _plan_volumes(
    slices: list[SliceInfo], name: str | None, spacing_rtol: float, shear_tolerance: float
) -> list[tuple[str, str, Volume]]:
    """(series UID, file stem base, checked volume) for every volume of every series among ``slices``."""
    by_series: dict[str, list[SliceInfo]] = {}
    for s in slices:
        by_series.setdefault(s.series_instance_uid, []).append(s)
    plans: list[tuple[str, str, Volume]] = []
    for series_uid in sorted(by_series):
        volumes = split_volumes(by_series[series_uid])
        for volume in volumes:
            order_and_check(volume, series_uid, spacing_rtol, shear_tolerance)
        if len(by_series) == 1:
            base = name or series_uid
        else:
            base = f"{name}_{series_uid}" if name else series_uid
        for volume in volumes:
            plans.append((series_uid, base, volume))
    return plans


def _write_volume(
    volume: Volume,
    series_uid: str,
    out_dir: Path,
    stem: str,
    compress: bool,
    compression_level: int,
    *,
    skipped_json: list[dict[str, str]],
) -> ConvertedVolume:
    """Read, rescale and write one checked volume and its sidecar."""
    nifti_path = out_dir / (stem + (".nii.gz" if compress else ".nii"))
    sidecar_path = out_dir / f"{stem}.json"
    assert volume.affine_ras is not None
    first = volume.slices[0]
    shape = (first.columns, first.rows, len(volume.slices))
    dtype = streaming_dtype(volume.slices)
    if dtype is not None:
        try:
            if compress or not hasattr(os, "pwritev"):
                parts = iter_rescaled(volume.slices, dtype)
                write_nifti_slices(
                    nifti_path, shape, dtype, volume.affine_ras, parts, compress, compression_level
                )
            else:
                slices, target = volume.slices, dtype
                write_nifti_frames(
                    nifti_path,
                    shape,
                    dtype,
                    volume.affine_ras,
                    lambda fd, offset: write_rescaled_frames(fd, offset, slices, target, _STREAM_THREADS),
                )
        except NotStreamable as exc:
            _log().debug("%s: general path (%s)", nifti_path.name, exc)
            dtype = None
    if dtype is None:
        data, _ = apply_rescale(read_stored(volume.slices), volume.slices)
        write_nifti(nifti_path, data, volume.affine_ras, compress, compression_level)
        dtype = data.dtype
        del data
    rescale = rescale_entry(volume.slices)
    sop_uids = [s.sop_instance_uid for s in volume.slices]
    write_json(
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
            "dtype": str(dtype),
            "rows": first.rows,
            "columns": first.columns,
            "image_orientation_patient": [float(x) for x in first.orientation],
            "pixel_spacing": [float(x) for x in first.pixel_spacing],
            "slice_spacing": volume.spacing,
            "voxel_axes": VOXEL_AXES,
            "rescale": rescale,
            "split": volume.split,
            "mosaic": _mosaic_entry(volume),
            "diffusion": _diffusion_entry(volume),
            "skipped_files": skipped_json,
        },
    )
    return ConvertedVolume(
        nifti_path=nifti_path,
        sidecar_path=sidecar_path,
        series_instance_uid=series_uid,
        shape=shape,
        affine=volume.affine_ras,
        sop_instance_uids=sop_uids,
        dtype=str(dtype),
        split=volume.split,
        split_suffix=volume.suffix,
    )


def _mosaic_entry(volume: Volume) -> dict | None:
    """Which tile of the Siemens mosaic each slice ``k`` was cut from (None for other images)."""
    tiles = [s.mosaic for s in volume.slices]
    if tiles[0] is None:
        return None
    return {
        "grid": tiles[0].grid,
        "tile_rows": tiles[0].rows,
        "tile_columns": tiles[0].columns,
        "tiles": [t.index if t is not None else None for t in tiles],
    }


def _diffusion_entry(volume: Volume) -> dict | None:
    """b-value and gradient of a diffusion mosaic: in patient LPS, and as FSL's ``bvec`` (voxel axes, the
    first negated when the affine's determinant is positive, as dcm2niix writes it)."""
    diffusion = volume.slices[0].diffusion
    if diffusion is None:
        return None
    bvec = [0.0, 0.0, 0.0]
    if diffusion.gradient_direction_lps is not None:
        g = np.asarray(diffusion.gradient_direction_lps)
        orientation = volume.slices[0].orientation
        axes = (orientation[:3], -orientation[3:], slice_normal(orientation))
        bvec = [float(np.dot(g, axis)) for axis in axes]
        assert volume.affine_ras is not None
        if np.linalg.det(volume.affine_ras[:3, :3]) > 0:
            bvec[0] = -bvec[0]
    return {
        "b_value": diffusion.b_value,
        "gradient_direction_lps": list(diffusion.gradient_direction_lps or [0.0, 0.0, 0.0]),
        "bvec": bvec,
    }


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
    if sidecar.get("mosaic"):
        raise GeometryError(
            f"{sidecar.get('nifti_file')} comes from a Siemens MOSAIC: its slices are tiles of one DICOM "
            "frame, not frames a DICOM object can reference"
        )
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
