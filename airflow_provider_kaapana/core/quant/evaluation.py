"""``segmentation_evaluation``: overlap and surface-distance metrics of a test against a reference segmentation.

Distances are in patient space (mm) on an orthogonal grid with any, also anisotropic, spacing: the
surface of a mask is its border voxels (in the mask, with a face neighbour outside it), and the
distance of a border voxel to the other surface is the exact Euclidean distance transform
(scipy.ndimage.distance_transform_edt with the grid's spacing) to the other mask's border voxels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from airflow_provider_kaapana.core.quant.inputs import Grid, Segmentation, SegmentMask, load_segmentation
from airflow_provider_kaapana.core.seg.geometry import load_source_series
from airflow_provider_kaapana.exceptions import GeometryError

SCHEMA = "kaapana.segmentation-evaluation/v1"
DEFAULT_TOLERANCE_MM = 1.0
UNITS = {
    "dice": "1",
    "jaccard": "1",
    "reference_volume_ml": "ml",
    "test_volume_ml": "ml",
    "volume_difference_ml": "ml",
    "relative_volume_difference": "1",
    "hausdorff_mm": "mm",
    "hd95_mm": "mm",
    "assd_mm": "mm",
    "surface_dice": "1",
}


def _orthogonal_spacing(grid: Grid) -> tuple[float, float, float]:
    """Spacing along the array axes (slice, row, column); refuses sheared grids."""
    lin = grid.affine_lps[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    unit = lin / norms
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-4):
        raise GeometryError("surface distances need an orthogonal grid (this one is sheared)")
    return float(norms[2]), float(norms[1]), float(norms[0])


def border(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one of their 6 face neighbours outside it (the grid edge counts)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return mask & ~eroded


def surface_distances(
    reference: np.ndarray, test: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """(distances of the reference's border voxels to the test's border, and the other way), in mm.

    Both masks must be non-empty. Computed in the union bounding box only: every border voxel of both
    masks lies inside it, so the distance transform there is exact.
    """
    box = SegmentMask.from_full(reference | test).box
    assert box is not None
    ref_border, test_border = border(reference[box]), border(test[box])
    to_test = ndimage.distance_transform_edt(~test_border, sampling=spacing)
    to_ref = ndimage.distance_transform_edt(~ref_border, sampling=spacing)
    return to_test[ref_border], to_ref[test_border]


def compare_masks(
    reference: np.ndarray,
    test: np.ndarray,
    grid: Grid,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[str, Any]:
    """Every metric of one pair of boolean masks on ``grid`` (see the module docstring for distances).

    Empty masks: both empty -> Dice, Jaccard and surface Dice 1, distances 0; exactly one empty ->
    Dice, Jaccard and surface Dice 0, distances ``None`` (undefined: there is no surface to reach).
    ``relative_volume_difference`` is ``None`` when the reference is empty.
    """
    if reference.shape != test.shape:
        raise GeometryError(f"reference {reference.shape} and test {test.shape} differ in shape")
    spacing = _orthogonal_spacing(grid)
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    n_ref, n_test = int(np.count_nonzero(reference)), int(np.count_nonzero(test))
    n_both = int(np.count_nonzero(reference & test))
    ref_ml, test_ml = n_ref * voxel_ml, n_test * voxel_ml
    out: dict[str, Any] = {
        "reference_empty": n_ref == 0,
        "test_empty": n_test == 0,
        "reference_volume_ml": ref_ml,
        "test_volume_ml": test_ml,
        "volume_difference_ml": test_ml - ref_ml,
        "relative_volume_difference": (test_ml - ref_ml) / ref_ml if n_ref else None,
    }
    if n_ref == 0 and n_test == 0:
        out.update(dice=1.0, jaccard=1.0, hausdorff_mm=0.0, hd95_mm=0.0, assd_mm=0.0, surface_dice=1.0)
        return out
    out["dice"] = 2.0 * n_both / (n_ref + n_test)
    out["jaccard"] = n_both / (n_ref + n_test - n_both)
    if n_ref == 0 or n_test == 0:
        out.update(hausdorff_mm=None, hd95_mm=None, assd_mm=None, surface_dice=0.0)
        return out
    d_ref, d_test = surface_distances(reference, test, spacing)
    both = np.concatenate([d_ref, d_test])
    out.update(
        hausdorff_mm=float(max(d_ref.max(), d_test.max())),
        hd95_mm=float(max(np.percentile(d_ref, 95), np.percentile(d_test, 95))),
        assd_mm=float(both.mean()),
        surface_dice=float(np.count_nonzero(both <= tolerance_mm) / both.size),
    )
    return out


def _union_box(*boxes: tuple[slice, slice, slice] | None) -> tuple[slice, slice, slice]:
    present = [b for b in boxes if b is not None]
    if not present:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    return tuple(  # type: ignore[return-value]
        slice(min(b[a].start for b in present), max(b[a].stop for b in present)) for a in range(3)
    )


def evaluation_document(
    reference: Segmentation, test: Segmentation, tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> dict[str, Any]:
    """Metrics per segment number present in either segmentation (a missing one counts as empty)."""
    if reference.grid.shape != test.grid.shape or not np.allclose(
        reference.grid.affine_lps, test.grid.affine_lps, atol=1e-3
    ):
        raise GeometryError("reference and test are not on the same grid (give the source series)")
    names = {s.segment_number: s for s in test.segments}
    names.update({s.segment_number: s for s in reference.segments})
    empty = SegmentMask.empty(reference.grid.shape)
    segments = []
    for number in sorted(names):
        info = names[number]
        entry: dict[str, Any] = {"segment_number": number, "label": info.label, "code": info.code}
        ref, test_mask = reference.masks.get(number, empty), test.masks.get(number, empty)
        # Metrics only need the union of both boxes: outside it both masks are background.
        box = _union_box(ref.box, test_mask.box)
        entry.update(compare_masks(ref.within(box), test_mask.within(box), reference.grid, tolerance_mm))
        segments.append(entry)
    return {
        "schema": SCHEMA,
        "tolerance_mm": tolerance_mm,
        "reference": {"sop_instance_uid": reference.sop_instance_uid, "resampled": reference.resampled},
        "test": {"sop_instance_uid": test.sop_instance_uid, "resampled": test.resampled},
        "units": UNITS,
        "segments": segments,
    }


def segmentation_evaluation(
    reference_path: str | Path,
    test_path: str | Path,
    *,
    series_dir: str | Path | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    label_config: str | Path | None = None,
) -> dict[str, Any]:
    """Compare a test segmentation with a reference (each a DICOM SEG or NIfTI label map).

    With ``series_dir`` both are placed on the source series' grid (required for SEGs); without it,
    two label maps must share a grid. Segments are matched by segment number / label value.
    """
    source = load_source_series(series_dir) if series_dir is not None else None
    reference = load_segmentation(reference_path, source, label_config)
    test = load_segmentation(test_path, source, label_config)
    return evaluation_document(reference, test, tolerance_mm)
