"""The one-command demo: the whole pipeline on a synthetic CT study, with local stand-in services.

Steps (each printed with its time): start Orthanc (PACS) and osmem-server (search), get the tiny
nnU-Net model (trained once, then cached), start an Airflow on its embedded SQLite database with the
ingest and segmentation DAGs built from the factories with demo settings (local-mode nnU-Net on CPU),
start the DICOM listener triggering the ingest DAG over REST, send a synthetic CT by C-STORE, wait for
the ingest run, trigger the segmentation run over REST, and report where the SEG is, and the segmented
sphere's volume (from the index and from the measurement report SR in the PACS) next to its truth.

This module starts processes and talks HTTP/DIMSE; it never imports Airflow itself.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEMO_USER = ("kaapana-listener", "demo-listener-pw")
INGEST_DAG = "kaapana_ingest"
SEGMENTATION_DAG = "kaapana_nnunet_segmentation"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SPHERE_RADIUS_MM = 7.0

_DAG_FILE = '''"""Demo variant of a shipped DAG: local services, local-mode nnU-Net on CPU (written by kaapana demo)."""

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.{module} import {factory}

dag = {factory}(settings=PipelineSettings(**{settings!r}))
'''


@dataclass
class DemoResult:
    study_instance_uid: str
    series_instance_uid: str
    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    seg_document: dict[str, Any]
    source_document: dict[str, Any]
    steps: list[tuple[str, float]] = field(default_factory=list)
    task_durations: dict[str, dict[str, float]] = field(default_factory=dict)  # dag id -> task -> seconds
    landing_files_left: list[str] = field(default_factory=list)
    ingest_triggered_by: str | None = None
    volumes: dict[str, float | None] = field(default_factory=dict)  # see _volumes
    sr_sop_instance_uid: str | None = None
    task_queues: dict[str, str | None] = field(default_factory=dict)  # segmentation task -> executor queue
    viewer_links: dict[str, str | None] = field(default_factory=dict)  # "dag/task" -> its Viewer link (REST)
    # dag id -> the run's task phases (testing.task_timeline.TaskPhases), with run_demo(timeline=True)
    timelines: dict[str, list[Any]] = field(default_factory=dict)
    # (PatientID, PatientName) of every study in the PACS at the end
    pacs_patients: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(t for _, t in self.steps)


class _Steps:
    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.steps: list[tuple[str, float]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        result = fn()
        elapsed = time.monotonic() - start
        self.steps.append((name, elapsed))
        if self.out is not None:
            print(f"[{elapsed:7.1f} s] {name}", file=self.out, flush=True)
        return result


def _demo_series(out_dir: Path, seed: int = 7):
    """A small synthetic CT (1 mm isotropic, 32^3) with one bright sphere, like the tiny model's data."""
    from airflow_provider_kaapana.testing.synthetic import Shape, generate_series

    centre = (0.0, 0.0, 0.0)
    return generate_series(
        out_dir,
        modality="CT",
        rows=32,
        columns=32,
        slices=32,
        pixel_spacing=(1.0, 1.0),
        slice_spacing=1.0,
        origin=(-15.5, -15.5, -15.5),
        shapes=[Shape(1, centre, radius=SPHERE_RADIUS_MM, intensity=400.0)],
        noise_sd=20.0,
        seed=seed,
        patient_id="DEMO0001",
        patient_name="Demo^Patient",
        series_description="demo CT",
        body_part="ABDOMEN",
    )


