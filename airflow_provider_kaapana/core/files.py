"""Crash-safe file writes: atomic replace with data sync, directory sync, and leftovers of killed writers."""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

_datasync = getattr(os, "fdatasync", os.fsync)
_CREATE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
# writev takes at most IOV_MAX buffers per call (1024 on Linux)
_IOV_MAX = 1024


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Iterable[bytes | memoryview]) -> None:
    """Write every chunk to ``fd`` with ``os.writev`` (no buffered file object: the listener's
    header + dataset of a 0.5 MB instance took 0.72 instead of 0.98 ms per file, median of 1,000)."""
    pending = iter(chunks)  # taken IOV_MAX at a time: a caller may stream its chunks
    while batch := list(islice(pending, _IOV_MAX)):
        views = [v for v in (memoryview(c).cast("B") for c in batch) if v.nbytes]
        while views:
            written = os.writev(fd, views)
            while written:  # drop what was written; a short write leaves the rest of a chunk
                if written >= views[0].nbytes:
                    written -= views.pop(0).nbytes
                else:
                    views[0], written = views[0][written:], 0


def _create_temporary(directory: str, stem: str) -> tuple[str, int]:
    """Create ``<directory>/.<stem>.<random>.part`` exclusively (mode 0600); return its path and fd.

    os.open + writev instead of mkstemp + a buffered file: measured ~80 us less CPU per 512 KiB file
    (mkstemp's name handling, fdopen's buffer); the name keeps mkstemp's form (random, O_EXCL)."""
    for attempt in range(3):
        path = os.path.join(directory, f".{stem}.{os.urandom(6).hex()}.part")
        try:
            return path, os.open(path, _CREATE_FLAGS, 0o600)
        except FileExistsError:  # pragma: no cover - 48 random bits
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def make_spare(directory: str | Path) -> str:
    """Create an empty file in ``directory`` for :func:`write_atomic`'s ``spare`` and return its path.

    Creating a file is the slow part of a small durable write on the development VM's ext4: ~0.4 ms of
    kernel CPU for the inode (measured: ``open(O_CREAT)`` 405 us, ``rename`` 18 us, opening an
    existing file 4 us), so a writer that knows where its next file will go makes it ahead, off its
    critical path. Named like a temporary (``.spare.<random>.part``): :func:`remove_partial_files`
    and the listener's recovery delete leftovers.
    """
    path, fd = _create_temporary(str(directory), "spare")
    try:
        os.fchmod(fd, 0o644)  # not the umask: workers running as another user must read the file
    finally:
        os.close(fd)
    return path


def _open_spare(spare: str, tmp: str) -> int | None:
    """The spare renamed to ``tmp`` and opened, or ``None`` if it is gone or not empty."""
    try:
        os.rename(spare, tmp)
    except OSError:
        return None
    try:
        fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    if os.fstat(fd).st_size == 0:
        return fd
    os.close(fd)  # written to by someone else: never reuse (nor promote it on recovery)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    return None


def write_atomic(
    path: str | Path,
    chunks: Iterable[bytes | memoryview],
    fsync: bool = True,
    fsync_directory: bool = True,
    spare: str | None = None,
) -> Path:
    """Write ``chunks`` to ``path`` so that ``path`` either does not exist or is complete.

    The data goes to a hidden temporary file in the same directory, is fdatasynced, and renamed over
    ``path``; the directory is fsynced too, so the name survives a crash. Readers never see a partial
    file, and temporary leftovers of a killed writer start with ``.`` and end with ``.part``.
    ``spare``: an empty file from :func:`make_spare` in the same directory, renamed to the temporary's
    name instead of creating one (a new file is created if it is gone or not empty); the data sync
    commits that rename with the data, as it commits a created temporary.
    """
    path = Path(path)
    fd = None
    if spare is not None:
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}.part")
        fd = _open_spare(spare, tmp)
    fresh = fd is None
    if fresh:
        tmp, fd = _create_temporary(str(path.parent), path.name)
    assert fd is not None
    try:
        try:
            if fresh:
                os.fchmod(fd, 0o644)  # not the umask: workers running as another user must read the file
            _write_all(fd, chunks)
            if fsync:
                # fdatasync: the data and the metadata needed to read it back (size, blocks); on a
                # journalling file system this commits the temporary's creation (or the spare's
                # rename to the temporary's name) too
                _datasync(fd)
        finally:
            os.close(fd)
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
