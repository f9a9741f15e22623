"""Series documents, the index template and the search client against a real osmem-server.

The Elasticsearch client path runs the official ``elasticsearch`` client over real HTTP to the same
osmem through :mod:`tests.search_proxy`, which only rewrites the versioned media types.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from airflow_provider_kaapana.core.index.client import bulk_index, ensure_index_template, make_search_client
from airflow_provider_kaapana.core.index.cohort import CohortFilter, select_cohort
from airflow_provider_kaapana.core.index.document import build_series_document, build_series_documents
from airflow_provider_kaapana.core.index.template import build_index_template
from airflow_provider_kaapana.exceptions import InvalidDicomError, SearchIndexError
from tests.search_proxy import SearchProxy


def unique_index() -> str:
    return f"kaapana-test-{uuid.uuid4().hex[:10]}"


def make_seg(source_files: list[Path], out_path: Path, labels: list[str]) -> Path:
    """A real DICOM SEG (highdicom) over a synthetic series, one segment per label."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in source_files]
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns, len(labels)), dtype=bool)
    for i in range(len(labels)):
        mask[:, 4 + i : 10 + i, 4:10, i] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", family=codes.cid7162.ArtificialIntelligence, version="1"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="kaapana-test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    return out_path


# --------------------------------------------------------------------------------------------------
# documents (no server)


def test_document_is_built_from_all_instances(synthetic_series):
    offsets = [0.0, 2.0, 4.0, 8.0, 10.0]  # one slice missing between 4 and 8 mm

    def alter(k: int, ds: pydicom.Dataset) -> None:
        ds.InstanceNumber = [1, 2, 3, 5, 6][k]  # number 4 missing
        ds.add_new(0x00091010, "LO", "PRIVATE_CREATOR")
        ds.add_new(0x00091001, "LO", f"private-{k}")
        if k == 0:
            ds.PatientBirthDate = "19701399"  # malformed: month 13

    series = synthetic_series(slice_offsets=offsets, per_instance=alter, modality="MR")
    source = {"calling_ae_title": "MRSCANNER", "called_ae_title": "KAAPANA"}
    doc_id, doc, problems = build_series_document(
        series.series_dir, received_at="2026-11-26T06:00:00+00:00", source=source
    )
    assert doc_id == series.series_instance_uid
    assert doc["SeriesInstanceUID"] == series.series_instance_uid
    assert doc["StudyDate"] == "2026-01-01"  # DA as ISO date
    assert doc["StudyTime"] == "12:00:00"
    assert doc["PatientName"] == "Synthetic^Patient"
    assert doc["PixelSpacing"] == [1.0, 1.0]  # multi-valued DS as an array of numbers
    assert doc["Rows"] == 32 and isinstance(doc["Rows"], int)
    assert "PixelData" not in doc
    # the first instance by InstanceNumber carries the attributes; the private tags are keyed by tag
    assert doc["private"]["00091001"] == "private-0"
    k = doc["kaapana"]
    assert k["instance_count"] == 5
    assert k["instance_number"]["min"] == 1 and k["instance_number"]["max"] == 6
    assert k["instance_number"]["missing"] == [4]
    assert k["instance_number"]["complete"] is False
    assert k["slice_spacing"]["min"] == pytest.approx(2.0)
    assert k["slice_spacing"]["max"] == pytest.approx(4.0)
    assert k["slice_spacing"]["uniform"] is False
    assert k["acquisition"] == {"start": "2026-01-01T12:00:00", "end": "2026-01-01T12:00:04"}
    assert k["modality"] == "MR"
    assert k["patient_age_years"] == 56.0  # from PatientAge 056Y
    assert k["source_aes"] == ["KAAPANA", "MRSCANNER"]
    assert k["location"]["series_dir"] == str(series.series_dir)
    assert k["received_at"] == "2026-11-26T06:00:00+00:00"
    assert {"SOPInstanceUID", "ImagePositionPatient", "InstanceNumber"} <= set(k["varying_keywords"])
    assert "PatientID" not in k["varying_keywords"]
    # the malformed date is kept raw in a side field, and named in the problems; the doc still exists
    assert "PatientBirthDate" not in doc
    assert k["invalid"]["PatientBirthDate"] == "19701399"
    assert any("PatientBirthDate" in p and "0.dcm" in p for p in problems), problems


