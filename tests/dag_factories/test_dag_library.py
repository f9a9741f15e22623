"""The DAG library (ingest, re-index, send, install model; segmentation's form) run by ``dag.test()``.

Real Orthancs, a real osmem-server and the Airflow metadata DB; the DAGs are the factories' configured
variants in ``tests/dags/library_variants.py`` (settings from ``KAAPANA_TEST_LIB_*`` environment variables).
"""

from __future__ import annotations

import copy
import importlib
import json
import time
import uuid
from pathlib import Path

import pytest

from airflow_provider_kaapana.core.listener.server import DicomListener, SeriesBatch, run_conf
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.core.nnunet.models import export_model_zip

pytestmark = pytest.mark.slow


VIEWER = "http://viewer.test/viewer?StudyInstanceUIDs={study_uid}&SeriesInstanceUIDs={series_uid}"


def pacs_conn(pacs) -> str:
    return json.dumps(
        {
            "conn_type": "kaapana_pacs",
            "host": "127.0.0.1",
            "port": pacs.dicom_port,
            "extra": {
                "called_ae": pacs.aet,
                "calling_ae": "KAAPANA",
                "dicomweb_url": pacs.dicomweb_url,
                "viewer_url": VIEWER,
            },
        }
    )


def instances_in(pacs, study_uid: str, series_uid: str) -> set[str]:
    web = DicomWebClient(pacs.dicomweb_url, auth=pacs.auth)
    return {
        i["00080018"]["Value"][0]
        for i in web.qido("instances", study_instance_uid=study_uid, series_instance_uid=series_uid)
    }


class Library:
    """The reloaded variants module plus what the test configured for it."""

    def __init__(self, module, tmp_path: Path, index: str, pacs) -> None:
        self.module = module
        self.workspace = tmp_path / "ws"
        self.models_dir = tmp_path / "models"
        self.index = index
        self.pacs = pacs

    def search_client(self):
        from airflow_provider_kaapana.hooks.search import SearchHook

        return SearchHook(search_conn_id="test_lib_search").get_client()

    def count(self, series_uid: str | None = None) -> int:
        client = self.search_client()
        client.refresh(self.index)
        query = {"term": {"SeriesInstanceUID": series_uid}} if series_uid else None
        return client.count(self.index, query)


@pytest.fixture
def new_series(synthetic_series):
    """Synthetic series with fresh UIDs (a seed of its own): the session Orthanc is shared."""
    return lambda **spec: synthetic_series(rows=16, columns=16, seed=uuid.uuid4().int % 10**9, **spec)


@pytest.fixture
def lib(airflow_db, orthanc, osmem, tmp_path, monkeypatch) -> Library:
    """Variants configured for this test: own workspace, models dir and index; the session Orthanc."""
    return make_lib(orthanc, osmem, tmp_path, monkeypatch)


def make_lib(pacs, osmem, tmp_path, monkeypatch) -> Library:
    index = f"kaapana-test-lib-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("KAAPANA_TEST_LIB_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("KAAPANA_TEST_LIB_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("KAAPANA_TEST_LIB_INDEX", index)
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LIB_PACS", pacs_conn(pacs))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEST_LIB_SEARCH",
        json.dumps(
            {
                "conn_type": "kaapana_search",
                "host": "127.0.0.1",
                "port": osmem.port,
                "extra": {"flavor": "opensearch"},
            }
        ),
    )
    import tests.dags.library_variants as variants

    return Library(importlib.reload(variants), tmp_path, index, pacs)


def xcom(dag_run, task_id: str, map_index: int = -1):
    """(state, return value) of one task instance of the run."""
    (ti,) = [t for t in dag_run.get_task_instances() if t.task_id == task_id and t.map_index == map_index]
    return ti.state, ti.xcom_pull(task_ids=task_id, map_indexes=map_index)


def removed_from_landing(dag_run) -> list[str]:
    """What the ingest run's ``report`` cleared from the landing zone (its summary, also when it failed)."""
    (ti,) = [t for t in dag_run.get_task_instances() if t.task_id == "report"]
    summary = ti.xcom_pull(task_ids="report") or ti.xcom_pull(task_ids="report", key="summary")
    return summary["removed_from_landing"]


def landing_batch(series, files: list[Path], number: int = 1) -> SeriesBatch:
    """The batch manifest the listener would have written for ``files`` of ``series`` (in its folder)."""
    landing = series.series_dir
    batch = SeriesBatch(
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        series_dir=str(landing),
        batch=number,
        files=[f.name for f in files],
        calling_ae="MODALITY",
        called_ae="KAAPANA",
        created=float(number),
        manifest=str(landing.parent / f"{series.series_instance_uid}.b{number:04d}.json"),
    )
    batch.save()
    return batch


