"""Encoded DICOM datasets as received on the wire: structure check, UID extraction, file meta, crash recovery.

A received C-STORE dataset is stored exactly as it arrived (no decode and re-encode). Before it is
accepted we walk its element headers once with :class:`~.elements.ElementWalker` — cheap, no value is
decoded except the few UIDs we need — which both proves the payload is complete DICOM and yields the
Study/Series/SOP Instance UIDs.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from airflow_provider_kaapana.core.dicom.elements import (
    DEFLATED_TRANSFER_SYNTAXES,
    EXPLICIT_VR_BIG_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TAG_TRANSFER_SYNTAX_UID,
    ElementWalker,
    read_file_meta,
)
from airflow_provider_kaapana.core.files import final_name_of_partial
from airflow_provider_kaapana.exceptions import InvalidDicomError

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1337.3"
IMPLEMENTATION_VERSION_NAME = "KAAPANA_PROV"

TAG_SOP_CLASS_UID = 0x00080016
TAG_SOP_INSTANCE_UID = 0x00080018
TAG_STUDY_INSTANCE_UID = 0x0020000D
TAG_SERIES_INSTANCE_UID = 0x0020000E
WANTED_TAGS = frozenset(
    {TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID, TAG_STUDY_INSTANCE_UID, TAG_SERIES_INSTANCE_UID}
)


def scan_dataset(data: bytes | memoryview, transfer_syntax: str) -> dict[str, str]:
    """Check that ``data`` (an encoded dataset, no file meta) is complete DICOM; return its key UIDs.

    Returns ``{"sop_class_uid", "sop_instance_uid", "study_instance_uid", "series_instance_uid"}``
    (values as found, possibly empty). Raises :class:`InvalidDicomError` for non-DICOM or truncated data.
    """
    if transfer_syntax in DEFLATED_TRANSFER_SYNTAXES:
        try:
            data = zlib.decompress(bytes(data), -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise InvalidDicomError(f"deflated dataset does not inflate: {exc}") from exc
    if len(data) < 8:
        raise InvalidDicomError(f"not DICOM: dataset of only {len(data)} bytes")
    walker = ElementWalker(
        data,
        implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        little=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
        wanted=WANTED_TAGS,
    )
    walker.dataset(0)

    def text(tag: int) -> str:
        return walker.found.get(tag, b"").decode("ascii", "replace").strip(" \x00")

    return {
        "sop_class_uid": text(TAG_SOP_CLASS_UID),
        "sop_instance_uid": text(TAG_SOP_INSTANCE_UID),
        "study_instance_uid": text(TAG_STUDY_INSTANCE_UID),
        "series_instance_uid": text(TAG_SERIES_INSTANCE_UID),
    }


def inflated_size(data: bytes | memoryview, limit: int, chunk: int = 4 << 20) -> int | None:
    """Size of the raw-deflated ``data`` once inflated, or ``None`` if it exceeds ``limit`` bytes.

    Inflates in ``chunk``-sized steps and keeps none of the output, so a deflate bomb (300 KB that
    inflates to 300 MB) costs about ``chunk`` bytes of memory, not its inflated size. (Large steps:
    zlib lets go of the GIL while inflating, and each step must win it back from the listener's
    other threads.) Raises
    :class:`InvalidDicomError` for data that does not inflate.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    pending = bytes(data)
    try:
        while pending:
            size += len(inflater.decompress(pending, chunk))
            if size > limit:
                return None
            pending = inflater.unconsumed_tail
        size += len(inflater.flush())
    except zlib.error as exc:
        raise InvalidDicomError(f"deflated dataset does not inflate: {exc}") from exc
    return None if size > limit else size


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def file_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    source_ae: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for one instance.

    Encoded directly (explicit VR little endian, PS3.10 7.1): this runs once per received instance
    and a pydicom round trip would cost more than writing the instance itself.
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", sop_class_uid.encode("ascii")),
            _element(0x0002, 0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _element(0x0002, 0x0010, b"UI", transfer_syntax.encode("ascii")),
            _element(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _element(0x0002, 0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            _element(0x0002, 0x0016, b"AE", source_ae.strip()[:16].encode("ascii", "replace"))
            if source_ae and source_ae.strip()
            else b"",
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def is_complete_dicom_file(path: str | Path) -> bool:
    """True if ``path`` holds file meta plus a structurally complete dataset (see :func:`scan_dataset`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[128:132] != b"DICM":
            return False
        meta, start = read_file_meta(data)
        transfer_syntax = meta[TAG_TRANSFER_SYNTAX_UID].decode("ascii").strip(" \x00")
        scan_dataset(memoryview(data)[start:], transfer_syntax)
    except Exception:  # noqa: BLE001 - anything unreadable is incomplete
        return False
    return True


def recover_partial_files(root: str | Path) -> tuple[int, int]:
    """After a crash: promote complete temporaries of :func:`~airflow_provider_kaapana.core.files.write_atomic`
    to their final name (when that name does not exist yet), delete the rest. Returns ``(recovered, removed)``.

    A temporary is only complete once it was fsynced, so a promoted file is one whose data was on
    disk before its rename was; incomplete ones are never visible.
    """
    recovered = removed = 0
    for tmp in Path(root).rglob(".*.part"):
        target = tmp.with_name(final_name_of_partial(tmp))
        try:
            if target.suffix == ".dcm" and not target.exists() and is_complete_dicom_file(tmp):
                os.replace(tmp, target)
                recovered += 1
            else:
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    return recovered, removed
