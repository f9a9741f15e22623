"""The fast paths of indexing give exactly what the plain paths give (issue 20).

``ElementWalker.top_level_values`` (one loop) against ``ElementWalker.spans`` (the generator the
de-identifier uses), on pydicom's test files and on cut-off copies of them.
"""

from __future__ import annotations

import io

import pytest

from airflow_provider_kaapana.core.dicom.elements import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    ElementWalker,
    read_walkable_start,
)
from airflow_provider_kaapana.exceptions import InvalidDicomError

STOP = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def _by_spans(data: bytes, implicit: bool, start: int, max_length: int):
    walker = ElementWalker(data, implicit, stop=STOP)
    values, undefined = {}, set()
    for tag, _vr, _start, value, end, undefined_length in walker.spans(start):
        if undefined_length:
            values[tag] = data[value:end]
            undefined.add(tag)
        else:
            values[tag] = data[value:end] if end - value <= max_length else None
    return (values, undefined), walker.stopped


def _by_loop(data: bytes, implicit: bool, start: int, max_length: int):
    walker = ElementWalker(data, implicit, stop=STOP)
    return walker.top_level_values(start, max_length), walker.stopped


def _outcome(fn, *args):
    try:
        return fn(*args)
    except InvalidDicomError as exc:  # the same refusal, with the same message
        return type(exc).__name__, str(exc)


def test_top_level_values_is_the_spans_walk(pydicom_test_files):
    walked = 0
    for path in pydicom_test_files:
        whole = path.read_bytes()
        head = read_walkable_start(io.BytesIO(whole), len(whole))
        if head is None:
            continue
        data, start, syntax = head
        implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
        # the whole file, cut inside its header (a first chunk), and a few max lengths
        for cut in (len(data), start + 100, start + 1001, (start + len(data)) // 2):
            for max_length in (0, 16, 1024):
                piece = data[:cut]
                assert _outcome(_by_loop, piece, implicit, start, max_length) == _outcome(
                    _by_spans, piece, implicit, start, max_length
                ), (path.name, cut, max_length)
        walked += 1
    assert walked > 100


@pytest.mark.parametrize(
    ("data", "implicit"),
    [
        (b"\x08\x00\x16\x00UI\x04\x001.2\x00\x08\x00\x16\x00UI\x02\x001\x00", False),  # out of order
        (b"\x08\x00\x16\x00u1\x04\x001.2\x00", False),  # not a VR
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00", False),  # an item at the top level
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00", True),
        (b"\x08\x00\x16\x00UI\x08\x001.2\x00", False),  # value overruns the data
        (b"\x08\x00\x16\x00\x08\x00\x00\x001.2\x00", True),
        (b"\x08\x00\x16\x00UI", False),  # header cut
        (b"\x08\x00\x05\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0", False),  # sequence cut
    ],
)
def test_top_level_values_refuses_what_spans_refuses(data, implicit):
    loop = _outcome(_by_loop, data, implicit, 0, 1024)
    assert isinstance(loop[0], str) and loop == _outcome(_by_spans, data, implicit, 0, 1024)
