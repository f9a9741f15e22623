"""PacsHook, DicomReceiveOperator, DicomSendOperator (via dag.test) and ``kaapana send`` against real Orthancs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pydicom
import pytest

from airflow_provider_kaapana.core.listener.server import DicomListener
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.testing.local_services import free_port


def conn_json(pacs, *, dicomweb=True, auth=True, **extra) -> str:
    body = {
        "conn_type": "kaapana_pacs",
        "host": "127.0.0.1",
        "port": pacs.dicom_port,
        "extra": {"called_ae": pacs.aet, "calling_ae": "KAAPANA", "retries": 1, **extra},
    }
    if dicomweb:
        body["extra"]["dicomweb_url"] = pacs.dicomweb_url
    if auth and pacs.auth:
        body["login"], body["password"] = pacs.auth
    return json.dumps(body)


def instances_in(pacs, study_uid: str, series_uid: str) -> set[str]:
    web = DicomWebClient(pacs.dicomweb_url, auth=pacs.auth)
    return {
        i["00080018"]["Value"][0]
        for i in web.qido("instances", study_instance_uid=study_uid, series_instance_uid=series_uid)
    }


def test_provider_registers_the_connection_type():
    from airflow_provider_kaapana.get_provider_info import get_provider_info
    from airflow_provider_kaapana.hooks.pacs import PacsHook

    types = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    assert types["kaapana_pacs"]["hook-class-name"] == "airflow_provider_kaapana.hooks.pacs.PacsHook"
    assert PacsHook.default_conn_name == "kaapana_pacs_default"
    fields = types["kaapana_pacs"]["conn-fields"]
    assert {"called_ae", "calling_ae", "dicomweb_url", "auth_type", "dimse_tls"} <= set(fields)
    assert PacsHook.get_ui_field_behaviour()["relabeling"]["port"] == "DIMSE port"


def test_viewer_extras_registration_and_refusal(monkeypatch):
    from airflow.sdk import BaseOperatorLink

    from airflow_provider_kaapana.exceptions import PacsError
    from airflow_provider_kaapana.get_provider_info import get_provider_info
    from airflow_provider_kaapana.hooks.pacs import PacsHook
    from airflow_provider_kaapana.operators.dicom_seg_export import DicomSegExportOperator
    from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
    from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator
    from airflow_provider_kaapana.operators.links import ViewerLink
    from airflow_provider_kaapana.operators.segment_statistics import SegmentStatisticsOperator

    info = get_provider_info()
    (link_path,) = info["extra-links"]
    module, _, name = link_path.rpartition(".")
    link_class = getattr(__import__(module, fromlist=[name]), name)
    assert (
        link_class is ViewerLink
        and issubclass(ViewerLink, BaseOperatorLink)
        and ViewerLink().name == "Viewer"
    )
    for operator in (
        DicomSendOperator,
        DicomSegExportOperator,
        SegmentStatisticsOperator,
        ElasticIndexOperator,
    ):
        assert [type(link) for link in operator.operator_extra_links] == [ViewerLink], operator
    # what the API server holds: the link by name and XCom key (the URL the worker kept when the task ended)
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag

    served = DagSerialization.from_dict(DagSerialization.to_dict(create_ingest_dag()))
    for task_id in ("store", "index"):
        links = served.get_task(task_id).operator_extra_links
        assert [(link.name, link.xcom_key) for link in links] == [("Viewer", "_link_ViewerLink")]
    pacs = next(c for c in info["connection-types"] if c["connection-type"] == "kaapana_pacs")
    assert "{study_uid}" in pacs["conn-fields"]["viewer_url"]["description"]
    assert pacs["conn-fields"]["viewer"]["schema"]["enum"] == [
        "custom",
        "ohif",
        "dcm4chee",
        "orthanc-explorer-2",
        "stone",
    ]
    assert "{study_uid}" in pacs["ui-field-behaviour"]["placeholders"]["viewer_url"]

    def conn(**extra) -> str:
        return json.dumps({"conn_type": "kaapana_pacs", "host": "127.0.0.1", "extra": extra})

    monkeypatch.setenv("AIRFLOW_CONN_PACS_NO_VIEWER", conn())
    assert PacsHook("pacs_no_viewer").viewer is None
    monkeypatch.setenv("AIRFLOW_CONN_PACS_OHIF", conn(viewer="ohif", viewer_url="https://ohif.test"))
    assert PacsHook("pacs_ohif").viewer.url("1.2") == "https://ohif.test/viewer?StudyInstanceUIDs=1.2"
    monkeypatch.setenv("AIRFLOW_CONN_PACS_BAD_VIEWER", conn(viewer_url="https://v.test/{study}"))
    with pytest.raises(
        PacsError, match=r"connection 'pacs_bad_viewer': .*unknown placeholder\(s\) \{study\}"
    ):
        _ = PacsHook("pacs_bad_viewer").viewer


def test_hook_test_connection_and_auth(orthanc_auth, monkeypatch):
    from airflow_provider_kaapana.hooks.pacs import PacsHook

    monkeypatch.setenv("AIRFLOW_CONN_PACS_OK", conn_json(orthanc_auth))
    ok, message = PacsHook("pacs_ok").test_connection()
    assert ok, message
    assert "C-ECHO to ORTHANC@127.0.0.1" in message and "QIDO-RS" in message and "skipped" not in message

    # each configured interface is checked, the others named as skipped
    dimse_only = json.loads(conn_json(orthanc_auth))
    del dimse_only["extra"]["dicomweb_url"]
    monkeypatch.setenv("AIRFLOW_CONN_PACS_DIMSE_ONLY", json.dumps(dimse_only))
    ok, message = PacsHook("pacs_dimse_only").test_connection()
    assert ok and "DICOMweb skipped (no dicomweb_url)" in message
    web_only = json.loads(conn_json(orthanc_auth))
    web_only["host"] = ""
    monkeypatch.setenv("AIRFLOW_CONN_PACS_WEB_ONLY", json.dumps(web_only))
    ok, message = PacsHook("pacs_web_only").test_connection()
    assert ok and message.startswith("DIMSE skipped (no host); QIDO-RS at"), message
    monkeypatch.setenv("AIRFLOW_CONN_PACS_NOTHING", json.dumps({"conn_type": "kaapana_pacs"}))
    ok, message = PacsHook("pacs_nothing").test_connection()
    assert not ok and "DIMSE skipped" in message and "DICOMweb skipped" in message

    monkeypatch.setenv("AIRFLOW_CONN_PACS_NOAUTH", conn_json(orthanc_auth, auth=False))
    ok, message = PacsHook("pacs_noauth").test_connection()
    assert not ok and "HTTP 401" in message

    bearer = json.loads(conn_json(orthanc_auth))
    bearer["extra"]["auth_type"] = "bearer"
    bearer["password"] = "not-a-token"
    monkeypatch.setenv("AIRFLOW_CONN_PACS_BEARER", json.dumps(bearer))
    hook = PacsHook("pacs_bearer")
    assert hook.dicomweb.session.headers["Authorization"] == "Bearer not-a-token"
    assert not hook.test_connection()[0]  # Orthanc wants basic auth: refused
    assert "not-a-token" not in repr(hook.dicomweb)

    down = json.loads(conn_json(orthanc_auth))
    down["port"] = free_port()
    monkeypatch.setenv("AIRFLOW_CONN_PACS_DOWN", json.dumps(down))
    ok, message = PacsHook("pacs_down").test_connection()
    assert not ok and f"C-ECHO with PACS ORTHANC@127.0.0.1:{down['port']}" in message


@pytest.mark.slow
@pytest.mark.parametrize("method", ["c-get", "c-move", "wado-rs"])
def test_dag_fetches_series_from_pacs_and_sends_them_on(
    method, airflow_db, orthanc_factory, orthanc_auth, synthetic_series, tmp_path, monkeypatch
):
    from tests.dags.dicom_io import dicom_io

    move_port = free_port()
    source = orthanc_factory(modalities={"KAAPANA": ("KAAPANA", "127.0.0.1", move_port)})
    first = synthetic_series(slices=3, rows=16, columns=16, patient_id="POP1")
    second = synthetic_series(slices=2, rows=16, columns=16, patient_id="POP2", seed=7)
    dimse.store(dimse.DimsePeer("127.0.0.1", source.dicom_port, source.aet), first.files + second.files)
    monkeypatch.setenv("AIRFLOW_CONN_KAAPANA_TEST_SOURCE", conn_json(source, move_port=move_port))
    monkeypatch.setenv("AIRFLOW_CONN_KAAPANA_TEST_TARGET", conn_json(orthanc_auth))
    series = [
        {"study_instance_uid": first.study_instance_uid, "series_instance_uid": first.series_instance_uid},
        {"study_instance_uid": second.study_instance_uid},  # study only: every series of it
    ]
    conf = {"series": series, "method": method, "workspace_base": str(tmp_path / "ws")}
    dag_run = dicom_io.test(run_conf=conf)
    assert dag_run.state == "success"
    workspace = RunWorkspace(tmp_path / "ws", "kaapana_test_dicom_io", dag_run.run_id)
    for s in (first, second):
        dicom_dir = workspace.step_dir(s.series_instance_uid, "dicom", create=False)
        stored = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in dicom_dir.glob("*.dcm")}
        sent = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in s.files}
        assert stored.keys() == sent.keys() and all(stored[k] == sent[k] for k in sent)
        assert instances_in(orthanc_auth, s.study_instance_uid, s.series_instance_uid) == set(
            s.sop_instance_uids
        )


@pytest.mark.slow
def test_dag_from_listener_landing_zone(
    airflow_db, orthanc_factory, synthetic_series, tmp_path, monkeypatch, tool
):
    from tests.dags.dicom_io import dicom_landing

    target = orthanc_factory()
    monkeypatch.setenv("AIRFLOW_CONN_KAAPANA_TEST_TARGET", conn_json(target, dicomweb=False))
    series = synthetic_series(slices=4, rows=16, columns=16)
    batches = []
    with DicomListener(
        tmp_path / "landing", port=0, quiet_seconds=0.2, on_series_complete=batches.append
    ) as lst:
        first = subprocess.run(
            [tool("storescu"), "-aec", "KAAPANA", "127.0.0.1", str(lst.port), *map(str, series.files[:3])],
            capture_output=True,
        )
        assert first.returncode == 0
        deadline = time.monotonic() + 10
        while not batches and time.monotonic() < deadline:
            time.sleep(0.05)
        late = subprocess.run(
            [tool("storescu"), "-aec", "KAAPANA", "127.0.0.1", str(lst.port), str(series.files[3])],
            capture_output=True,
        )
        assert late.returncode == 0
        while len(batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(batches) == 2
    runs = []
    for batch in batches:
        conf = {**batch.conf(), "workspace_base": str(tmp_path / "ws")}
        dag_run = dicom_landing.test(run_conf=conf)
        assert dag_run.state == "success"
        runs.append(RunWorkspace(tmp_path / "ws", "kaapana_test_dicom_landing", dag_run.run_id))
    # each run holds only its own batch: none lost, none processed twice
    counts = [
        len(list(r.step_dir(series.series_instance_uid, "dicom", create=False).glob("*.dcm"))) for r in runs
    ]
    assert counts == [3, 1]
    assert instances_in(target, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )


@pytest.mark.slow
def test_dag_ingests_cd_media_by_hand(airflow_db, orthanc_factory, tmp_path, monkeypatch):
    """A run by hand on CD media (DICOMDIR, files without extension): every series reaches the PACS."""
    from pydicom.data import get_testdata_file
    from pydicom.fileset import FileSet

    from tests.dags.dicom_io import dicom_landing

    target = orthanc_factory()
    monkeypatch.setenv("AIRFLOW_CONN_KAAPANA_TEST_TARGET", conn_json(target, dicomweb=False))
    fs = FileSet()
    originals = [pydicom.dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    for ds in originals:
        fs.add(ds)
    fs.write(tmp_path / "cd")
    conf = {"series_dir": str(tmp_path / "cd"), "workspace_base": str(tmp_path / "ws")}
    dag_run = dicom_landing.test(run_conf=conf)
    assert dag_run.state == "success"
    for ds in originals:
        assert instances_in(target, ds.StudyInstanceUID, ds.SeriesInstanceUID) == {ds.SOPInstanceUID}
    assert (tmp_path / "cd" / "DICOMDIR").exists()  # a run by hand deletes nothing


def test_receive_operator_is_idempotent(orthanc, synthetic_series, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from airflow_provider_kaapana.operators.dicom_receive import COMPLETE_MARKER, DicomReceiveOperator

    series = synthetic_series(slices=2, rows=16, columns=16, patient_id="PIDEM")
    dimse.store(dimse.DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet), series.files)
    monkeypatch.setenv("AIRFLOW_CONN_KAAPANA_PACS_DEFAULT", conn_json(orthanc))
    op = DicomReceiveOperator(
        task_id="receive",
        series={
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
        },
        method="wado-rs",
        workspace_base=str(tmp_path),
    )
    context = {"dag_run": SimpleNamespace(dag_id="d"), "run_id": "manual__1"}
    first = op.execute(context)  # one series in: one dict out, as a mapped chain passes it on
    files = sorted(p.name for p in (tmp_path / "d" / "manual__1" / "batch").rglob("*.dcm"))
    assert len(files) == 2 and first["series_dir"].endswith(f"{series.series_instance_uid}/dicom")
    marker = tmp_path / "d" / "manual__1" / "batch" / series.series_instance_uid / "dicom" / COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert op.execute(context) == first
    assert marker.stat().st_mtime_ns == stamp  # not fetched again
    with pytest.raises(Exception, match="not a valid DICOM UID"):
        DicomReceiveOperator(
            task_id="bad",
            series={"study_instance_uid": "1.2", "series_instance_uid": "../x"},
            workspace_base=str(tmp_path),
        ).execute(context)


def test_send_cli_dimse_and_dicomweb(orthanc_auth, orthanc, synthetic_series, tmp_path):
    series = synthetic_series(slices=3, rows=16, columns=16, patient_id="PCLI")
    cli = [sys.executable, "-m", "airflow_provider_kaapana", "send"]
    dimse_run = subprocess.run(
        [
            *cli,
            str(series.series_dir),
            "--dimse",
            f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            "--verify",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dimse_run.returncode == 0, dimse_run.stdout + dimse_run.stderr
    assert "3 instances stored" in dimse_run.stdout and "verified" in dimse_run.stdout
    web_run = subprocess.run(
        [
            *cli,
            *map(str, series.files),
            "--dicomweb",
            orthanc_auth.dicomweb_url,
            "--user",
            "kaapana",
            "--verify",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "KAAPANA_PACS_PASSWORD": "s3cret-pw"},
    )
    assert web_run.returncode == 0, web_run.stdout + web_run.stderr
    assert instances_in(orthanc_auth, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )
    down = subprocess.run(
        [
            *cli,
            str(series.series_dir),
            "--dimse",
            f"DCM4CHEE@127.0.0.1:{free_port()}",
            "--retries",
            "1",
            "--backoff",
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 1 and "C-STORE to PACS DCM4CHEE@127.0.0.1" in down.stderr  # errors go to stderr