# --- ingest ---------------------------------------------------------------------------------------


def received_by_listener(series, landing: Path) -> SeriesBatch:
    """Send ``series`` by C-STORE to a real listener; the one batch it announces."""
    batches: list[SeriesBatch] = []
    with DicomListener(
        landing, port=0, quiet_seconds=0.2, fsync=False, on_series_complete=batches.append
    ) as listener:
        dimse.store(dimse.DimsePeer("127.0.0.1", listener.port, "KAAPANA", "MODALITY"), series.files)
        deadline = time.monotonic() + 15
        while not batches and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(batches) == 1, batches
    return batches[0]


@pytest.mark.parametrize("variant", ["ingest", "ingest_stow"])
def test_ingest_listener_batch_stores_indexes_and_clears_the_landing_zone(variant, lib, new_series, tmp_path):
    series = new_series(slices=4)
    batch = received_by_listener(series, tmp_path / "landing")
    landed = [Path(batch.series_dir) / name for name in batch.files]
    assert len(landed) == 4 and all(f.exists() for f in landed)
    dag_run = getattr(lib.module, variant).test(run_conf=batch.conf())
    assert dag_run.state == "success"
    assert instances_in(lib.pacs, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )
    assert lib.count(series.series_instance_uid) == 1
    assert not any(f.exists() for f in landed)
    assert sorted(removed_from_landing(dag_run)) == sorted(map(str, landed))


def test_ingest_links_the_viewer_and_reports_thumbnails(lib, new_series):
    """The store and index tasks' Viewer links, the document's viewer_url and thumbnail, the run's report."""
    series = new_series(slices=5)
    dag_run = lib.module.ingest.test(run_conf=landing_batch(series, series.files).conf())
    assert dag_run.state == "success"
    url = VIEWER.format(study_uid=series.study_instance_uid, series_uid=series.series_instance_uid)
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    for task_id in ("store", "index"):
        # what the task pushed, and what Airflow kept for the UI's button when the task ended
        assert tis[task_id].xcom_pull(task_ids=task_id, key="viewer_url") == url
        assert tis[task_id].xcom_pull(task_ids=task_id, key="_link_ViewerLink") == url
    doc = lib.search_client().get(lib.index, series.series_instance_uid)["kaapana"]
    assert doc["viewer_url"] == url and doc["thumbnail"].startswith("data:image/png;base64,")
    indexed = tis["index"].xcom_pull(task_ids="index")
    png = Path(indexed["thumbnails"][series.series_instance_uid])
    assert png.is_file() and png.is_relative_to(lib.workspace) and png.parent.name == "index"
    summary = tis["report"].xcom_pull(task_ids="report")
    page = Path(summary["report_html"]).read_text()
    assert f'<a href="{url.replace("&", "&amp;")}">' in page
    assert f'src="{png.relative_to(Path(summary["report_html"]).parent).as_posix()}"' in page
    assert summary["message"] in page


def test_ingest_of_a_late_batch_adds_to_the_series_document(lib, new_series):
    """A series that arrives in two listener batches ends as one document holding all its instances."""
    series = new_series(slices=4)
    for number, files in ((1, series.files[:3]), (2, series.files[3:])):
        dag_run = lib.module.ingest.test(run_conf=landing_batch(series, files, number).conf())
        assert dag_run.state == "success"
    assert lib.count(series.series_instance_uid) == 1
    doc = lib.search_client().get(lib.index, series.series_instance_uid)
    assert doc["kaapana"]["instance_count"] == 4
    assert {f["sop"] for f in doc["kaapana"]["instances"]} == set(series.sop_instance_uids)
    assert doc["kaapana"]["source"] == {"calling_ae_title": "MODALITY", "called_ae_title": "KAAPANA"}
    assert doc["kaapana"]["received_at"].startswith("1970-01-01T00:00:01")  # the first batch's time


def test_ingest_listener_batch_kept_when_asked(lib, new_series):
    series = new_series(slices=2)
    conf = {**landing_batch(series, series.files).conf(), "keep_landing_files": True}
    dag_run = lib.module.ingest.test(run_conf=conf)
    assert dag_run.state == "success" and removed_from_landing(dag_run) == []
    assert all(f.exists() for f in series.files) and lib.count(series.series_instance_uid) == 1