def test_segment_labels_from_seg(synthetic_series, tmp_path):
    ct = synthetic_series(slices=12)
    seg_path = make_seg(ct.files, tmp_path / "seg" / "seg.dcm", ["Liver", "Spleen"])
    doc_id, doc, problems = build_series_document(seg_path.parent)
    assert doc["kaapana"]["segment_labels"] == ["Liver", "Spleen"]
    assert doc["kaapana"]["modality"] == "SEG"
    assert doc["SegmentSequence"][0]["SegmentLabel"] == "Liver"  # SQ as an array of objects
    assert problems == []


def test_rtstruct_roi_names():
    from pydicom.data import get_testdata_file

    _, doc, _ = build_series_document(get_testdata_file("rtstruct.dcm"))
    assert doc["kaapana"]["modality"] == "RTSTRUCT"
    assert doc["kaapana"]["segment_labels"] == ["patient", "Isocenter 1", "Isocenter 2"]


def test_mixed_and_bad_input_named(tmp_path, synthetic_series):
    a = synthetic_series("a", seed=1)
    b = synthetic_series("b", seed=2)
    junk = tmp_path / "a" / "notes.txt"
    junk.write_text("not dicom")
    with pytest.raises(InvalidDicomError, match="2 series"):
        build_series_document([a.series_dir, b.series_dir])
    docs, errors = build_series_documents([a.series_dir, b.series_dir])
    assert {d.doc_id for d in docs} == {a.series_instance_uid, b.series_instance_uid}
    assert len(errors) == 1 and "notes.txt" in errors[0]
    with pytest.raises(InvalidDicomError, match="no usable DICOM"):
        build_series_document(junk)


def test_template_types_from_dictionary():
    body = build_index_template("x*")
    props = body["template"]["mappings"]["properties"]
    assert props["StudyDate"]["type"] == "date"
    assert props["PatientName"]["type"] == "text" and props["PatientName"]["fields"]["keyword"]
    assert props["SliceThickness"]["type"] == "double"
    assert props["Rows"]["type"] == "long"
    assert props["SeriesInstanceUID"]["type"] == "keyword"
    assert props["SeriesDescription"]["fields"]["text"]["type"] == "text"
    assert body["template"]["mappings"]["date_detection"] is False
    dyn = {next(iter(d)): next(iter(d.values())) for d in body["template"]["mappings"]["dynamic_templates"]}
    assert "AcquisitionDate" in dyn["dicom_date"]["match"][2:-2].split("|")
    assert "OperatorsName" in dyn["dicom_person_name"]["match"][2:-2].split("|")
    full = build_index_template("x*", explicit="all")["template"]["mappings"]["properties"]
    assert len(full) > 3000 and full["ContrastBolusStartTime"]["type"] == "keyword"


# --------------------------------------------------------------------------------------------------
# against a real server


@pytest.fixture
def corpus(synthetic_series, tmp_path):
    """Four series (two patients, CT/MR, three dates) and a SEG labelled Liver."""
    ct1 = synthetic_series("ct1", seed=11, patient_id="PAT-A", patient_name="Alpha^Anna", study_date="20250105",
                           series_description="Abdomen CT", body_part="ABDOMEN", slices=6)  # fmt: skip
    mr1 = synthetic_series("mr1", seed=12, patient_id="PAT-A", patient_name="Alpha^Anna", study_date="20250301",
                           modality="MR", series_description="T1 brain", body_part="HEAD", slices=6)  # fmt: skip
    ct2 = synthetic_series("ct2", seed=13, patient_id="PAT-B", patient_name="Beta^Bert", study_date="20250610",
                           series_description="Chest CT", body_part="CHEST", slices=6)  # fmt: skip
    seg = make_seg(ct1.files, tmp_path / "seg1" / "seg.dcm", ["Liver"])
    return {"ct1": ct1, "mr1": mr1, "ct2": ct2, "seg_dir": seg.parent}


