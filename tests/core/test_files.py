"""core.files.write_atomic: the bytes of every chunk, in order, and nothing left behind."""

from __future__ import annotations

import array
import stat
from pathlib import Path

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


def test_write_atomic_into_a_spare_gives_the_same_file(tmp_path):
    from airflow_provider_kaapana.core.dicom.raw import recover_partial_files
    from airflow_provider_kaapana.core.files import make_spare

    chunks = [b"header", memoryview(bytearray(b"\x01\x02" * 200_000))]
    (tmp_path / "plain").mkdir()
    plain = write_atomic(tmp_path / "plain" / "a.dcm", chunks)
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    spare = make_spare(spare_dir)
    assert stat.S_IMODE(Path(spare).stat().st_mode) == 0o644 and Path(spare).stat().st_size == 0
    out = write_atomic(spare_dir / "a.dcm", chunks, spare=spare)
    assert out.read_bytes() == plain.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in spare_dir.iterdir()] == ["a.dcm"]  # the spare became the file
    # a spare left over after a crash is removed on recovery, never promoted
    leftover = make_spare(spare_dir)
    assert recover_partial_files(tmp_path) == (0, 1)
    assert not Path(leftover).exists()


def test_write_atomic_without_its_spare_creates_the_file(tmp_path):
    from airflow_provider_kaapana.core.files import make_spare

    gone = make_spare(tmp_path)
    Path(gone).unlink()
    assert write_atomic(tmp_path / "a.dcm", [b"data"], spare=gone).read_bytes() == b"data"
    written = make_spare(tmp_path)
    Path(written).write_bytes(b"someone else's")  # never reused: the data goes to a new file
    assert write_atomic(tmp_path / "b.dcm", [b"data"], spare=written).read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "b.dcm"]
