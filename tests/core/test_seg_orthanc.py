"""A real Orthanc accepts our SEG by C-STORE and STOW-RS and returns it, intact, by WADO-RS."""

from __future__ import annotations

import io
import json
import re
import uuid

import numpy as np
import pydicom
import requests
from pynetdicom import AE
from pynetdicom.sop_class import SegmentationStorage

from airflow_provider_kaapana.core.seg.export import export_seg
from tests.core.test_seg import DATASET_JSON, THREE_SHAPES, save_label_map


def _c_store(orthanc, ds) -> int:
    ae = AE(ae_title="KAAPANA_TEST")
    ae.add_requested_context(SegmentationStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def _stow(orthanc, path) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        f"{orthanc.dicomweb_url}/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        auth=orthanc.auth,
        timeout=60,
    )


def _wado_instances(orthanc, study_uid: str, series_uid: str) -> list[pydicom.Dataset]:
    r = requests.get(
        f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{series_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        auth=orthanc.auth,
        timeout=60,
    )
    r.raise_for_status()
    boundary = re.search(r'boundary="?([^";]+)"?', r.headers["Content-Type"]).group(1).encode()
    datasets = []
    for part in r.content.split(b"--" + boundary):
        if b"\r\n\r\n" not in part:
            continue
        payload = part.split(b"\r\n\r\n", 1)[1]
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        if len(payload) > 132 and payload[128:132] == b"DICM":
            datasets.append(pydicom.dcmread(io.BytesIO(payload)))
    return datasets


def test_orthanc_accepts_seg_by_c_store_and_stow_and_returns_it_by_wado(orthanc, synthetic_series, tmp_path):
    series = synthetic_series(orientation="oblique", shapes=THREE_SHAPES, seed=4711, patient_id="SEGPACS01")
    label_map = save_label_map(series, tmp_path / "labels.nii.gz")
    config = tmp_path / "dataset.json"
    config.write_text(json.dumps(DATASET_JSON))
    by_dimse = export_seg(label_map, series.series_dir, config, tmp_path / "a.dcm", model_id="orthanc-dimse")
    by_web = export_seg(label_map, series.series_dir, config, tmp_path / "b.dcm", model_id="orthanc-web")

    assert _c_store(orthanc, pydicom.dcmread(by_dimse.seg_path)) == 0x0000
    response = _stow(orthanc, by_web.seg_path)
    assert response.status_code == 200, response.text
    stored = response.json()["00081199"]["Value"]
    assert [item["00081155"]["Value"][0] for item in stored] == [by_web.seg_sop_instance_uid]

    for result in (by_dimse, by_web):
        returned = _wado_instances(orthanc, series.study_instance_uid, result.seg_series_instance_uid)
        assert [ds.SOPInstanceUID for ds in returned] == [result.seg_sop_instance_uid]
        original = pydicom.dcmread(result.seg_path)
        back = returned[0]
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert back.NumberOfFrames == original.NumberOfFrames
        assert [s.SegmentLabel for s in back.SegmentSequence] == ["liver", "tumor", "kidney_left"]
        np.testing.assert_array_equal(back.pixel_array, original.pixel_array)

    # a re-run (same source, model, configuration) has the same UIDs: the PACS still holds one instance
    again = export_seg(label_map, series.series_dir, config, tmp_path / "c.dcm", model_id="orthanc-web")
    assert _stow(orthanc, again.seg_path).status_code == 200
    qido = requests.get(
        f"{orthanc.dicomweb_url}/studies/{series.study_instance_uid}/series/{by_web.seg_series_instance_uid}/instances",
        auth=orthanc.auth,
        timeout=30,
    )
    assert qido.status_code == 200
    assert len(qido.json()) == 1
