"""Finding the DICOM files of a folder, a file list or DICOM media: the one discovery function.

Files need no extension (CD/DVD exports name them ``IM00001`` or ``00000001``). A folder holding a
``DICOMDIR`` (PS3.10 media) yields the files its directory records reference, resolved relative to the
DICOMDIR and case-insensitively (ISO 9660 media are often mounted lower-case); a DICOMDIR given as a path
does the same. Other folders are walked recursively; hidden files and folders (``.name``: temporaries,
quarantine) and the DICOMDIR files themselves are never instances.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_provider_kaapana.exceptions import InvalidDicomError

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger; ``logging`` is imported on first use (5.6 ms of a 0.2 s ``.nii`` conversion's
    start-up when imported with the module)."""
    import logging

    return logging.getLogger(__name__)


DICOMDIR_NAME = "DICOMDIR"
MEDIA_STORAGE_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"


def is_part10(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part-10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicomdir_files(dicomdir: str | Path) -> list[Path]:
    """The instance files referenced by the directory records of a DICOMDIR, in record order.

    Raises :class:`InvalidDicomError` naming the DICOMDIR when it cannot be read; a referenced file that
    is missing from the media is logged and left out (the rest goes on).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

    dicomdir = Path(dicomdir)
    try:
        ds = pydicom.dcmread(dicomdir)
    except (PydicomInvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InvalidDicomError(f"{dicomdir}: not a readable DICOMDIR: {exc}") from exc
    if "DirectoryRecordSequence" not in ds:
        raise InvalidDicomError(f"{dicomdir}: a DICOMDIR without directory records")
    root = dicomdir.parent
    files: list[Path] = []
    for record in ds.DirectoryRecordSequence:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
        path = _resolve_case_insensitive(root, parts)
        if path is None:
            _log().warning("%s: referenced file %s is missing", dicomdir, "/".join(parts))
            continue
        files.append(path)
    return list(dict.fromkeys(files))


def _resolve_case_insensitive(root: Path, parts: list[str]) -> Path | None:
    path = root
    for part in parts:
        candidate = path / part
        if candidate.exists():
            path = candidate
            continue
        try:
            match = next((p for p in path.iterdir() if p.name.lower() == part.lower()), None)
        except OSError:
            return None
        if match is None:
            return None
        path = match
    return path if path.is_file() else None


def _walk(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.upper() != DICOMDIR_NAME:
                files.append(Path(dirpath) / name)
    return sorted(files)


def dicom_files(paths: str | Path | Iterable[str | Path], *, only_dicom: bool = False) -> list[Path]:
    """The candidate DICOM files of ``paths`` (files, folders, DICOMDIRs), in order, without duplicates.

    A file given by name is kept as it is (a DICOMDIR is replaced by its records). ``only_dicom`` keeps,
    of the files found in folders, only those named ``*.dcm`` or starting like a Part-10 file: for callers
    that would otherwise report a folder's README or NIfTI sidecar as a broken instance. Raises
    ``FileNotFoundError`` for a path that does not exist.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            dicomdir = next((p for p in (path / DICOMDIR_NAME, path / "dicomdir") if p.is_file()), None)
            candidates = dicomdir_files(dicomdir) if dicomdir is not None else _walk(path)
            if only_dicom and dicomdir is None:
                candidates = [p for p in candidates if p.suffix.lower() == ".dcm" or is_part10(p)]
            found.extend(candidates)
        elif path.is_file():
            found.extend(dicomdir_files(path) if path.name.upper() == DICOMDIR_NAME else [path])
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return list(dict.fromkeys(found))
