"""One bad file or document never sinks an index run (issue 19 item 5), against a real osmem-server.

A 602-character SeriesInstanceUID made the server refuse the whole bulk request (id over 512 bytes):
0 documents indexed. ``1.2.3/../../_bulk`` was indexed as an id. Now invalid UIDs are refused per
file before indexing, naming the file; a request the server refuses as a whole is split until the one
bad document is found; legacy UIDs with leading zeros are indexed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import warnings

from airflow_provider_kaapana.core.index.client import bulk_index, ensure_index_template, make_search_client
from airflow_provider_kaapana.core.index.document import build_series_documents
from airflow_provider_kaapana.testing.local_services import free_port

LONG_UID = "1." + "2" * 600
BULK_UID = "1.2.3/../../_bulk"
LEGACY_UID = "1.2.840.0113654.2.70.1.01"  # leading zeros: legacy data


def kaapana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args], capture_output=True, text=True, timeout=180
    )


def test_index_cli_refuses_invalid_uids_per_file_and_indexes_the_rest(osmem, synthetic_series, tmp_path):
    good = synthetic_series("good", seed=51, slices=3)
    legacy = synthetic_series("legacy", seed=52, slices=3, series_instance_uid=LEGACY_UID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long_ = synthetic_series("long", seed=53, slices=2, series_instance_uid=LONG_UID)
        bulk = synthetic_series("bulk", seed=54, slices=2, series_instance_uid=BULK_UID)
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM at all, just some notes about the study\n" * 5)
    index = f"hostile-{uuid.uuid4().hex[:8]}"
    dirs = [str(s.series_dir) for s in (good, long_, bulk, legacy)]
    proc = kaapana("index", *dirs, str(notes), "--url", osmem.url, "--flavor", "opensearch", "--index", index)
    assert proc.returncode == 1, proc.stderr  # partial failure, the others indexed
    assert "Traceback" not in proc.stderr
    assert "indexed 2 series (6 instances)" in proc.stdout
    for series in (long_, bulk):
        for path in series.files:
            assert f"not indexed: {path}: SeriesInstanceUID" in proc.stderr
    assert "not a valid DICOM UID" in proc.stderr and "'1.2.3/../../_bulk'" in proc.stderr
    assert f"not indexed: {notes}: not a DICOM file" in proc.stderr
    assert "has no SeriesInstanceUID" not in proc.stderr

    client = make_search_client(osmem.url, "opensearch")
    client.refresh(index)
    assert client.count(index) == 2
    assert client.get(index, good.series_instance_uid) is not None
    assert client.get(index, LEGACY_UID)["SeriesInstanceUID"] == LEGACY_UID

    report = kaapana(
        "index", dirs[1], "--url", osmem.url, "--flavor", "opensearch", "--index", index, "--json"
    )
    assert report.returncode == 1
    assert len(json.loads(report.stdout)["file_errors"]) == 2


def test_a_request_refused_as_a_whole_is_split_to_the_one_bad_document(osmem, synthetic_series):
    """Built without the per-file check (a caller's own ids): the server's whole-request refusal of an
    id over 512 bytes is narrowed down to that document; the others are indexed."""
    client = make_search_client(osmem.url, "opensearch")
    index = f"split-{uuid.uuid4().hex[:8]}"
    ensure_index_template(client, index)
    docs = [
        build_series_documents([synthetic_series(seed=s, slices=2).series_dir])[0][0]
        for s in (61, 62, 63, 64)
    ]
    pairs = [(d.doc_id, d.document) for d in docs]
    pairs[2] = ("1." + "3" * 600, pairs[2][1])
    result = bulk_index(client, index, pairs, refresh=True, backoff=0.01)
    assert sorted(result.indexed) == sorted(p[0] for i, p in enumerate(pairs) if i != 2)
    assert list(result.failed) == [pairs[2][0]] and "HTTP 400" in result.failed[pairs[2][0]]
    assert client.count(index) == 3
    assert result.requests >= 3  # the whole request, then its halves


def test_index_cli_with_server_down_is_one_clean_error(ct_series):
    url = f"http://127.0.0.1:{free_port()}"
    for flavor in ("auto", "opensearch", "elasticsearch"):
        proc = kaapana("index", str(ct_series.series_dir), "--url", url, "--flavor", flavor)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.startswith("kaapana index:") and url in proc.stderr
