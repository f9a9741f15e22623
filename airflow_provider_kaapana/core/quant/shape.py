"""Shape measures of one mask in patient space: marching-cubes surface and volume, centroid, PCA axes."""

from __future__ import annotations

import numpy as np
from skimage.measure import marching_cubes

from airflow_provider_kaapana.core.quant.inputs import Grid


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


def index_moments(crop: np.ndarray, offset: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(voxel count, mean, covariance) of the voxel indices (slice, row, column) of a mask crop.

    From its 2-D projections, so no list of voxel coordinates is ever built.
    """
    idx = [np.arange(n, dtype=np.float64) + o for n, o in zip(crop.shape, offset)]
    m_kr = crop.sum(axis=2, dtype=np.int64).astype(np.float64)
    m_kc = crop.sum(axis=1, dtype=np.int64).astype(np.float64)
    m_rc = crop.sum(axis=0, dtype=np.int64).astype(np.float64)
    marginals = [m_kr.sum(axis=1), m_kr.sum(axis=0), m_kc.sum(axis=0)]
    n = float(marginals[0].sum())
    mean = np.array([m @ i for m, i in zip(marginals, idx)]) / n
    second = np.empty((3, 3))
    for a in range(3):
        second[a, a] = marginals[a] @ idx[a] ** 2 / n
    second[0, 1] = second[1, 0] = idx[0] @ m_kr @ idx[1] / n
    second[0, 2] = second[2, 0] = idx[0] @ m_kc @ idx[2] / n
    second[1, 2] = second[2, 1] = idx[1] @ m_rc @ idx[2] / n
    return int(n), mean, second - np.outer(mean, mean)


def principal_axes(
    count: int, covariance_lps: np.ndarray
) -> tuple[float | None, float | None, list[float] | None]:
    """(elongation, flatness, eigenvalues major→least) of the voxel-centre covariance (IBSI Q3CK, N17B)."""
    if count < 2:
        return None, None, None
    eig = np.sort(np.linalg.eigvalsh(covariance_lps))[::-1]
    if eig[0] <= 0:
        return None, None, None
    eig = np.clip(eig, 0.0, None)
    return float(np.sqrt(eig[1] / eig[0])), float(np.sqrt(eig[2] / eig[0])), [float(x) for x in eig]
