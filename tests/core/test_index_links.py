"""Series documents with a viewer link and a thumbnail, indexed into a real osmem-server; the report of an
ingest run that shows both."""

from __future__ import annotations

import base64
import shutil
import uuid

import pydicom

from airflow_provider_kaapana.core.index.client import index_series, make_search_client
from airflow_provider_kaapana.core.index.template import build_index_template
from airflow_provider_kaapana.core.ingest import write_report_html
from airflow_provider_kaapana.core.workspace import RunWorkspace

OHIF = "https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"


def test_documents_carry_viewer_url_and_thumbnail(osmem, synthetic_series, tmp_path):
    image = synthetic_series(seed=301, slices=5)
    sr_dir = tmp_path / "sr"
    sr_dir.mkdir()
    ds = pydicom.dcmread(image.files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.301"
    ds.save_as(sr_dir / "sr.dcm")
    workspace = RunWorkspace(tmp_path / "ws", "kaapana_ingest", "manual__links")
    client = make_search_client(osmem.url, "opensearch")
    index = f"kaapana-links-{uuid.uuid4().hex[:8]}"

    report = index_series(
        client, index, [image.series_dir, sr_dir], refresh=True, viewer_url=OHIF, thumbnails=workspace
    )
    assert sorted(report.indexed) == sorted([image.series_instance_uid, ds.SeriesInstanceUID])
    stored = client.get(index, image.series_instance_uid)["kaapana"]
    expected = (
        "https://ohif.example.org/viewer?StudyInstanceUIDs="
        f"{image.study_instance_uid}&SeriesInstanceUIDs={image.series_instance_uid}"
    )
    assert stored["viewer_url"] == expected
    png = workspace.step_dir(image.series_instance_uid, "index", create=False) / "thumbnail.png"
    assert report.thumbnails == {image.series_instance_uid: str(png)}
    assert stored["thumbnail"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert stored["thumbnail_of"]["slice_count"] == 5
    # the SR is indexed with its link but without a picture, and the report says why
    sr_doc = client.get(index, ds.SeriesInstanceUID)["kaapana"]
    assert "thumbnail" not in sr_doc and sr_doc["viewer_url"].endswith(ds.SeriesInstanceUID)
    assert "structured report" in report.no_thumbnail[ds.SeriesInstanceUID]
    assert report.as_dict()["viewer_urls"][image.series_instance_uid] == expected

    # later arrivals merged: without a picture, or with one of fewer slices, the first one's stays
    later = tmp_path / "later"
    later.mkdir()
    shutil.copy(image.files[0], later / "again.dcm")
    index_series(client, index, [later], refresh=True, merge_instances=True)
    merged = client.get(index, image.series_instance_uid)["kaapana"]
    assert merged["thumbnail"] == stored["thumbnail"] and merged["viewer_url"] == expected
    index_series(client, index, [later], refresh=True, merge_instances=True, thumbnails=workspace)
    merged = client.get(index, image.series_instance_uid)["kaapana"]
    assert merged["thumbnail"] == stored["thumbnail"] and merged["thumbnail_of"]["slice_count"] == 5


def test_template_keeps_link_and_thumbnail_out_of_the_search_index():
    kaapana = build_index_template()["template"]["mappings"]["properties"]["kaapana"]["properties"]
    assert kaapana["viewer_url"] == {"type": "keyword", "index": False}
    assert kaapana["thumbnail"] == {"type": "keyword", "index": False, "doc_values": False}
    assert kaapana["thumbnail_of"] == {"type": "object", "enabled": False}


def test_run_report_shows_thumbnail_and_viewer_link(synthetic_series, tmp_path):
    workspace = RunWorkspace(tmp_path / "ws", "kaapana_ingest", "manual__report")
    png = workspace.step_dir("1.2.3", "index") / "thumbnail.png"
    png.write_bytes(b"png")
    validated = [
        {"series_instance_uid": "1.2.3", "instances": 4, "quarantined": []},
        {"series_instance_uid": "1.2.4", "instances": 1, "quarantined": ["x.dcm: not DICOM"]},
    ]
    indexed = {
        "thumbnails": {"1.2.3": str(png)},
        "no_thumbnail": {"1.2.4": "series 1.2.4: no image slice to show (a DICOM SEG)"},
        "viewer_urls": {"1.2.3": "https://v.example/viewer?StudyInstanceUIDs=1.2&a=<b>"},
    }
    path = write_report_html({"message": "5 stored, 1 quarantined"}, validated, indexed, workspace.root)
    assert path == workspace.root / "report.html"
    html = path.read_text()
    assert "5 stored, 1 quarantined" in html
    assert '<img src="batch/1.2.3/index/thumbnail.png"' in html  # relative: the run folder opens anywhere
    assert '<a href="https://v.example/viewer?StudyInstanceUIDs=1.2&amp;a=&lt;b&gt;">' in html
    assert "no image slice to show (a DICOM SEG)" in html and "1 set aside" in html
