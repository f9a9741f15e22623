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

This module orchestrates; the steps live beside it: :mod:`.codes` (SNOMED CT table, fallback codes),
:mod:`.labels` (label configs, label maps), :mod:`.geometry` (source series, placing labels on its grid),
:mod:`.writer` (highdicom object, UIDs, atomic save). Their public names are importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from airflow_provider_kaapana.core.seg.codes import (
    AlgorithmInfo,
    LabelConfigError,
    SegmentSpec,
    fallback_codes,
    lookup_structure,
    segment_spec_for_name,
)
from airflow_provider_kaapana.core.seg.frames import applies, write_binary_segmentation
from airflow_provider_kaapana.core.seg.geometry import (
    SourceSeries,
    check_sidecar,
    load_source_series,
    resample_to_source,
    source_series_instance_uid,
    uncovered_slices,
)
from airflow_provider_kaapana.core.seg.labels import (
    LabelConfig,
    load_label_config,
    load_label_map,
    nifti_stem,
    parse_label_config,
)
from airflow_provider_kaapana.core.seg.writer import build_segmentation, seg_uids, write_atomically
from airflow_provider_kaapana.exceptions import GeometryError, InvalidDicomError, NoFindingsError

log = logging.getLogger(__name__)

SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")
EMPTY_LABEL_POLICIES = ("describe", "omit")


@dataclass(frozen=True)
class ExportedSegment:
    """One segment of the written SEG and the label value it came from."""

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
    export = _SegExport(
        label_map_path,
        source_dir,
        label_config,
        segmentation_type=segmentation_type,
        algorithm=algorithm,
        empty_label_policy=empty_label_policy,
        sidecar_path=sidecar_path,
        expected_series_instance_uid=expected_series_instance_uid,
    )
    return export.write(
        Path(out_path),
        model_id=model_id,
        configuration=configuration,
        series_number=series_number,
        series_description=series_description,
        transfer_syntax_uid=transfer_syntax_uid,
        max_fractional_value=max_fractional_value,
    )


