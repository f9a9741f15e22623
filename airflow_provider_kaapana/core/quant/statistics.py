"""``segment_statistics``: per-segment volume, shape and intensity statistics (``kaapana.segment-statistics/v1``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from airflow_provider_kaapana.core.quant.inputs import (
    Grid,
    Segmentation,
    SegmentMask,
    SourceImage,
    load_segmentation,
    load_source_image,
)
from airflow_provider_kaapana.core.quant.shape import (
    index_moments,
    mesh_area_and_volume,
    mesh_in_lps,
    principal_axes,
)
from airflow_provider_kaapana.exceptions import GeometryError

SCHEMA = "kaapana.segment-statistics/v1"
PERCENTILES = {"p05": 5.0, "p25": 25.0, "p75": 75.0, "p95": 95.0}
INTENSITY_KEYS = ("mean", "sd", "min", "max", "median", *PERCENTILES)


def units(intensity_unit: str) -> dict[str, str]:
    """The units block: the interface's keys, then the keys this version adds."""
    out = {"voxel_count": "1", "volume_ml": "ml"}
    out.update({k: intensity_unit for k in INTENSITY_KEYS})
    out.update(
        {
            "surface_mm2": "mm2",
            "sphericity": "1",
            "mesh_volume_ml": "ml",
            "centroid_lps_mm": "mm",
            "bounding_box_lps_mm": "mm",
            "elongation": "1",
            "flatness": "1",
        }
    )
    return out


def intensity_statistics(values: np.ndarray) -> dict[str, float | None]:
    """Mean, SD (population, 1/N as IBSI 3.4.2), min, max, median and linear-interpolated percentiles."""
    if values.size == 0:
        return dict.fromkeys(INTENSITY_KEYS)
    v = values.astype(np.float64, copy=False)
    qs = np.percentile(v, [50.0, *PERCENTILES.values()])  # numpy's default: linear interpolation
    out: dict[str, float | None] = {
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "median": float(qs[0]),
    }
    out.update({k: float(q) for k, q in zip(PERCENTILES, qs[1:])})
    return out


def measure_segment(mask: SegmentMask, image: SourceImage | None, grid: Grid) -> dict[str, Any]:
    """Every measure of one segment's mask on ``grid`` (intensities from ``image`` if given)."""
    box, crop = mask.box, mask.crop
    if box is None or crop is None:
        out: dict[str, Any] = {"empty": True, "voxel_count": 0, "volume_ml": 0.0}
        out.update(dict.fromkeys(INTENSITY_KEYS))
        out.update(
            {
                "surface_mm2": 0.0,
                "sphericity": None,
                "mesh_volume_ml": 0.0,
                "centroid_lps_mm": None,
                "bounding_box_voxels": None,
                "bounding_box_lps_mm": None,
                "elongation": None,
                "flatness": None,
            }
        )
        return out
    offset = np.array([s.start for s in box], dtype=float)
    count, mean_krc, cov_krc = index_moments(crop, offset)
    # index (slice, row, column) -> LPS is linear: map the moments, not every voxel
    to_lps = grid.affine_lps[:3, :3][:, ::-1]
    centroid = grid.index_to_lps(mean_krc[None, :])[0]
    out = {"empty": False, "voxel_count": count, "volume_ml": count * grid.voxel_volume_mm3 / 1000.0}
    if image is not None:
        out.update(intensity_statistics(image.pixels[box][crop]))
    verts, faces = mesh_in_lps(crop, offset, grid)
    area, mesh_volume = mesh_area_and_volume(verts, faces)
    elongation, flatness, _ = principal_axes(count, to_lps @ cov_krc @ to_lps.T)
    corners = np.array(
        [
            [k, r, c]
            for k in (box[0].start, box[0].stop - 1)
            for r in (box[1].start, box[1].stop - 1)
            for c in (box[2].start, box[2].stop - 1)
        ]
    )
    corners_lps = grid.index_to_lps(corners)
    out.update(
        {
            "surface_mm2": area,
            "sphericity": (math.pi ** (1 / 3) * (6 * mesh_volume) ** (2 / 3) / area) if area > 0 else None,
            "mesh_volume_ml": mesh_volume / 1000.0,
            "centroid_lps_mm": [float(x) for x in centroid],
            "bounding_box_voxels": {
                "min": [int(s.start) for s in box],
                "max": [int(s.stop - 1) for s in box],
            },
            "bounding_box_lps_mm": {
                "min": [float(x) for x in corners_lps.min(axis=0)],
                "max": [float(x) for x in corners_lps.max(axis=0)],
            },
            "elongation": elongation,
            "flatness": flatness,
        }
    )
    return out


def statistics_document(image: SourceImage, segmentation: Segmentation) -> dict[str, Any]:
    """The ``kaapana.segment-statistics/v1`` document of ``segmentation`` measured on ``image``."""
    if image.grid.shape != segmentation.grid.shape or not np.allclose(
        image.grid.affine_lps, segmentation.grid.affine_lps, atol=1e-3
    ):
        raise GeometryError("segmentation and source image are not on the same grid")
    segments = []
    for info in segmentation.segments:
        entry: dict[str, Any] = {
            "segment_number": info.segment_number,
            "label": info.label,
            "code": info.code,
        }
        entry.update(measure_segment(segmentation.masks[info.segment_number], image, segmentation.grid))
        segments.append(entry)
    col, row, sl = image.grid.spacing_mm
    return {
        "schema": SCHEMA,
        "source": {
            "image_series_instance_uid": image.series.series_instance_uid,
            "segmentation_sop_instance_uid": segmentation.sop_instance_uid,
            "segmentation_series_instance_uid": segmentation.series_instance_uid,
        },
        "image": {
            "modality": image.modality,
            "intensity_unit": image.intensity_unit,
            "voxel_spacing_mm": [row, col, sl],
            "resampled": segmentation.resampled,
        },
        "algorithm": segmentation.algorithm,
        "units": units(image.intensity_unit),
        "segments": segments,
    }


def segment_statistics(
    series_dir: str | Path,
    segmentation_path: str | Path,
    *,
    label_config: str | Path | None = None,
) -> dict[str, Any]:
    """Per-segment statistics of a DICOM SEG or NIfTI label map against its source series.

    The label map is placed on the source grid by patient position (as ``kaapana seg`` does);
    ``label_config`` names a label map's values. Returns the JSON-ready document.
    """
    image = load_source_image(series_dir)
    segmentation = load_segmentation(segmentation_path, image.series, label_config)
    return statistics_document(image, segmentation)