def _index_corpus(client, index, corpus):
    assert ensure_index_template(client, index) is True
    assert ensure_index_template(client, index) is False  # idempotent: identical template kept
    paths = [corpus["ct1"].series_dir, corpus["mr1"].series_dir, corpus["ct2"].series_dir, corpus["seg_dir"]]
    docs, errors = build_series_documents(paths)
    assert errors == []
    result = bulk_index(client, index, [(d.doc_id, d.document) for d in docs], refresh=True)
    assert result.failed == {} and len(result.indexed) == 4
    return docs


def _uids(rows):
    return {r["series_instance_uid"] for r in rows}


def _check_queries(client, index, corpus):
    ct1, mr1, ct2 = corpus["ct1"], corpus["mr1"], corpus["ct2"]
    assert _uids(select_cohort(client, index, filters={"patient_id": "PAT-B"})) == {ct2.series_instance_uid}
    by_name = select_cohort(client, index, query={"match": {"PatientName": "anna"}})
    assert ct1.series_instance_uid in _uids(by_name) and mr1.series_instance_uid in _uids(by_name)
    assert ct2.series_instance_uid not in _uids(by_name)
    march_june = CohortFilter(date_from="20250201", date_to="2025-06-30")
    assert _uids(select_cohort(client, index, filters=march_june)) == {
        mr1.series_instance_uid,
        ct2.series_instance_uid,
    }
    assert _uids(select_cohort(client, index, filters={"modality": "mr"})) == {mr1.series_instance_uid}
    assert _uids(select_cohort(client, index, filters={"modality": ["CT"], "body_part": "chest"})) == {
        ct2.series_instance_uid
    }
    assert _uids(select_cohort(client, index, filters={"description_pattern": "*ct*"})) == {
        ct1.series_instance_uid,
        ct2.series_instance_uid,
    }
    liver = select_cohort(client, index, filters={"segment_label": "Liver"})
    assert len(liver) == 1 and liver[0]["study_instance_uid"] == ct1.study_instance_uid
    assert liver[0]["series_instance_uid"] not in {ct1.series_instance_uid}
    # limit and paging
    assert len(select_cohort(client, index, limit=2)) == 2
    assert len(select_cohort(client, index, limit=None, page_size=3)) == 4


def test_opensearch_end_to_end(osmem, corpus):
    client = make_search_client(osmem.url, "auto")
    assert client.flavor == "opensearch"
    index = unique_index()
    docs = _index_corpus(client, index, corpus)
    mapping = client.raw.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert mapping["StudyDate"]["type"] == "date"
    assert mapping["kaapana"]["properties"]["segment_labels"]["type"] == "keyword"
    _check_queries(client, index, corpus)

    # re-indexing replaces, never duplicates
    again, _ = build_series_documents([corpus["ct1"].series_dir])
    again[0].document["SeriesDescription"] = "Abdomen CT v2"
    result = bulk_index(client, index, [(again[0].doc_id, again[0].document)], refresh=True)
    assert result.indexed == [corpus["ct1"].series_instance_uid]
    assert client.count(index) == len(docs)
    assert client.get(index, corpus["ct1"].series_instance_uid)["SeriesDescription"] == "Abdomen CT v2"


@pytest.fixture
def es_proxy(osmem):
    proxy = SearchProxy(osmem.url).start()
    yield proxy
    proxy.stop()


def test_elasticsearch_client_end_to_end(es_proxy, corpus):
    client = make_search_client(es_proxy.url, "elasticsearch")
    from elasticsearch import Elasticsearch

    assert isinstance(client.raw, Elasticsearch)
    index = unique_index()
    _index_corpus(client, index, corpus)
    _check_queries(client, index, corpus)
    # it really was the Elasticsearch client speaking its versioned media types
    assert any("compatible-with=" in ct for ct in es_proxy.seen_content_types)
    assert any("x-ndjson; compatible-with=" in ct for ct in es_proxy.seen_content_types)