def run_demo(
    workdir: str | Path | None = None,
    out: TextIO | None = None,
    keep: bool = False,
    db_url: str | None = None,
    scale_out: Mapping[str, Any] | None = None,
    timeline: bool = False,
    preload: bool = True,
    deidentify: Sequence[str] | None = None,
    deid_key: bytes | None = None,
) -> DemoResult:
    """Run the demo end to end; returns where the SEG is. ``out`` receives one line per step.

    ``db_url`` ``None`` runs Airflow on SQLite in the work folder; the end-to-end test passes a
    PostgreSQL URL instead. ``scale_out`` (``broker_url`` and ``celery_workers`` for
    :class:`~airflow_provider_kaapana.testing.local_airflow.LocalAirflow`) runs it on the
    CeleryExecutor with predict on the ``gpu`` queue and the pools of :doc:`/guides/scale_out`.
    ``timeline`` also reads, after the timed steps, where each task's seconds went
    (:func:`~airflow_provider_kaapana.testing.task_timeline.run_timeline`) into ``timelines``.
    ``preload`` ``False`` starts the LocalExecutor's workers without the forkserver preload
    (:mod:`airflow_provider_kaapana.preload`), to measure what it saves.
    ``deidentify`` (Table E.1-1 option names; ``[]``: the basic profile alone) makes the listener
    de-identify what is sent to its AE title on intake
    (:class:`~airflow_provider_kaapana.core.listener.server.IntakeDeidentification`, with ``deid_key`` or
    a key made for this run): no original reaches the landing zone, ingest and segmentation run on the
    pseudonymised study, and the result's UIDs are the pseudonyms.
    """
    from airflow_provider_kaapana.core.index.client import make_search_client
    from airflow_provider_kaapana.core.listener.server import AirflowTrigger, DicomListener
    from airflow_provider_kaapana.core.net import dimse
    from airflow_provider_kaapana.testing.local_airflow import AirflowError, LocalAirflow
    from airflow_provider_kaapana.testing.local_services import Orthanc, Osmem
    from airflow_provider_kaapana.testing.tiny_model import TINY_DATASET_NAME, train_tiny_model

    own_dir = workdir is None
    root = Path(workdir or tempfile.mkdtemp(prefix="kaapana-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out)
    with ExitStack() as stack:
        orthanc = steps.run(
            "start Orthanc (PACS, DIMSE + DICOMweb)", lambda: Orthanc(workdir=root / "orthanc").start()
        )
        stack.callback(orthanc.stop)
        osmem = steps.run("start osmem-server (OpenSearch API)", lambda: Osmem().start())
        stack.callback(osmem.stop)

        models_dir = root / "models"

        def get_model() -> Path:
            trained = train_tiny_model(root / "tiny-model-work")
            target = models_dir / TINY_DATASET_NAME / trained.name
            if not target.exists():
                shutil.copytree(trained, target)
            return target

        steps.run("tiny nnU-Net model (trained once, then cached)", get_model)

        settings = {
            "workspace_base": str(root / "workspace"),
            "pacs_conn_id": "kaapana_pacs_default",
            "search_conn_id": "kaapana_search_default",
            "index": "kaapana-dicom",
            "models_dir": str(models_dir),
            "predict_mode": "local",
            "predict_kwargs": {"device": "cpu"},
            "default_args": {"retries": 0},
        }
        celery: dict[str, Any] = {}
        if scale_out:
            settings.update(gpu_queue="gpu", gpu_pool="kaapana_gpu", pacs_pool="kaapana_pacs")
            celery = {
                "executor": "CeleryExecutor",
                "pools": {"kaapana_gpu": 1, "kaapana_pacs": 4},
                **scale_out,
            }
        dags = root / "dags"
        dags.mkdir(exist_ok=True)
        for module, factory, name in (
            ("ingest", "create_ingest_dag", INGEST_DAG),
            ("segmentation", "create_segmentation_dag", SEGMENTATION_DAG),
        ):
            (dags / f"{name}.py").write_text(
                _DAG_FILE.format(module=module, factory=factory, settings=settings)
            )

        pacs_extra = {
            "called_ae": orthanc.aet,
            "calling_ae": "KAAPANA",
            "dicomweb_url": orthanc.dicomweb_url,
            # this Orthanc has no viewer plugin: the tasks' Viewer links open the series' DICOMweb
            # metadata, a URL that resolves (with a viewer, use its preset: docs/installation.rst)
            "viewer_url": f"{orthanc.dicomweb_url}/studies/{{study_uid}}/series/{{series_uid}}/metadata",
        }
        airflow = LocalAirflow(
            root / "airflow",
            [dags],
            db_url=db_url,
            users={DEMO_USER[0]: ("user", DEMO_USER[1])},
            extra_env={
                "AIRFLOW_CONN_KAAPANA_PACS_DEFAULT": json.dumps(
                    {
                        "conn_type": "kaapana_pacs",
                        "host": "127.0.0.1",
                        "port": orthanc.dicom_port,
                        "extra": pacs_extra,
                    }
                ),
                "AIRFLOW_CONN_KAAPANA_SEARCH_DEFAULT": json.dumps(
                    {
                        "conn_type": "kaapana_search",
                        "host": "127.0.0.1",
                        "port": osmem.port,
                        "extra": {"flavor": "opensearch"},
                    }
                ),
            },
            preload=preload,
            **celery,
        )
        database = "PostgreSQL" if db_url else "SQLite"
        steps.run(f"start Airflow (api-server, scheduler, dag-processor; {database})", airflow.start)
        stack.callback(airflow.stop)
        steps.run(
            "DAGs parsed and unpaused",
            lambda: [airflow.wait_for_dag(d) for d in (INGEST_DAG, SEGMENTATION_DAG)],
        )

        landing = root / "landing"
        intake = None
        if deidentify is not None:
            from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
            from airflow_provider_kaapana.core.listener.server import IntakeDeidentification

            intake = IntakeDeidentification.for_called_aes(  # a research AE: what is sent to it
                DeidentificationProfile.from_names(list(deidentify)), deid_key or os.urandom(32), ["KAAPANA"]
            )
        trigger = AirflowTrigger(airflow.url, INGEST_DAG, username=DEMO_USER[0], password=DEMO_USER[1])
        listener = DicomListener(  # as `kaapana listen` does: series completing together share a run
            landing,
            port=0,
            ae_title="KAAPANA",
            quiet_seconds=2.0,
            on_batches_complete=trigger.trigger_batches,
            deidentification=intake,
        )
        steps.run("start DICOM listener (kaapana listen)", listener.start)
        stack.callback(listener.stop)

        series = steps.run("generate synthetic CT study", lambda: _demo_series(root / "synthetic"))
        # the UIDs the pipeline sees: the sender's, or their keyed pseudonyms after intake de-identification
        study_uid, series_uid = series.study_instance_uid, series.series_instance_uid
        if intake is not None:
            from airflow_provider_kaapana.core.deid.pseudonyms import pseudonym_uid

            study_uid, series_uid = (pseudonym_uid(intake.key, uid) for uid in (study_uid, series_uid))
        peer = dimse.DimsePeer("127.0.0.1", listener.port, called_ae="KAAPANA", calling_ae="DEMO_CT")
        steps.run(
            f"C-STORE {len(series.files)} instances to the listener", lambda: dimse.store(peer, series.files)
        )

        durations: dict[str, dict[str, float]] = {}
        run_ids: dict[str, str] = {}
        triggered_by: list[str | None] = []
        queues: dict[str, str | None] = {}
        viewer_links: dict[str, str | None] = {}

        def links(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
            """The task's extra links as the UI gets them (REST v2): its Viewer button's URL, or None (the
            e2e test checks them; the demo itself goes on without)."""
            try:
                answer = airflow.api(
                    "GET",
                    f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links",
                    params={"map_index": map_index},
                ).json()
            except AirflowError:
                answer = {}
            viewer_links[f"{dag_id}/{task_id}"] = (answer.get("extra_links") or {}).get("Viewer")

        def ingest() -> str:
            run_id = _wait_for_first_run(airflow, INGEST_DAG, timeout=120)
            state = airflow.wait_for_run(INGEST_DAG, run_id, timeout=600)
            if state != "success":
                raise RuntimeError(
                    f"ingest run {run_id} ended {state}: {airflow.task_states(INGEST_DAG, run_id)}"
                )
            durations[INGEST_DAG] = airflow.task_durations(INGEST_DAG, run_id)
            for task_id in ("store", "index"):
                links(INGEST_DAG, run_id, task_id)
            run_ids[INGEST_DAG] = run_id
            triggered_by.append(
                airflow.api("GET", f"dags/{INGEST_DAG}/dagRuns/{run_id}").json().get("triggering_user_name")
            )
            return run_id

        steps.run("ingest DAG: validate -> PACS -> index -> landing zone cleared", ingest)

        def segment() -> str:
            run_id = airflow.trigger(
                SEGMENTATION_DAG, {"identifiers": [series_uid], "model": TINY_DATASET_NAME}
            )
            state = airflow.wait_for_run(SEGMENTATION_DAG, run_id, timeout=900)
            if state != "success":
                raise RuntimeError(
                    f"segmentation run {run_id} ended {state}: {airflow.task_states(SEGMENTATION_DAG, run_id)}"
                )
            instances = airflow.task_instances(SEGMENTATION_DAG, run_id)
            durations[SEGMENTATION_DAG] = {
                k: float(ti["duration"]) for k, ti in instances.items() if ti.get("duration") is not None
            }
            queues.update({k: ti.get("queue") for k, ti in instances.items()})
            for task_id in ("per_series.seg", "per_series.stats"):
                links(SEGMENTATION_DAG, run_id, task_id, map_index=0)
            run_ids[SEGMENTATION_DAG] = run_id
            return run_id

        steps.run(
            "segmentation DAG: PACS -> NIfTI -> nnU-Net -> SEG, statistics, SR -> PACS -> index", segment
        )

        def locate() -> tuple[str, str, dict[str, Any], dict[str, Any]]:
            import requests

            r = requests.get(
                f"{orthanc.dicomweb_url}/studies/{study_uid}/series",
                params={"Modality": "SEG"},
                headers={"Accept": "application/dicom+json"},
                timeout=30,
            )
            r.raise_for_status()
            seg_series = [s for s in r.json() if s.get("00080060", {}).get("Value") == ["SEG"]]
            if not seg_series:
                raise RuntimeError(f"no SEG series in the PACS for study {study_uid}")
            seg_uid = seg_series[0]["0020000E"]["Value"][0]
            r = requests.get(
                f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{seg_uid}/instances",
                headers={"Accept": "application/dicom+json"},
                timeout=30,
            )
            r.raise_for_status()
            sop_uid = r.json()[0]["00080018"]["Value"][0]
            client = make_search_client(osmem.url, flavor="opensearch")
            client.refresh(settings["index"])
            doc = client.get(settings["index"], seg_uid) or {}
            source_doc = client.get(settings["index"], series_uid) or {}
            r = requests.get(
                f"{orthanc.dicomweb_url}/studies", headers={"Accept": "application/dicom+json"}, timeout=30
            )
            r.raise_for_status()
            patients = [(_qido_text(s, "00100020"), _qido_text(s, "00100010")) for s in r.json()]
            return seg_uid, sop_uid, doc, source_doc, patients

        seg_uid, sop_uid, doc, source_doc, patients = steps.run(
            "locate the SEG in the PACS and the index", locate
        )
        sr_uid, volumes = steps.run(
            "read the measured volume from the index and the SR in the PACS",
            lambda: _volumes(orthanc, series, study_uid, doc, root / "sr"),
        )
        timelines: dict[str, list[Any]] = {}
        if timeline:
            from airflow_provider_kaapana.testing.task_timeline import run_timeline

            timelines = {dag_id: run_timeline(airflow, dag_id, run_id) for dag_id, run_id in run_ids.items()}
        result = DemoResult(
            study_uid,
            series_uid,
            seg_uid,
            sop_uid,
            doc,
            source_doc,
            steps.steps,
            durations,
            sorted(str(p.relative_to(landing)) for p in landing.rglob("*.dcm")),
            triggered_by[0] if triggered_by else None,
            volumes,
            sr_uid,
            queues,
            viewer_links,
            timelines,
            patients,
        )
        if out is not None:
            labels = (doc.get("kaapana") or {}).get("segment_labels")
            print(
                f"\nSEG stored in Orthanc ({orthanc.dicomweb_url})\n"
                f"  StudyInstanceUID   {study_uid}\n"
                f"  source series      {series_uid}\n"
                f"  SEG series         {seg_uid}\n"
                f"  SEG SOP instance   {sop_uid}\n"
                f"Index document {settings['index']}/{seg_uid}: Modality={doc.get('Modality')} segment labels={labels}\n"
                f"{_volume_lines(volumes, sr_uid)}\n"
                f"Total {result.total_seconds:.1f} s"
                + (f"; work folder {root}" if keep or not own_dir else " (temporary work folder removed)"),
                file=out,
                flush=True,
            )
            if keep:
                print("--keep: services stay up until Ctrl-C", file=out, flush=True)
        if keep:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    if own_dir and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _volumes(
    orthanc: Any, series: Any, study_uid: str, seg_document: dict[str, Any], sr_dir: Path
) -> tuple[str, dict]:
    """The sphere's volume as measured (index ``kaapana.segments``, the SR's TID 1500 report) and true.

    ``true_ml``: the analytic 4/3 pi r^3; ``voxel_truth_ml``: the synthetic label voxels (the best a
    voxel mask can do on this grid).
    """
    import math

    import numpy as np

    from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
    from airflow_provider_kaapana.core.quant.sr import read_measurement_report

    web = DicomWebClient(orthanc.dicomweb_url, auth=orthanc.auth)
    found = web.qido("series", {"Modality": "SR"}, study_instance_uid=study_uid)
    if not found:
        raise RuntimeError(f"no SR series in the PACS for study {study_uid}")
    sr_series = found[0]["0020000E"]["Value"][0]
    [sr_path] = web.retrieve_series(study_uid, sr_series, sr_dir).files
    report = read_measurement_report(sr_path)
    indexed = {s["segment_number"]: s for s in (seg_document.get("kaapana") or {}).get("segments") or []}
    voxel_mm3 = float(np.prod(series.spec.pixel_spacing)) * series.spec.slice_spacing
    volumes = {
        "index_ml": (indexed.get(1) or {}).get("volume_ml"),
        "sr_ml": (report.get(1) or {}).get("volume_ml"),
        "true_ml": 4.0 / 3.0 * math.pi * SPHERE_RADIUS_MM**3 / 1000.0,
        "voxel_truth_ml": int(np.count_nonzero(series.truth == 1)) * voxel_mm3 / 1000.0,
    }
    return Path(sr_path).stem, volumes


def _volume_lines(volumes: dict[str, float | None], sr_uid: str | None) -> str:
    def ml(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ml"

    true, segmented = volumes.get("true_ml"), volumes.get("sr_ml")
    error = f" ({100 * (segmented - true) / true:+.1f} %)" if segmented is not None and true else ""
    return (
        f"Sphere volume: segmented {ml(segmented)}{error} vs true {ml(true)} (4/3 pi r^3, r = "
        f"{SPHERE_RADIUS_MM:g} mm; {ml(volumes.get('voxel_truth_ml'))} in synthetic label voxels)\n"
        f"  from the index (kaapana.segments) {ml(volumes.get('index_ml'))}; "
        f"from the SR {sr_uid} in the PACS {ml(segmented)}"
    )


def _qido_text(attributes: dict[str, Any], tag: str) -> str:
    """A QIDO-RS JSON attribute's first value as text (a PN's Alphabetic group), ``""`` when absent."""
    value = (attributes.get(tag, {}).get("Value") or [""])[0]
    return value.get("Alphabetic", "") if isinstance(value, dict) else str(value)


def _wait_for_first_run(airflow: Any, dag_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = airflow.api("GET", f"/dags/{dag_id}/dagRuns").json().get("dag_runs", [])
        if runs:
            return runs[0]["dag_run_id"]
        time.sleep(1)
    raise RuntimeError(f"the listener did not trigger {dag_id} within {timeout} s")