class _SegExport:
    """One :func:`export_seg` call. The constructor is the list of checks, in order; each either raises
    (naming the file or series) or keeps what the next needs. :meth:`write` then builds and saves the SEG."""

    def __init__(
        self,
        label_map_path: str | Path,
        source_dir: str | Path,
        label_config: str | Path | LabelConfig | Mapping[str, Any],
        *,
        segmentation_type: str,
        algorithm: AlgorithmInfo | None,
        empty_label_policy: str,
        sidecar_path: str | Path | None,
        expected_series_instance_uid: str | None,
    ) -> None:
        self.segmentation_type = _checked_segmentation_type(segmentation_type)
        self.empty_label_policy = _checked_empty_label_policy(empty_label_policy)
        self.label_map_path = Path(label_map_path)
        self.config = _as_label_config(label_config)
        self.algorithm = algorithm or self.config.algorithm or AlgorithmInfo()
        self.source = _source_of_expected_series(source_dir, expected_series_instance_uid)
        labels, affine = load_label_map(self.label_map_path)
        _cross_check_sidecar(self.label_map_path, sidecar_path, labels.shape, affine, self.source)
        self._check_coverage(labels.shape, affine)
        self.on_grid, self.resampled = resample_to_source(
            labels, affine, self.source, out_dtype=labels.dtype.type
        )
        del labels
        self.presence = _label_presence(self.on_grid)
        self.frames_of = self.presence.sum(axis=0)
        self.specs = self._with_unlisted_label_values(dict(self.config.segments))
        self._check_findings()
        self.kept = self._kept_label_values()
        self.omitted = self._omitted_labels()
        self.on_grid = self._as_segment_numbers(self.on_grid)

    def _check_coverage(self, label_shape: tuple[int, ...], affine: np.ndarray) -> None:
        """A label map on the source's pixel grid that does not cover every source pixel has the wrong
        shape: refused (a partial mask would be exported). One on another grid (resampled by a model)
        may end short of the source's corners: exported, with a warning naming how many slices."""
        if len(label_shape) != 3:
            return  # resample_to_source names the wrong dimensionality
        missing, on_source_grid = uncovered_slices(label_shape, affine, self.source)
        if not missing:
            return
        uids = self.source.sop_instance_uids
        problem = (
            f"{self.label_map_path}: the label map (shape {list(label_shape)}) does not cover the source "
            f"series {self.source.series_instance_uid} ({self.source.columns}x{self.source.rows}x"
            f"{len(uids)}): {len(missing)} of {len(uids)} slices reach outside it (e.g. instance "
            f"{uids[missing[0]]})"
        )
        if on_source_grid:
            raise GeometryError(f"{problem}; refusing to export a partial mask")
        log.warning("%s; on another grid: the pixels outside are exported as background", problem)

    def frames(self, value: int) -> int:
        """Frames (source slices) in which label ``value`` occurs."""
        return int(self.frames_of[value]) if value < len(self.frames_of) else 0

    def _with_unlisted_label_values(self, specs: dict[int, SegmentSpec]) -> dict[int, SegmentSpec]:
        """``specs`` plus a fallback-coded ``label <n>`` for each value in the map but not in the config."""
        for value in np.nonzero(self.frames_of)[0]:
            value = int(value)
            if value and value not in specs:
                log.warning(
                    "%s: label value %d is not in the label config; exported as 'label %d' with the generic code",
                    self.label_map_path,
                    value,
                    value,
                )
                specs[value] = segment_spec_for_name(value, f"label {value}")
        return specs

    def _check_findings(self) -> None:
        if not any(self.frames(v) for v in self.specs):
            raise NoFindingsError(
                f"{self.label_map_path}: no labelled voxel on the grid of source series "
                f"{self.source.series_instance_uid}"
            )

    def _kept_label_values(self) -> list[int]:
        """Label values that become segments, ascending: all (policy "describe") or the non-empty ones."""
        return [v for v in sorted(self.specs) if self.empty_label_policy == "describe" or self.frames(v) > 0]

    def _omitted_labels(self) -> list[str]:
        if self.empty_label_policy != "omit":
            return []
        return [self.specs[v].name for v in self.specs if self.frames(v) == 0]

    def _segment_presence(self) -> np.ndarray:
        """Entry ``[k, n - 1]``: whether segment ``n`` occurs in slice ``k``."""
        out = np.zeros((self.presence.shape[0], len(self.kept)), dtype=bool)
        for i, value in enumerate(self.kept):
            if value < self.presence.shape[1]:
                out[:, i] = self.presence[:, value]
        return out

    def _as_segment_numbers(self, on_grid: np.ndarray) -> np.ndarray:
        """Label values -> consecutive segment numbers 1..n (0 stays background), unless they already are."""
        kept = self.kept
        max_value = len(self.frames_of) - 1
        if kept == list(range(1, len(kept) + 1)) and max_value <= len(kept):
            return on_grid
        lut = np.zeros(max(max_value, max(kept)) + 1, dtype=np.uint8 if len(kept) < 256 else np.uint16)
        for number, value in enumerate(kept, start=1):
            lut[value] = number
        return lut[on_grid]

    def write(
        self,
        out_path: Path,
        *,
        model_id: str,
        configuration: str,
        series_number: int,
        series_description: str | None,
        transfer_syntax_uid: str,
        max_fractional_value: int,
    ) -> SegExportResult:
        """Build the SEG with highdicom and save it atomically at ``out_path``."""
        seg_series_uid, seg_sop_uid = seg_uids(self.source.series_instance_uid, model_id, configuration)
        specs = [self.specs[v] for v in self.kept]
        if applies(self.segmentation_type, transfer_syntax_uid, self.source.frame_numbers):
            out_path.parent.mkdir(parents=True, exist_ok=True)
            number_of_frames = write_binary_segmentation(
                out_path,
                self.source.datasets,
                self.on_grid,
                self._segment_presence(),
                specs,
                algorithm=self.algorithm,
                model_id=model_id,
                configuration=configuration,
                series_instance_uid=seg_series_uid,
                sop_instance_uid=seg_sop_uid,
                series_number=series_number,
                series_description=series_description,
            )
        else:  # FRACTIONAL, LABELMAP, another transfer syntax, a multi-frame source: highdicom alone
            source_images, pixels = _in_source_order(self.source, self.on_grid)
            seg = build_segmentation(
                source_images,
                pixels,
                specs,
                segmentation_type=self.segmentation_type,
                algorithm=self.algorithm,
                model_id=model_id,
                configuration=configuration,
                series_instance_uid=seg_series_uid,
                sop_instance_uid=seg_sop_uid,
                series_number=series_number,
                series_description=series_description,
                transfer_syntax_uid=transfer_syntax_uid,
                max_fractional_value=max_fractional_value,
            )
            self.on_grid = None  # highdicom holds the encoded frames now
            del pixels
            write_atomically(seg, out_path)
            number_of_frames = int(getattr(seg, "NumberOfFrames", 0))
        return SegExportResult(
            seg_path=out_path,
            series_instance_uid=self.source.series_instance_uid,
            seg_series_instance_uid=seg_series_uid,
            seg_sop_instance_uid=seg_sop_uid,
            segmentation_type=self.segmentation_type,
            number_of_frames=number_of_frames,
            segments=[
                ExportedSegment(n, v, self.specs[v].name, self.frames(v), self.specs[v].coded_from)
                for n, v in enumerate(self.kept, start=1)
            ],
            omitted_labels=self.omitted,
            resampled=self.resampled,
        )