def test_bulk_retries_429_then_succeeds(es_proxy, synthetic_series):
    client = make_search_client(es_proxy.url, "opensearch")
    index = unique_index()
    ensure_index_template(client, index)
    docs, _ = build_series_documents([synthetic_series(seed=31, slices=3).series_dir])
    es_proxy.fail_path, es_proxy.fail_next, es_proxy.fail_status = "_bulk", 2, 429
    result = bulk_index(client, index, [(d.doc_id, d.document) for d in docs], refresh=True, backoff_s=0.01)
    assert result.retries == 2 and result.indexed == [docs[0].doc_id]
    es_proxy.fail_next, es_proxy.fail_status = 10, 503
    with pytest.raises(SearchIndexError, match="after 3 retries"):
        bulk_index(client, index, [(d.doc_id, d.document) for d in docs], max_retries=3, backoff_s=0.01)
    es_proxy.fail_next = 0


def test_bulk_retries_only_the_documents_answered_429(es_proxy, synthetic_series):
    client = make_search_client(es_proxy.url, "opensearch")
    index = unique_index()
    ensure_index_template(client, index)
    docs, _ = build_series_documents([synthetic_series(seed=s, slices=2).series_dir for s in (33, 34, 35)])
    es_proxy.item_fail_next = 1
    result = bulk_index(client, index, [(d.doc_id, d.document) for d in docs], refresh=True, backoff_s=0.01)
    assert result.retries == 1 and result.requests == 2
    assert sorted(result.indexed) == sorted(d.doc_id for d in docs) and result.failed == {}
    assert client.count(index) == 3


def test_bulk_reports_rejected_documents(osmem, synthetic_series):
    client = make_search_client(osmem.url, "opensearch")
    index = unique_index()
    ensure_index_template(client, index)
    good = build_series_documents([synthetic_series(seed=41, slices=2).series_dir])[0][0]
    bad = build_series_documents([synthetic_series(seed=42, slices=2).series_dir])[0][0]
    bad.document["StudyDate"] = "not-a-date"  # the template maps StudyDate as a date
    result = bulk_index(
        client, index, [(good.doc_id, good.document), (bad.doc_id, bad.document)], refresh=True
    )
    assert result.indexed == [good.doc_id]
    assert list(result.failed) == [bad.doc_id] and "HTTP 400" in result.failed[bad.doc_id]


@pytest.mark.slow
def test_every_pydicom_test_file_indexes_or_is_named(osmem, pydicom_test_files):
    docs, errors = build_series_documents(pydicom_test_files)
    covered = {str(f) for d in docs for f in d.files}
    for path in pydicom_test_files:
        named = [e for e in errors if e.startswith(str(path) + ":")]
        if path.name == "DICOMDIR":
            continue  # given by name, a DICOMDIR stands for the files its records reference
        assert str(path) in covered or named, f"{path} neither indexed nor named in an error"
    client = make_search_client(osmem.url, "opensearch")
    index = unique_index()
    ensure_index_template(client, index)
    result = bulk_index(client, index, [(d.doc_id, d.document) for d in docs], refresh=True)
    assert result.failed == {}, result.failed
    assert client.count(index) == len(docs) >= 15


def test_cohort_filter_rejects_unknown_keys():
    with pytest.raises(ValueError, match="modalty"):
        CohortFilter.from_dict({"modalty": "CT"})


def test_index_series_in_worker_processes_matches_one_process(osmem, synthetic_series, tmp_path):
    from airflow_provider_kaapana.core.index.client import index_series

    dirs = [synthetic_series(seed=s, slices=3).series_dir for s in (81, 82, 83)]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 200)
    client = make_search_client(osmem.url, "opensearch")
    reports = []
    for workers in (1, 2):
        index = unique_index()
        report = index_series(client, index, [*dirs, junk], workers=workers, refresh=True,
                              source={"called_ae_title": "KAAPANA"})  # fmt: skip
        reports.append(report)
        assert client.count(index) == 3
        assert client.get(index, report.indexed[0])["kaapana"]["source_aes"] == ["KAAPANA"]
    one, two = reports
    assert sorted(one.indexed) == sorted(two.indexed) and len(one.indexed) == 3
    assert one.instances == two.instances == 9
    assert len(one.file_errors) == len(two.file_errors) == 1 and "junk.dcm" in two.file_errors[0]


