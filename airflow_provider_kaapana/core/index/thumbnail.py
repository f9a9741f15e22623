"""A thumbnail per series: its middle slice along the slice normal, windowed, as a small greyscale PNG.

The index step writes it beside the series' work in the run workspace and puts it into the series
document as a data URL (``kaapana.thumbnail``), which Dashboards shows as an image and the ingest run's
report embeds. Slices are read and ordered by the NIfTI converter's own helpers (headers, volumes,
position along the normal, pixel reading); a series they cannot place or decode (SEG, SR, colour,
an unsupported compression) gets no thumbnail and a :class:`ThumbnailError` saying why.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airflow_provider_kaapana.exceptions import KaapanaError

MAX_SIZE = 256  # pixels, the longer side
MAX_DATA_URL_CHARS = 30_000  # the document's copy; a larger PNG is shrunk for it (the file keeps 256 px)
THUMBNAIL_FILE_NAME = "thumbnail.png"
PERCENTILES = (0.5, 99.5)  # the window when the instance names none


class ThumbnailError(KaapanaError):
    """No thumbnail for this series (the message names it and why)."""


@dataclass(frozen=True)
class Thumbnail:
    """A series' thumbnail: PNG bytes and what it shows."""

    png: bytes
    width: int
    height: int
    sop_instance_uid: str
    slice_index: int  # of the middle slice, 0-based along the normal
    slice_count: int
    window: tuple[float, float]  # the values shown as black and white
    window_source: str  # "header" (WindowCenter/WindowWidth) or "percentile"

    def data_url(self, max_chars: int = MAX_DATA_URL_CHARS) -> str | None:
        """``data:image/png;base64,...``, shrunk (halving the size) until it fits ``max_chars``."""
        png = self.png
        while True:
            url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            if len(url) <= max_chars:
                return url
            image = _open(png)
            if min(image.size) <= 16:
                return None
            png = _png(image.resize((max(1, image.width // 2), max(1, image.height // 2))))

    def as_dict(self) -> dict[str, object]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "slice_index": self.slice_index,
            "slice_count": self.slice_count,
            "width": self.width,
            "height": self.height,
            "window": list(self.window),
            "window_source": self.window_source,
        }


def _open(png: bytes):  # noqa: ANN202 - a PIL image
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _png(image) -> bytes:  # noqa: ANN001 - a PIL image
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _middle_slice(files: Iterable[Path], label: str):  # noqa: ANN202 - (SliceInfo, index, count)
    """The middle slice of the series' largest volume, ordered along its normal as for NIfTI."""
    from airflow_provider_kaapana.core.nifti.geometry import positions_along_normal
    from airflow_provider_kaapana.core.nifti.scan import read_slices, split_volumes

    slices = []
    reasons: list[str] = []
    for path in files:
        try:
            slices.extend(read_slices(Path(path)))
        except Exception as exc:  # noqa: BLE001 - the scan's _NotAnImage or InvalidDicomError: skip the file
            reasons.append(f"{Path(path).name}: {exc}")
    if not slices:
        why = "; ".join(reasons[:3]) or "no files"
        raise ThumbnailError(f"{label}: no image slice to show ({why})")
    volume = max(split_volumes(slices), key=lambda v: len(v.slices)).slices
    order = np.argsort(positions_along_normal(volume), kind="stable")
    middle = len(volume) // 2
    return volume[int(order[middle])], middle, len(volume)


def _window(path: Path, values: np.ndarray) -> tuple[float, float, str, bool]:
    """``(low, high, source, invert)``: the instance's first top-level WindowCenter/WindowWidth pair (an
    enhanced multi-frame's per-frame VOI LUT is not read), else the 0.5-99.5th percentiles of the
    slice; ``invert`` for MONOCHROME1."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    invert = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        c = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        c = w = float("nan")
    if np.isfinite(c) and np.isfinite(w) and w >= 1:
        # PS3.3 C.11.2.1.2.1 (linear): c - 0.5 -/+ (w - 1) / 2 are the last black and first white value
        return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2, "header", invert
    low, high = (float(x) for x in np.percentile(values, PERCENTILES))
    return low, high, "percentile", invert


def series_thumbnail(
    files: Iterable[str | Path], label: str = "series", max_size: int = MAX_SIZE
) -> Thumbnail:
    """The thumbnail of the series made of ``files``; :class:`ThumbnailError` naming ``label`` and why
    when there is no image slice to show or its pixels cannot be decoded."""
    chosen, index, count = _middle_slice(files, label)
    return _render(chosen, index, count, label, max_size)


def slice_thumbnail(
    path: str | Path, index: int, count: int, label: str = "series", max_size: int = MAX_SIZE
) -> Thumbnail:
    """The thumbnail of one single-frame instance already known to be the series' middle slice (``index``
    of ``count`` along the normal): the index step knows the positions from the headers it parsed, so
    only this file is read again. A multi-frame file goes the long way (:func:`series_thumbnail`)."""
    from airflow_provider_kaapana.core.nifti.scan import read_slices

    try:
        slices = read_slices(Path(path))
    except Exception as exc:  # noqa: BLE001 - the scan's _NotAnImage or InvalidDicomError
        raise ThumbnailError(f"{label}: no image slice to show ({Path(path).name}: {exc})") from exc
    if len(slices) != 1:
        return series_thumbnail([path], label, max_size)
    return _render(slices[0], index, count, label, max_size)


def _render(chosen, index: int, count: int, label: str, max_size: int) -> Thumbnail:  # noqa: ANN001 - SliceInfo
    from PIL import Image

    from airflow_provider_kaapana.core.nifti.pixels import read_stored

    try:
        stored = read_stored([chosen])[0][::-1]  # read_stored flips rows for NIfTI: undo it
    except Exception as exc:  # noqa: BLE001 - InvalidDicomError, or a decoder's own error
        raise ThumbnailError(f"{label}: cannot decode {chosen.path.name}: {exc}") from exc
    values = stored.astype(np.float32) * np.float32(chosen.slope) + np.float32(chosen.intercept)
    try:
        low, high, source, invert = _window(chosen.path, values)
    except Exception as exc:  # noqa: BLE001 - read by the scan a moment ago; never fail the index for it
        raise ThumbnailError(f"{label}: cannot read the window of {chosen.path.name}: {exc}") from exc
    if high <= low:
        high = low + 1.0
    grey = np.clip((values - low) / (high - low), 0.0, 1.0)
    if invert:
        grey = 1.0 - grey
    image = Image.fromarray(np.round(grey * 255).astype(np.uint8))  # 2-D uint8: mode "L"
    # square pixels on screen (rows stretched by the row/column spacing ratio), the longer side at
    # most max_size; never enlarged
    dr, dc = chosen.pixel_spacing
    width, height = float(image.width), image.height * dr / dc
    scale = min(1.0, max_size / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return Thumbnail(
        png=_png(image),
        width=image.width,
        height=image.height,
        sop_instance_uid=chosen.sop_instance_uid,
        slice_index=index,
        slice_count=count,
        window=(round(low, 3), round(high, 3)),
        window_source=source,
    )


def write_thumbnail(thumbnail: Thumbnail, out_dir: str | Path) -> Path:
    """``out_dir/thumbnail.png``, written atomically (a retry replaces it)."""
    from airflow_provider_kaapana.core.files import write_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_atomic(out / THUMBNAIL_FILE_NAME, [thumbnail.png])