def _checked_segmentation_type(segmentation_type: str) -> str:
    segmentation_type = segmentation_type.upper()
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}")
    return segmentation_type


def _checked_empty_label_policy(empty_label_policy: str) -> str:
    if empty_label_policy not in EMPTY_LABEL_POLICIES:
        raise ValueError(
            f"empty_label_policy must be one of {EMPTY_LABEL_POLICIES}, got {empty_label_policy!r}"
        )
    return empty_label_policy


def _as_label_config(label_config: str | Path | LabelConfig | Mapping[str, Any]) -> LabelConfig:
    if isinstance(label_config, LabelConfig):
        return label_config
    if isinstance(label_config, Mapping):
        return parse_label_config(label_config)
    return load_label_config(label_config)


def _source_of_expected_series(
    source_dir: str | Path, expected_series_instance_uid: str | None
) -> SourceSeries:
    source = load_source_series(source_dir)
    if expected_series_instance_uid and expected_series_instance_uid != source.series_instance_uid:
        raise InvalidDicomError(
            f"{source_dir}: holds series {source.series_instance_uid}, expected {expected_series_instance_uid}"
        )
    return source


def _cross_check_sidecar(
    label_map_path: Path,
    sidecar_path: str | Path | None,
    label_shape: tuple[int, ...],
    affine: np.ndarray,
    source: SourceSeries,
) -> None:
    """Check NiftiConvert's sidecar (given, or ``<label map stem>.json`` when it exists) against the geometry."""
    if sidecar_path is None:
        candidate = label_map_path.with_name(nifti_stem(label_map_path) + ".json")
        sidecar_path = candidate if candidate.is_file() else None
    if sidecar_path is not None:
        check_sidecar(Path(sidecar_path), label_shape, affine, source)


def _in_source_order(source: SourceSeries, on_grid: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """highdicom's inputs: the source images and the label frames in their order.

    Single-frame sources: one image per sorted slice, as they are. A multi-frame source: the one image,
    and the frames put back in its frame order (highdicom pairs frame ``i`` of the array with frame
    ``i + 1`` of the source, whose functional groups give the SEG frame its position).
    """
    if source.frame_numbers is None:
        return list(source.datasets), on_grid
    frames = np.zeros_like(on_grid)
    frames[np.asarray(source.frame_numbers) - 1] = on_grid
    return [_with_shared_plane_groups(source.datasets[0])], frames


_PLANE_GROUPS = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def _with_shared_plane_groups(ds: Any) -> Any:
    """The multi-frame source header as highdicom reads it: pixel measures and plane orientation shared.

    Some vendors (Philips) repeat the same Pixel Measures and Plane Orientation in every frame's
    functional groups instead of the shared ones; highdicom reads them from the shared groups only. When
    every frame carries the same values, a copy of the header with them shared describes the very same
    frames (nothing else changes; the SEG references the source by its UIDs). Differing values are
    refused.
    """
    import copy

    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    missing = [g for g in _PLANE_GROUPS if shared is None or g not in shared]
    if not missing:
        return ds
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for group in missing:
        values = {repr(item[group].value[0].to_json_dict()) if group in item else None for item in per_frame}
        if len(values) != 1 or None in values:
            raise InvalidDicomError(
                f"multi-frame source {ds.SOPInstanceUID}: {group} differs between frames (or is missing); "
                "a SEG needs one pixel grid and orientation for all frames"
            )
    out = copy.deepcopy(ds)  # a header (no pixel data): the caller's dataset stays as it was read
    new_shared = out.SharedFunctionalGroupsSequence[0] if shared is not None else type(ds)()
    for group in missing:
        new_shared[group] = copy.deepcopy(per_frame[0][group])
    out.SharedFunctionalGroupsSequence = [new_shared]
    return out


_COMPARE_UP_TO = 8  # slices whose largest label is at most this: one comparison per value, not bincount


def _label_presence(on_grid: np.ndarray) -> np.ndarray:
    """Entry ``[k, v]``: whether label value ``v`` occurs in labelled slice ``k`` (all False for a slice
    without labels). A slice with few label values is compared value by value (512x512x300, 5 labels:
    0.017 instead of 0.065 s with ``bincount`` on every slice, median of 5)."""
    n = on_grid.shape[0]
    flat = on_grid.reshape(n, -1)
    top = flat.max(axis=1, initial=0)  # empty slices are skipped by their maximum
    presence = np.zeros((n, int(top.max(initial=0)) + 1), dtype=bool)
    for k in np.nonzero(top)[0]:
        if top[k] <= _COMPARE_UP_TO:
            for value in range(int(top[k]) + 1):
                presence[k, value] = (flat[k] == value).any()
        else:
            counts = np.bincount(flat[k])
            presence[k, : len(counts)] = counts > 0
    return presence


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
