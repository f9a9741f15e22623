"""Encoded DICOM datasets as received on the wire: structure check, UID extraction, atomic file writes.

A received C-STORE dataset is stored exactly as it arrived (no decode and re-encode). Before it is
accepted we walk its element headers once — cheap, no value is decoded except the few UIDs we need —
which both proves the payload is complete DICOM and yields the Study/Series/SOP Instance UIDs.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from airflow_provider_kaapana.exceptions import InvalidDicomError

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1337.3"
IMPLEMENTATION_VERSION_NAME = "KAAPANA_PROV"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_TRANSFER_SYNTAXES = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99.1"}

TAG_SOP_CLASS_UID = 0x00080016
TAG_SOP_INSTANCE_UID = 0x00080018
TAG_STUDY_INSTANCE_UID = 0x0020000D
TAG_SERIES_INSTANCE_UID = 0x0020000E
WANTED_TAGS = frozenset(
    {TAG_SOP_CLASS_UID, TAG_SOP_INSTANCE_UID, TAG_STUDY_INSTANCE_UID, TAG_SERIES_INSTANCE_UID}
)

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD
_MAX_DEPTH = 32


class _Walker:
    """Walks element headers of an encoded dataset; raises :class:`InvalidDicomError` on any overrun."""

    def __init__(self, data: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.data = memoryview(data)
        self.implicit = implicit
        self.end = len(self.data)
        self.tag_fmt = "<HH" if little else ">HH"
        self.u16 = "<H" if little else ">H"
        self.u32 = "<I" if little else ">I"
        self.found: dict[int, bytes] = {}

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.end:
            raise InvalidDicomError(
                f"truncated dataset: {what} at byte {pos} needs {n} bytes, {self.end - pos} left"
            )

    def _header(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, vr, length, value_offset) of the element at ``pos``."""
        self._need(pos, 8, "element header")
        group, elem = struct.unpack_from(self.tag_fmt, self.data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item / delimiters: always tag + 4-byte length
            return tag, None, struct.unpack_from(self.u32, self.data, pos + 4)[0], pos + 8
        if self.implicit:
            return tag, None, struct.unpack_from(self.u32, self.data, pos + 4)[0], pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise InvalidDicomError(
                f"not DICOM: invalid VR {vr!r} for tag ({group:04X},{elem:04X}) at byte {pos}"
            )
        if vr in _LONG_VRS:
            self._need(pos, 12, "element header")
            return tag, vr, struct.unpack_from(self.u32, self.data, pos + 8)[0], pos + 12
        return tag, vr, struct.unpack_from(self.u16, self.data, pos + 6)[0], pos + 8

    def dataset(self, pos: int, end: int | None, depth: int, until_item_delim: bool) -> int:
        """Walk a dataset from ``pos``; return the offset just after it."""
        if depth > _MAX_DEPTH:
            raise InvalidDicomError("not DICOM: sequences nested too deeply")
        limit = self.end if end is None else end
        last_tag = -1
        while pos < limit:
            tag, vr, length, value = self._header(pos)
            if tag == _ITEM_DELIM:
                if not until_item_delim:
                    raise InvalidDicomError(f"not DICOM: unexpected item delimiter at byte {pos}")
                return value
            if tag >> 16 == 0xFFFE:
                raise InvalidDicomError(f"not DICOM: unexpected item tag {tag:08X} at byte {pos}")
            if tag <= last_tag:
                raise InvalidDicomError(f"not DICOM: tag {tag:08X} out of order at byte {pos}")
            last_tag = tag
            if length == _UNDEFINED:
                implicit_items = vr == b"UN"  # UN of undefined length holds implicit VR LE items
                pos = self.items(value, depth + 1, implicit_items)
                continue
            self._need(value, length, f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if depth == 0 and tag in WANTED_TAGS:
                self.found[tag] = bytes(self.data[value : value + length])
            pos = value + length
        if until_item_delim:
            raise InvalidDicomError("truncated dataset: item delimiter missing")
        if pos != limit:
            raise InvalidDicomError(f"truncated dataset: element overruns its container at byte {pos}")
        return pos

    def items(self, pos: int, depth: int, implicit_items: bool) -> int:
        """Walk the items of an undefined-length sequence / encapsulated value up to its delimiter."""
        saved = self.implicit
        if implicit_items:
            self.implicit = True
        try:
            while True:
                self._need(pos, 8, "item header")
                group, elem = struct.unpack_from(self.tag_fmt, self.data, pos)
                tag = (group << 16) | elem
                length = struct.unpack_from(self.u32, self.data, pos + 4)[0]
                pos += 8
                if tag == _SEQ_DELIM:
                    return pos
                if tag != _ITEM:
                    raise InvalidDicomError(
                        f"not DICOM: expected an item, found tag {tag:08X} at byte {pos - 8}"
                    )
                if length == _UNDEFINED:
                    pos = self.dataset(pos, None, depth, until_item_delim=True)
                else:
                    self._need(pos, length, "item value")
                    pos += length
        finally:
            self.implicit = saved


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
    walker = _Walker(
        data,
        implicit=transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN,
        little=transfer_syntax != EXPLICIT_VR_BIG_ENDIAN,
    )
    walker.dataset(0, None, 0, until_item_delim=False)

    def text(tag: int) -> str:
        return walker.found.get(tag, b"").decode("ascii", "replace").strip(" \x00")

    return {
        "sop_class_uid": text(TAG_SOP_CLASS_UID),
        "sop_instance_uid": text(TAG_SOP_INSTANCE_UID),
        "study_instance_uid": text(TAG_STUDY_INSTANCE_UID),
        "series_instance_uid": text(TAG_SERIES_INSTANCE_UID),
    }


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


_datasync = getattr(os, "fdatasync", os.fsync)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | Path,
    chunks: Iterable[bytes | memoryview],
    fsync: bool = True,
    fsync_directory: bool = True,
) -> Path:
    """Write ``chunks`` to ``path`` so that ``path`` either does not exist or is complete.

    The data goes to a hidden temporary file in the same directory, is fdatasynced, and renamed over
    ``path``; the directory is fsynced too, so the name survives a crash. Readers never see a partial
    file, and temporary leftovers of a killed writer start with ``.`` and end with ``.part``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from workers running as another user
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if fsync:
                # fdatasync: the data and the metadata needed to read it back (size, blocks); on a
                # journalling file system this commits the temporary's creation too
                _datasync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync and fsync_directory:
        fsync_dir(path.parent)
    return path


def remove_partial_files(root: str | Path) -> int:
    """Delete leftover ``.*.part`` temporaries under ``root`` (after a crash); return how many."""
    count = 0
    for tmp in Path(root).rglob(".*.part"):
        try:
            tmp.unlink()
            count += 1
        except OSError:
            pass
    return count


def final_name_of_partial(tmp: Path) -> str:
    """``.<name>.<random>.part`` (from :func:`write_atomic`) -> ``<name>``."""
    return tmp.name[1:].rsplit(".", 2)[0]


def is_complete_dicom_file(path: str | Path) -> bool:
    """True if ``path`` holds file meta plus a structurally complete dataset (see :func:`scan_dataset`)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open(path, "rb") as f:
            read_preamble(f, force=False)
            meta = _read_file_meta_info(f)
            data = f.read()
        scan_dataset(data, str(meta.TransferSyntaxUID))
    except Exception:  # noqa: BLE001 - anything unreadable is incomplete
        return False
    return True


def recover_partial_files(root: str | Path) -> tuple[int, int]:
    """After a crash: promote complete temporaries of :func:`write_atomic` to their final name (when
    that name does not exist yet), delete the rest. Returns ``(recovered, removed)``.

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
