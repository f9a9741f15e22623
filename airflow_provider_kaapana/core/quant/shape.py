"""Shape measures of one mask in patient space: marching-cubes surface and volume, centroid, PCA axes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes

from airflow_provider_kaapana.core.quant.inputs import Grid


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest index box (slice, row, column) holding every true voxel, or None when empty."""
    boxes = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    return boxes[0] if boxes and boxes[0] is not None else None  # type: ignore[return-value]


def mesh_in_lps(crop: np.ndarray, offset: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh (skimage, iso-level 0.5 of the binary mask) with vertices in LPS mm."""
    padded = np.pad(crop, 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, method="lewiner")
    return grid.index_to_lps(verts - 1 + offset), faces


def mesh_area_and_volume(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """(area mm², enclosed volume mm³) of a closed triangle mesh (IBSI 3.1.1 / 3.1.3)."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area = 0.5 * float(np.linalg.norm(cross, axis=1).sum())
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    return area, volume


def principal_axes(points_lps: np.ndarray) -> tuple[float | None, float | None, list[float] | None]:
    """(elongation, flatness, eigenvalues major→least) of the voxel-centre covariance (IBSI 3.1.11/12)."""
    if len(points_lps) < 2:
        return None, None, None
    eig = np.sort(np.linalg.eigvalsh(np.cov(points_lps.T, bias=True)))[::-1]
    if eig[0] <= 0:
        return None, None, None
    eig = np.clip(eig, 0.0, None)
    return float(np.sqrt(eig[1] / eig[0])), float(np.sqrt(eig[2] / eig[0])), [float(x) for x in eig]
