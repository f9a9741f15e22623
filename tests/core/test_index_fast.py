"""The fast paths of indexing give exactly what the plain paths give (issue 20).

``ElementWalker.top_level_values`` (one loop) against ``ElementWalker.spans`` (the generator the
de-identifier uses), on pydicom's test files and on cut-off copies of them.
"""

from __future__ import annotations

import io
import json

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


# --------------------------------------------------------------------------------------------------
# the first instance's document from its element bytes (raw_object) against pydicom's (dataset_object)


def _both_ways(path):
    from airflow_provider_kaapana.core.index import document

    fast = document._Converter(str(path), "private")
    slow = document._Converter(str(path), "private")
    fast_object = fast.raw_object(path)
    try:
        slow_object = slow.dataset_object(document.read_header(path), "", 0)
    except InvalidDicomError:
        slow_object = None
    return fast_object, (fast.problems, fast.invalid), slow_object, (slow.problems, slow.invalid)


def test_raw_object_is_pydicoms_document_or_refused(pydicom_test_files):
    fast_count = 0
    for path in pydicom_test_files:
        fast, fast_notes, slow, slow_notes = _both_ways(path)
        if fast is None or slow is None:
            continue  # refused, or no header the index reads (no SeriesInstanceUID): never asked
        assert list(fast.items()) == list(slow.items()), path.name  # same keys in the same order
        assert fast_notes == slow_notes, path.name
        fast_count += 1
    assert fast_count >= 5  # the plain ones take the fast path (the others have sequences or private tags)


def _odd_values(k, ds):
    from pydicom.dataelem import DataElement

    ds.PatientName = "Doe^John^^Dr=Doe^J \\Roe^Jane"  # groups, two names, padding
    ds.ImageType = "ORIGINAL\\\\PRIMARY\\ "  # an empty value and a padded one
    ds.StationName = " SCANNER1 "
    ds.RetrieveAETitle = " STORE1 \\ARCHIVE"  # AE: pydicom strips both ends
    ds.InstitutionName = "Clinic\\With\\Backslashes  "
    ds.StudyDescription = "\x00 padded \x00"
    ds.ImageComments = "line one\r\nline two \\ not split  "  # LT: one value, control characters kept
    ds.RetrieveURL = "https://example.org/a b"
    ds.AcquisitionDate = "2026-13-45" if k == 0 else "20260101"  # invalid: kaapana.invalid + a problem
    ds.SliceLocation = "1e400" if k == 0 else "1.5"  # not finite
    ds.AccessionNumber = ""
    ds.PatientAge = "042Y"
    ds.WindowCenter = "40\\400"
    ds.add(DataElement(0x00181310, "US", [0, 64, 64, 0]))  # AcquisitionMatrix, multi-valued US
    ds.add(DataElement(0x00189087, "FD", 1000.5))  # DiffusionBValue
    ds.add(DataElement(0x00280106, "US", 0))  # SmallestImagePixelValue: dictionary VR "US or SS"
    ds.add(DataElement(0x00209153, "FD", [1.0, 2.5]))  # TriggerDelayTime with two values
    ds.add(DataElement(0x00181030, "LO", "x" * 1500))  # ProtocolName longer than pydicom's defer size
    ds.add(DataElement(0x00081090, "UN", b"MODEL\\X "))  # ManufacturerModelName written as UN


def test_raw_object_odd_values_are_pydicoms(synthetic_series):
    series = synthetic_series(slices=2, rows=8, columns=8, per_instance=_odd_values)
    for path in series.files:
        fast, fast_notes, slow, slow_notes = _both_ways(path)
        assert fast is not None
        assert list(fast.items()) == list(slow.items())
        assert fast_notes == slow_notes
    fast, notes, _, _ = _both_ways(series.files[0])
    assert fast["PatientName"] == ["Doe^John^^Dr=Doe^J", "Roe^Jane"] and "AccessionNumber" not in fast
    assert "AcquisitionDate" in notes[1] and "SliceLocation" in notes[1]
    assert fast["ManufacturerModelName"] == ["MODEL", "X"]  # UN of a known tag: its dictionary VR


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("charset", lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 144")),
        ("non-ascii", lambda ds: setattr(ds, "InstitutionName", "Klinik Köln")),
        ("ae tab", lambda ds: setattr(ds, "RetrieveAETitle", "AE\tONE")),
        ("sequence", lambda ds: setattr(ds, "ReferencedImageSequence", [pydicom_dataset(ReferencedSOPInstanceUID="1.2")])),
        ("private", lambda ds: ds.add_new(0x00091001, "LO", "private")),
        ("AT", lambda ds: ds.add_new(0x00209165, "AT", 0x00200032)),
        ("infinite FL", lambda ds: ds.add_new(0x00189087, "FD", float("inf"))),
        ("long DS", lambda ds: ds.add_new(0x00201041, "DS", "1" * 1100)),  # pydicom defers and converts it
    ],
)  # fmt: skip
def test_raw_object_refuses_and_pydicom_reads(synthetic_series, name, change):
    from airflow_provider_kaapana.core.index.document import build_series_documents

    def edit(k, ds):
        change(ds)

    series = synthetic_series(slices=2, rows=8, columns=8, per_instance=edit)
    fast, _, slow, _ = _both_ways(series.files[0])
    assert fast is None and slow is not None
    docs, errors = build_series_documents([series.series_dir])  # still a document, by pydicom
    assert len(docs) == 1 and not errors