def test_ingest_batch_with_invalid_files_keeps_them_and_reports_them(lib, new_series):
    series = new_series(slices=4)
    stranger = new_series(slices=1)  # another series
    foreign = series.series_dir / "foreign.dcm"
    foreign.write_bytes(stranger.files[0].read_bytes())
    garbage = series.series_dir / "garbage.dcm"
    garbage.write_bytes(b"this is not DICOM" * 20)
    batch = landing_batch(series, [*series.files, foreign, garbage])
    dag_run = lib.module.ingest.test(run_conf=batch.conf())
    # the good files are stored, indexed and cleared; the run fails in its last task, "report"
    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {**{t: "success" for t in states if t != "report"}, "report": "failed"}
    (report,) = [t for t in dag_run.get_task_instances() if t.task_id == "report"]
    summary = report.xcom_pull(task_ids="report", key="summary")
    assert summary["stored"] == len(series.files) and len(summary["quarantined"]) == 2
    assert summary["message"].startswith(f"{len(series.files)} stored, 2 quarantined (")
    assert str(garbage) in summary["message"]
    assert instances_in(lib.pacs, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )
    assert not instances_in(lib.pacs, stranger.study_instance_uid, stranger.series_instance_uid)
    assert lib.count(series.series_instance_uid) == 1 and lib.count(stranger.series_instance_uid) == 0
    # the valid files are gone from the landing zone, the invalid ones stay there
    assert not any(f.exists() for f in series.files)
    assert foreign.exists() and garbage.exists()
    state, validated = xcom(dag_run, "receive")  # receive validates (one task)
    assert state == "success" and validated[0]["instances"] == len(series.files)
    reported = {q.split(":", 1)[0] for q in validated[0]["quarantined"]}
    assert reported == {"foreign.dcm", "garbage.dcm"}
    assert stranger.series_instance_uid in " ".join(validated[0]["quarantined"])


def test_ingest_batch_without_any_valid_file_fails_and_keeps_everything(lib, new_series, tmp_path):
    landing = tmp_path / "landing" / "1.2.3" / "1.2.3.4"
    landing.mkdir(parents=True)
    junk = [landing / "a.dcm", landing / "b.dcm"]
    for path in junk:
        path.write_bytes(b"no DICOM here" * 10)
    batch = SeriesBatch("1.2.3", "1.2.3.4", str(landing), 1, [p.name for p in junk], "MOD", "KAAPANA", 1.0,
                        manifest=str(landing.parent / "1.2.3.4.b0001.json"))  # fmt: skip
    batch.save()
    dag_run = lib.module.ingest.test(run_conf=batch.conf())
    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states["receive"] == "failed" and states["report"] == "upstream_failed"
    assert all(p.exists() for p in junk)


def test_ingest_of_several_batches_in_one_run_holds_every_guarantee_per_batch(lib, new_series, tmp_path):
    """A burst run (the listener's conf ``{"batches": [...]}``): each series is stored, indexed and
    cleared as if alone; bad files of one, or a series with no valid file at all, stop no other."""
    good, mixed = new_series(slices=3), new_series(slices=2)
    garbage = mixed.series_dir / "garbage.dcm"
    garbage.write_bytes(b"this is not DICOM" * 20)
    junk_dir = tmp_path / "landing" / "1.2.3" / "1.2.3.5"
    junk_dir.mkdir(parents=True)
    (junk_dir / "a.dcm").write_bytes(b"no DICOM here" * 10)
    junk = SeriesBatch("1.2.3", "1.2.3.5", str(junk_dir), 1, ["a.dcm"], "MOD", "KAAPANA", 3.0,
                       manifest=str(junk_dir.parent / "1.2.3.5.b0001.json"))  # fmt: skip
    junk.save()
    batches = [landing_batch(good, good.files), landing_batch(mixed, [*mixed.files, garbage]), junk]
    conf = run_conf(batches)
    assert conf["series_count"] == 3
    dag_run = lib.module.ingest.test(run_conf=conf)
    assert dag_run.state == "failed" and xcom(dag_run, "report")[0] == "failed"
    assert xcom(dag_run, "store")[0] == xcom(dag_run, "index")[0] == "success"
    for series in (good, mixed):
        assert instances_in(lib.pacs, series.study_instance_uid, series.series_instance_uid) == set(
            series.sop_instance_uids
        )
        assert lib.count(series.series_instance_uid) == 1
        assert not any(f.exists() for f in series.files)  # stored + indexed: cleared
        doc = lib.search_client().get(lib.index, series.series_instance_uid)
        assert doc["kaapana"]["source"] == {"calling_ae_title": "MODALITY", "called_ae_title": "KAAPANA"}
    assert garbage.exists() and (junk_dir / "a.dcm").exists()  # set aside, kept in the landing zone
    assert sorted(removed_from_landing(dag_run)) == sorted(map(str, [*good.files, *mixed.files]))
    (report,) = [t for t in dag_run.get_task_instances() if t.task_id == "report"]
    summary = report.xcom_pull(task_ids="report", key="summary")
    assert summary["stored"] == 5 and {q["file"] for q in summary["quarantined"]} == {"garbage.dcm", "a.dcm"}
    assert {q["kept_in_landing_zone"] for q in summary["quarantined"]} == {
        str(garbage),
        str(junk_dir / "a.dcm"),
    }


