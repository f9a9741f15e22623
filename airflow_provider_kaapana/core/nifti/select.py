"""Which received series is which nnU-Net input channel: ``{"0000": selector, "0001": selector}``.

A selector is a regex on SeriesDescription, or ``{DICOM keyword: regex}`` (all must match). A keyword
is looked up in the series' input dict first (``series_description`` or the keyword itself), then in
the header of the series' first image file. Each channel must match exactly one series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_kaapana.exceptions import InvalidDicomError

if TYPE_CHECKING:
    import pydicom

ChannelSelector = Mapping[str, str] | str


def first_header(series_dir: str | Path) -> pydicom.Dataset:
    """The header of the first image-like DICOM file in ``series_dir`` (for UIDs and channel selection)."""
    import pydicom  # imported on use: DAG files import the operator module at parse time

    from airflow_provider_kaapana.core.dicom.discovery import dicom_files

    for path in dicom_files(series_dir):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: convert_series reports it with the reason
            continue
        if "SeriesInstanceUID" in ds and "Rows" in ds:
            return ds
    raise InvalidDicomError(f"{series_dir}: no DICOM image file found")


def matches(selector: ChannelSelector, entry: Mapping[str, Any], header: pydicom.Dataset) -> bool:
    """Whether one series (its input dict and first header) matches a channel selector."""
    from pydicom.multival import MultiValue

    rules = {"SeriesDescription": selector} if isinstance(selector, str) else dict(selector)
    for keyword, pattern in rules.items():
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", keyword).lower()
        value = entry.get(keyword, entry.get(snake))
        if value is None:
            value = header.get(keyword, "")
        if isinstance(value, (list, tuple, MultiValue)):
            value = "\\".join(str(v) for v in value)
        if not re.fullmatch(str(pattern), str(value)):
            return False
    return True


def select_channels(
    entries: Sequence[Mapping[str, Any]], channels: Mapping[str, ChannelSelector]
) -> list[tuple[str, Mapping[str, Any], pydicom.Dataset]]:
    """``(channel, entry, first header)`` per channel, in the order of ``channels``.

    ``entries`` are series dicts with ``series_dir``. Raises :class:`InvalidDicomError` naming every
    series' description and UID when a selector matches none or several.
    """
    headers = [first_header(e["series_dir"]) for e in entries]
    chosen: list[tuple[str, Mapping[str, Any], pydicom.Dataset]] = []
    for channel, selector in channels.items():
        hits = [(e, h) for e, h in zip(entries, headers) if matches(selector, e, h)]
        if len(hits) != 1:
            described = [f"{h.get('SeriesDescription', '')!r} ({h.SeriesInstanceUID})" for h in headers]
            raise InvalidDicomError(
                f"channel {channel} selector {selector!r} matches {len(hits)} series, needs exactly one; "
                f"series: {', '.join(described)}"
            )
        chosen.append((channel, *hits[0]))
    return chosen