def pydicom_dataset(**values):
    import pydicom

    ds = pydicom.Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_implicit_vr_first_instance_takes_the_fast_path(synthetic_series, tmp_path):
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    series = synthetic_series(slices=2, rows=8, columns=8)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True, implicit_vr=True, little_endian=True)
    fast, fast_notes, slow, slow_notes = _both_ways(series.files[0])
    assert fast is not None and list(fast.items()) == list(slow.items()) and fast_notes == slow_notes


def test_raw_numbers_refuse_what_pydicom_reports():
    from airflow_provider_kaapana.core.index.document import _REFUSED, _raw_numbers

    assert _raw_numbers(b"\x01\x00\x02", "US") is _REFUSED  # not a multiple of 2 bytes
    assert _raw_numbers(b"\x00\x00\x80\x7f", "FL") is _REFUSED  # infinity
    assert _raw_numbers(b"", "UL") is None
    assert _raw_numbers(b"\x01\x00\xff\xff", "SS") == [1, -1]


# --------------------------------------------------------------------------------------------------
# bulk requests: streamed with worker processes, one refresh per run


class _RecordingSearch:
    """Just enough of SearchClient for index_series: every bulk request succeeds and is recorded."""

    url = "http://search.example:9200"
    retry = None

    def __init__(self) -> None:
        self.requests: list[tuple[int, object]] = []  # (payload bytes, refresh)
        self.refreshed: list[str] = []

    def bulk(self, payload: bytes, *, refresh=False):
        self.requests.append((len(payload), refresh))
        lines = payload.split(b"\n")
        ids = [json.loads(line)["index"]["_id"] for line in lines[::2] if line]
        return {"items": [{"index": {"_id": doc_id, "status": 201}} for doc_id in ids]}

    def refresh(self, index: str) -> None:
        self.refreshed.append(index)


def test_one_request_carries_refresh_and_several_are_refreshed_once():
    from airflow_provider_kaapana.core.index.client import bulk_index

    docs = [(f"id{i}", {"x": "y" * 100}) for i in range(10)]
    one = _RecordingSearch()
    assert len(bulk_index(one, "idx", docs, refresh="wait_for").indexed) == 10
    assert one.requests == [(one.requests[0][0], "wait_for")] and one.refreshed == []
    several = _RecordingSearch()
    assert len(bulk_index(several, "idx", docs, max_bytes=300, refresh="wait_for").indexed) == 10
    assert len(several.requests) == 5 and {r for _, r in several.requests} == {False}
    assert several.refreshed == ["idx"]
    none = _RecordingSearch()
    bulk_index(none, "idx", docs, max_bytes=300)
    assert none.refreshed == []


def test_worker_processes_stream_smaller_requests_with_the_same_documents(synthetic_series):
    from airflow_provider_kaapana.core.index import client as client_module
    from airflow_provider_kaapana.core.index.client import index_series

    dirs = [synthetic_series(seed=s, slices=2, rows=8, columns=8).series_dir for s in range(6)]
    payloads = {}
    for workers in (1, 2):
        search = _RecordingSearch()
        sent: list[bytes] = []
        search.bulk = lambda payload, refresh=False, search=search, sent=sent: (  # noqa: E731
            sent.append(payload) or _RecordingSearch.bulk(search, payload, refresh=refresh)
        )
        old = client_module.STREAM_BYTES
        client_module.STREAM_BYTES = 4096  # about one document per request
        try:
            report = index_series(
                search, "idx", dirs, workers=workers, ensure_template=False, received_at="x"
            )
        finally:
            client_module.STREAM_BYTES = old
        assert len(report.indexed) == 6
        payloads[workers] = sent
    assert len(payloads[1]) == 1 and len(payloads[2]) >= 3

    def documents(sent):
        lines = b"".join(sent).split(b"\n")
        out = {}
        for action, source in zip(lines[::2], lines[1::2], strict=False):
            doc = json.loads(source)
            doc["kaapana"].pop("indexed_at")
            out[json.loads(action)["index"]["_id"]] = doc
        return out

    assert documents(payloads[1]) == documents(payloads[2])


def test_read_raw_header_reads_on_when_its_first_chunk_ends_between_two_elements(synthetic_series):
    """A first chunk that ends exactly at an element boundary walks without error; the reader must not
    take that for the end of the header (later attributes would be silently missing)."""
    from airflow_provider_kaapana.core.index import document

    path = synthetic_series(slices=1, rows=8, columns=8).files[0]
    whole = document.read_raw_header(path)
    assert whole is not None and 0x0020000E in whole.values
    size = path.stat().st_size
    with open(path, "rb") as fh:
        _data, start, _syntax = read_walkable_start(fh, size)
    for chunk in range(start, size + 2):  # the file meta must be in the first chunk; the dataset may not
        got = document.read_raw_header(path, chunk=chunk)
        assert got is not None and got.values == whole.values, f"first chunk of {chunk} bytes"