def test_partial_arrivals_merge_into_one_document(osmem, synthetic_series, tmp_path):
    import shutil

    from airflow_provider_kaapana.core.index.client import index_series

    series = synthetic_series(seed=91, slices=6)
    first, second = tmp_path / "arrival1", tmp_path / "arrival2"
    for target, files in ((first, series.files[:3]), (second, series.files[3:])):
        target.mkdir()
        for f in files:
            shutil.copy(f, target / f.name)
    client = make_search_client(osmem.url, "opensearch")
    index = unique_index()
    index_series(client, index, [(first, {"received_at": "2026-11-26T05:00:00+00:00"})], refresh=True)
    partial = client.get(index, series.series_instance_uid)["kaapana"]
    assert partial["instance_count"] == 3 and partial["instance_number"]["max"] == 3

    for _ in range(2):  # merging the same arrival twice changes nothing
        report = index_series(
            client,
            index,
            [(second, {"received_at": "2026-11-26T05:01:00+00:00"})],
            refresh=True,
            merge_instances=True,
        )
        assert report.indexed == [series.series_instance_uid]
        merged = client.get(index, series.series_instance_uid)["kaapana"]
        assert merged["instance_count"] == 6
        assert (merged["instance_number"]["min"], merged["instance_number"]["max"]) == (1, 6)
        assert merged["instance_number"]["missing"] == []
        assert merged["instance_number"]["complete"] is True
        assert merged["slice_spacing"]["positions"] == 6 and merged["slice_spacing"]["uniform"] is True
        assert merged["received_at"] == "2026-11-26T05:00:00+00:00"  # first arrival kept
    assert client.count(index) == 1
    # without merging, re-indexing replaces the document
    index_series(client, index, [first], refresh=True)
    assert client.get(index, series.series_instance_uid)["kaapana"]["instance_count"] == 3


def test_merging_the_same_instances_again_changes_nothing_even_without_sop_uids(synthetic_series):
    from airflow_provider_kaapana.core.index.document import build_series_document, merge_series_documents

    def drop_sop_uid(k, ds):
        if k == 0:
            ds.SOPInstanceUID = ""  # a broken instance without its UID

    series = synthetic_series(slices=3, rows=8, columns=8, per_instance=drop_sop_uid)
    _, doc, _ = build_series_document(series.series_dir)
    assert doc["kaapana"]["instance_count"] == 3
    merged = merge_series_documents(doc, doc)
    merged = merge_series_documents(merged, doc)
    assert merged["kaapana"]["instance_count"] == 3


def test_parallel_runs_merging_parts_of_one_series_lose_no_instance(osmem, synthetic_series, tmp_path):
    """Optimistic concurrency: 12 runs merge one part each into the same series document at once;
    every write is conditional on the version it merged with, so none overwrites another's part."""
    import shutil
    import threading

    from airflow_provider_kaapana.core.index.client import index_series

    series = synthetic_series(seed=93, slices=12, rows=16, columns=16)
    parts = []
    for k, f in enumerate(series.files):
        part = tmp_path / f"part{k}"
        part.mkdir()
        shutil.copy(f, part / f.name)
        parts.append(part)
    client = make_search_client(osmem.url, "opensearch")
    index = unique_index()
    index_series(client, index, [], refresh=True)  # the template, before the race
    start = threading.Barrier(len(parts))
    reports, errors = [], []

    def run(part):
        try:
            start.wait()
            reports.append(index_series(client, index, [part], merge_instances=True, ensure_template=False))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and all(not r.failed for r in reports), (errors, [r.failed for r in reports])
    client.refresh(index)
    document = client.get(index, series.series_instance_uid)["kaapana"]
    assert document["instance_count"] == 12
    assert document["instance_number"]["missing"] == [] and document["instance_number"]["complete"] is True
    assert client.count(index) == 1