def test_ingest_by_hand_deletes_nothing_and_reruns_without_duplicates(lib, new_series):
    series = new_series(slices=3)
    conf = {"series_dir": str(series.series_dir)}
    for _ in range(2):
        dag_run = lib.module.ingest.test(run_conf=conf)
        assert dag_run.state == "success"
        assert all(f.exists() for f in series.files)
        assert removed_from_landing(dag_run) == []
        assert lib.count() == 1  # keyed by SeriesInstanceUID: the second run replaces, never duplicates
    assert instances_in(lib.pacs, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )


def test_ingest_by_hand_with_a_stray_first_file_ingests_the_series(lib, new_series):
    """A run by hand ingests every series of its folder, the largest first (not whatever sorts first);
    a file that is not DICOM is set aside with that series."""
    series = new_series(slices=3)
    stranger = new_series(slices=1)
    (series.series_dir / "000-garbage.dcm").write_bytes(b"not DICOM" * 30)
    (series.series_dir / "000-stray.dcm").write_bytes(stranger.files[0].read_bytes())
    dag_run = lib.module.ingest.test(run_conf={"series_dir": str(series.series_dir)})
    assert dag_run.state == "failed" and xcom(dag_run, "report")[0] == "failed"  # 2 set aside
    assert xcom(dag_run, "store")[0] == xcom(dag_run, "index")[0] == "success"
    assert instances_in(lib.pacs, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )
    assert instances_in(lib.pacs, stranger.study_instance_uid, stranger.series_instance_uid) == set(
        stranger.sop_instance_uids
    )
    assert lib.count(series.series_instance_uid) == 1 and lib.count(stranger.series_instance_uid) == 1
    state, validated = xcom(dag_run, "receive")
    assert [v["series_instance_uid"] for v in validated] == [
        series.series_instance_uid,
        stranger.series_instance_uid,
    ]
    assert {q.split(":", 1)[0] for q in validated[0]["quarantined"]} == {"000-garbage.dcm"}
    assert len(list(series.series_dir.iterdir())) == 5  # a run by hand removes nothing


# --- re-index -------------------------------------------------------------------------------------


def test_reindex_takes_only_the_studies_in_the_date_range(
    airflow_db, orthanc_factory, osmem, new_series, tmp_path, monkeypatch
):
    pacs = orthanc_factory()
    lib = make_lib(pacs, osmem, tmp_path, monkeypatch)
    january = new_series(slices=2, study_date="20250115", patient_id="JAN")
    march = new_series(slices=2, study_date="20250310", patient_id="MAR")
    dimse.store(dimse.DimsePeer("127.0.0.1", pacs.dicom_port, pacs.aet), january.files + march.files)
    dag_run = lib.module.reindex.test(run_conf={"date_from": "2025-01-01", "date_to": "2025-01-31"})
    assert dag_run.state == "success"
    assert lib.count() == 1
    assert lib.count(january.series_instance_uid) == 1 and lib.count(march.series_instance_uid) == 0
    # the document as ingest writes it: its thumbnail (inline, and the PNG in the run workspace) and the
    # Viewer link of the PACS connection
    doc = lib.search_client().get(lib.index, january.series_instance_uid)["kaapana"]
    assert doc["thumbnail"].startswith("data:image/png;base64,")
    assert doc["viewer_url"] == VIEWER.format(
        study_uid=january.study_instance_uid, series_uid=january.series_instance_uid
    )
    state, indexed = xcom(dag_run, "per_series.index", map_index=0)
    png = Path(indexed["thumbnails"][january.series_instance_uid])
    assert state == "success" and png.is_file() and png.is_relative_to(lib.workspace)
    # an open range (no end) takes March too; January is found again and replaced, not duplicated
    # (date_to given as None: dag.test() runs tasks in this process, where Airflow's process_params
    # leaves the previous run's conf in the DAG's Param objects; a worker parses the DAG afresh)
    dag_run = lib.module.reindex.test(run_conf={"date_from": "2025-01-10", "date_to": None})
    assert dag_run.state == "success"
    assert lib.count() == 2 and lib.count(march.series_instance_uid) == 1


