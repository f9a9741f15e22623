"""Siemens MOSAIC images: one 2-D frame holding a grid of tiles, each tile one slice of a volume.

A mosaic (ImageType contains ``MOSAIC``, or the Siemens private NumberOfImagesInMosaic (0019,100A) is
set) is unpacked as dcm2niix and nibabel do: the Siemens CSA image header (0029,1010, read with
:mod:`nibabel.nicom.csareader`) gives ``NumberOfImagesInMosaic`` (the grid is ``ceil(sqrt(n))`` tiles
square, filled row by row) and ``SliceNormalVector`` (the direction in which the tiles follow each other);
the mosaic's ImagePositionPatient is the top-left corner of the whole grid, so the first tile's position is
shifted by half the difference between the mosaic and the tile size along rows and columns; tile ``k``
lies ``k × SpacingBetweenSlices`` (else SliceThickness) further along the slice normal.

Anything that does not fit this description is refused with :class:`InvalidDicomError` naming the file:
no or unreadable CSA header, no NumberOfImagesInMosaic, a matrix that does not divide into the tile grid,
a CSA slice normal not parallel to the one of ImageOrientationPatient, no slice spacing, or a multi-frame
mosaic.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from airflow_provider_kaapana.exceptions import InvalidDicomError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

TAG_NUMBER_OF_IMAGES_IN_MOSAIC = 0x0019100A  # Siemens private (SIEMENS MR HEADER), mirrors the CSA entry
TAG_PRIVATE_CREATOR_0019_10 = 0x00190010  # its private creator: other vendors use (0019,100A) otherwise
SIEMENS_MR_HEADER = "SIEMENS MR HEADER"


class MosaicTile(NamedTuple):
    """Where one tile of a mosaic lies: its index in the grid and its patient position (LPS mm)."""

    index: int  # 0-based, row by row through the grid; also its order along the CSA slice normal
    grid: int  # tiles per row (and per column) of the mosaic
    rows: int  # of the tile
    columns: int
    position: np.ndarray


class Diffusion(NamedTuple):
    """Diffusion weighting of a mosaic volume, from the CSA header."""

    b_value: float
    gradient_direction_lps: tuple[float, float, float] | None  # unit vector in patient LPS, None for b=0


def looks_like_mosaic(
    image_type: object, number_in_mosaic: object = None, private_creator: object = None
) -> bool:
    """Whether a header announces a mosaic: ImageType contains MOSAIC, or the Siemens private
    NumberOfImagesInMosaic (only under the private creator ``SIEMENS MR HEADER``) is above 1."""
    values = image_type if isinstance(image_type, (list, tuple)) else str(image_type or "").split("\\")
    if any(str(v).strip().upper() == "MOSAIC" for v in values):
        return True
    if str(private_creator or "").strip() != SIEMENS_MR_HEADER:
        return False
    try:
        return int(number_in_mosaic) > 1  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def is_mosaic(ds: Dataset) -> bool:
    """:func:`looks_like_mosaic` of a pydicom dataset."""
    element = ds.get(TAG_NUMBER_OF_IMAGES_IN_MOSAIC)
    creator = ds.get(TAG_PRIVATE_CREATOR_0019_10)
    return looks_like_mosaic(
        list(ds.get("ImageType", []) or []), getattr(element, "value", None), getattr(creator, "value", None)
    )


def _csareader() -> Any:
    with warnings.catch_warnings():  # nibabel.nicom warns about its DICOM wrappers, which are not used here
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    return csareader


def _csa_image_header(ds: Dataset, path: Path) -> dict[str, Any]:
    csareader = _csareader()
    try:
        csa = csareader.get_csa_header(ds, "image")
    except (csareader.CSAReadError, ValueError, TypeError) as exc:
        raise InvalidDicomError(f"{path}: Siemens MOSAIC with an unreadable CSA image header: {exc}") from exc
    if csa is None:
        raise InvalidDicomError(
            f"{path}: Siemens MOSAIC without the CSA image header (0029,1010): the number of slices in the "
            "mosaic and their direction are unknown; cannot unpack it"
        )
    return csa


def mosaic_tiles(
    ds: Dataset, path: Path, iop: list[float], ipp: list[float], pixel_spacing: list[float]
) -> tuple[list[MosaicTile], float]:
    """The tiles of the mosaic ``ds`` (already-checked IOP/IPP/PixelSpacing) and the slice spacing used."""
    csareader = _csareader()
    csa = _csa_image_header(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise InvalidDicomError(f"{path}: a multi-frame MOSAIC ({n_frames} frames) is not supported")
    n = csareader.get_n_mosaic(csa)
    if not n or int(n) < 1:
        raise InvalidDicomError(f"{path}: MOSAIC without NumberOfImagesInMosaic in its CSA header")
    n = int(n)
    grid = math.ceil(math.sqrt(n))
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows % grid or columns % grid:
        raise InvalidDicomError(
            f"{path}: MOSAIC of {rows}x{columns} pixels does not divide into the {grid}x{grid} tile grid "
            f"of its {n} slices"
        )
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    csa_normal = csareader.get_slice_normal(csa)
    if csa_normal is None:
        raise InvalidDicomError(f"{path}: MOSAIC without SliceNormalVector in its CSA header")
    csa_normal = np.asarray(csa_normal, float)
    norm = float(np.linalg.norm(csa_normal))
    if norm == 0 or abs(abs(float(np.dot(csa_normal / norm, normal))) - 1) > 1e-3:
        raise InvalidDicomError(
            f"{path}: MOSAIC SliceNormalVector {csa_normal.round(5).tolist()} is not parallel to the normal "
            f"{normal.round(5).tolist()} of ImageOrientationPatient"
        )
    direction = normal if float(np.dot(csa_normal, normal)) > 0 else -normal
    spacing = _slice_spacing(ds)
    if spacing is None:
        raise InvalidDicomError(
            f"{path}: MOSAIC without SpacingBetweenSlices or SliceThickness: its slices cannot be placed"
        )
    tile_rows, tile_columns = rows // grid, columns // grid
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    first = (
        np.asarray(ipp, float)
        + row_dir * dc * (columns - tile_columns) / 2
        + col_dir * dr * (rows - tile_rows) / 2
    )
    tiles = [MosaicTile(k, grid, tile_rows, tile_columns, first + k * spacing * direction) for k in range(n)]
    return tiles, spacing


def _slice_spacing(ds: Dataset) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def diffusion_of(ds: Dataset, path: Path) -> Diffusion | None:
    """The b-value and gradient direction of a diffusion mosaic (None when the CSA header has no B_value)."""
    csareader = _csareader()
    csa = _csa_image_header(ds, path)
    b_value = csareader.get_b_value(csa)
    if b_value is None:
        return None
    gradient = csareader.get_g_vector(csa)
    direction = None
    if gradient is not None and float(b_value) > 0:
        g = np.asarray(gradient, float)
        if np.linalg.norm(g) > 0:
            g = g / np.linalg.norm(g)
            direction = (float(g[0]), float(g[1]), float(g[2]))
    return Diffusion(float(b_value), direction)


def tile_of(mosaic_frame: np.ndarray, tile: MosaicTile) -> np.ndarray:
    """The pixels (rows x columns) of ``tile`` cut out of the whole mosaic frame."""
    r0 = (tile.index // tile.grid) * tile.rows
    c0 = (tile.index % tile.grid) * tile.columns
    return mosaic_frame[r0 : r0 + tile.rows, c0 : c0 + tile.columns]
