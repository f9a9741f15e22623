"""core.files.write_atomic: the bytes of every chunk, in order, and nothing left behind."""

from __future__ import annotations

import array
import stat

from airflow_provider_kaapana.core.files import write_atomic


def test_write_atomic_writes_every_chunk_in_order(tmp_path):
    # more chunks than one writev takes (IOV_MAX 1024), empty ones, and a memoryview of another format
    chunks = [bytes([i % 251]) * (i % 7) for i in range(2500)]
    chunks += [memoryview(bytearray(b"xy" * 300_000)), memoryview(array.array("H", [1, 2, 3]))]
    path = write_atomic(tmp_path / "out.dcm", chunks)
    expected = b"".join(bytes(c) for c in chunks)
    assert path.read_bytes() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]


def test_write_atomic_replaces_and_leaves_no_temporary_on_failure(tmp_path):
    target = tmp_path / "out.dcm"
    write_atomic(target, [b"old"])
    write_atomic(target, [b"new"], fsync=False)
    assert target.read_bytes() == b"new"

    def chunks():
        yield b"partial"
        raise RuntimeError("sender went away")

    try:
        write_atomic(target, chunks())
    except RuntimeError:
        pass
    else:
        raise AssertionError("the error of a chunk must reach the caller")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]