# --- send -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("send_method", ["c-store", "stow-rs"])
def test_send_series_to_another_pacs(send_method, lib, orthanc_factory, new_series, monkeypatch):
    partner = orthanc_factory(aet="PARTNER")
    monkeypatch.setenv("AIRFLOW_CONN_TEST_LIB_PARTNER", pacs_conn(partner))
    series = new_series(slices=3)
    dimse.store(dimse.DimsePeer("127.0.0.1", lib.pacs.dicom_port, lib.pacs.aet), series.files)
    conf = {
        "identifiers": [series.series_instance_uid],
        "destination_conn_id": "test_lib_partner",
        "send_method": send_method,
        "verify": True,
    }
    dag_run = lib.module.send.test(run_conf=conf)
    assert dag_run.state == "success"
    assert instances_in(partner, series.study_instance_uid, series.series_instance_uid) == set(
        series.sop_instance_uids
    )


# --- install model and the segmentation form ------------------------------------------------------


def test_install_model_then_the_segmentation_form_offers_it(lib, tiny_nnunet_model, tmp_path):
    from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag

    model = lib.module.segmentation.params.get_param("model")
    assert "enum" not in model.schema and model.schema["type"] == "string"  # nothing installed yet

    zip_path = export_model_zip(tiny_nnunet_model, tmp_path / "tiny.zip")
    dag_run = lib.module.install_model.test(run_conf={"zip_path": str(zip_path)})
    assert dag_run.state == "success"
    state, installed = xcom(dag_run, "install")
    dataset = tiny_nnunet_model.parent.name
    assert state == "success" and [i["dataset"] for i in installed] == [dataset]
    assert Path(installed[0]["path"]).is_relative_to(lib.models_dir)
    assert (Path(installed[0]["path"]) / "plans.json").is_file()

    settings = lib.module.settings_from_env()
    model = create_segmentation_dag("test_lib_seg_again", settings).params.get_param("model")
    assert model.schema["enum"] == [dataset] and model.value == dataset

    settings.models_dir = str(tmp_path / "no-such-dir")
    model = create_segmentation_dag("test_lib_seg_none", settings).params.get_param("model")
    assert "enum" not in model.schema and model.schema.get("minLength") == 1


def form_errors(dag, conf: dict) -> str | None:
    """The form's verdict on a conf: None when valid, else the validation error's text."""
    from airflow.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    try:
        for key, value in conf.items():
            params[key] = value
        params.validate()
    except ParamValidationError as exc:
        return str(exc)
    return None


GOOD_UID = "1.2.826.0.1.3680043.8.498.1"
BAD_UIDS = ["1.2.3.abc", "1..2", "1.02.3", "1." + "1" * 64, ".1.2"]


def test_segmentation_params_reject_bad_uids_and_zero_limit(lib):
    dag = lib.module.segmentation
    good = {"identifiers": [GOOD_UID], "limit": 3, "model": "Dataset901_TinySphere"}
    assert form_errors(dag, good) is None  # so the failures below are the named field's
    for uid in BAD_UIDS:
        assert "identifiers" in (form_errors(dag, {**good, "identifiers": [GOOD_UID, uid]}) or ""), uid
    for limit in (0, -1, "ten"):
        assert "limit" in (form_errors(dag, {**good, "limit": limit}) or ""), limit
    send = lib.module.send
    good_send = {"identifiers": [GOOD_UID], "destination_conn_id": "partner"}
    assert form_errors(send, good_send) is None
    for uid in BAD_UIDS:
        assert "identifiers" in (form_errors(send, {**good_send, "identifiers": [uid]}) or ""), uid

    # a trigger (dag.test takes the same create_dagrun path as the UI and the REST API) is refused
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="identifiers"):
        dag.test(run_conf={**good, "identifiers": ["1.2.x"]})
    with pytest.raises(ParamValidationError, match="limit"):
        dag.test(run_conf={**good, "limit": 0})