@pytest.mark.parametrize("indexed_before", [True, False], ids=["over-a-version", "create"])
def test_merge_conflict_is_merged_again_and_counted(osmem, synthetic_series, tmp_path, indexed_before):
    """Another run writes the series document between this run's read and its conditional write: the
    write is refused (HTTP 409), counted in ``merge_conflicts``, and the document read, merged and
    written again, so the instances of all parts are kept. ``create``: there was no document yet."""
    import shutil

    from airflow_provider_kaapana.core.index.client import index_series

    series = synthetic_series(seed=94, slices=6, rows=16, columns=16)
    parts = []
    for k in range(3):
        part = tmp_path / f"part{k}"
        part.mkdir()
        for f in series.files[2 * k : 2 * k + 2]:
            shutil.copy(f, part / f.name)
        parts.append(part)
    mine, theirs, first = parts
    index = unique_index()
    other = make_search_client(osmem.url, "opensearch")
    index_series(other, index, [first] if indexed_before else [], refresh=True)
    client = make_search_client(osmem.url, "opensearch")
    read = client.get_versioned
    interleaved = []

    def read_then_another_run_writes(index_name, doc_id):
        found = read(index_name, doc_id)
        if not interleaved:  # once: between this read and the write that is conditional on it
            interleaved.append(index_series(other, index_name, [theirs], merge_instances=True))
        return found

    client.get_versioned = read_then_another_run_writes
    report = index_series(client, index, [mine], merge_instances=True, refresh=True)

    assert interleaved and interleaved[0].merge_conflicts == 0 and not interleaved[0].failed
    assert report.merge_conflicts == 1 and report.failed == {}
    assert report.as_dict()["merge_conflicts"] == 1
    document = client.get(index, series.series_instance_uid)["kaapana"]
    want = 6 if indexed_before else 4
    assert document["instance_count"] == want
    assert client.count(index) == 1


def _without_times(docs) -> dict:
    out = {}
    for d in docs:
        kaapana = {k: v for k, v in d.document["kaapana"].items() if k not in ("indexed_at", "received_at")}
        out[d.doc_id] = ({**d.document, "kaapana": kaapana}, d.problems, d.files)
    return out


def test_raw_header_reader_gives_the_documents_pydicom_gives(
    synthetic_series, pydicom_test_files, monkeypatch
):
    # Instances other than the first are read by the element walker (read_raw_header); the documents
    # must be those of reading every header with pydicom, for plain series and for pydicom's odd files
    # (big endian, deflated, no preamble, sequences of undefined length...).
    from airflow_provider_kaapana.core.index import document

    same, differ = synthetic_series(seed=51, slices=3), synthetic_series(seed=52, slices=3)
    # a sequence of undefined length in one instance and the same items of defined length in the
    # others: not a varying keyword; items that differ: varying
    for series in (same, differ):
        for i, path in enumerate(series.files):
            ds = pydicom.dcmread(path)
            item = pydicom.Dataset()
            item.CodeValue, item.CodingSchemeDesignator = "T-D0050", "SRT"
            item.CodeMeaning = "Other" if series is differ and i == 2 else "Tissue"
            ds.AnatomicRegionSequence = [item]
            ds.AnatomicRegionSequence.is_undefined_length = i == 0
            ds.save_as(path)
    assert isinstance(document.read_raw_header(same.files[1]), document.RawHeader)
    inputs = [same.series_dir, differ.series_dir, *pydicom_test_files]
    fast_docs, fast_errors = build_series_documents(inputs)
    monkeypatch.setattr(document, "read_raw_header", lambda path: None)
    slow_docs, slow_errors = build_series_documents(inputs)
    assert fast_errors == slow_errors
    assert _without_times(fast_docs) == _without_times(slow_docs)
    varying = {d.doc_id: d.document["kaapana"]["varying_keywords"] for d in fast_docs}
    assert "AnatomicRegionSequence" not in varying[same.series_instance_uid]
    assert "AnatomicRegionSequence" in varying[differ.series_instance_uid]
