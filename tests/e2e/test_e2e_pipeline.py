"""The whole chain in a real Airflow: listener -> ingest DAG (REST v2, token auth) -> segmentation DAG.

Runs :func:`airflow_provider_kaapana.testing.demo.run_demo` (the README's demo) once on PostgreSQL with the
LocalExecutor, the listener de-identifying on intake (the whole pipeline then runs on pseudonymised
data), and once through the ``kaapana demo`` command on SQLite, and checks what ended where.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _seg_mask(seg_path, source) -> np.ndarray:
    """The SEG's segment 1 on the source grid as (slices, rows, cols) in the source's slice order."""
    import highdicom as hd

    seg = hd.seg.segread(seg_path)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source.sop_instance_uids, segment_numbers=[1], combine_segments=False
    )
    return np.asarray(frames)[..., 0]


def test_listener_to_seg_in_real_airflow_on_postgres_on_deidentified_data(tmp_path):
    from airflow_provider_kaapana.core.deid.pseudonyms import pseudonym_uid
    from airflow_provider_kaapana.testing.demo import DEMO_USER, _demo_series, run_demo
    from airflow_provider_kaapana.testing.local_airflow import (
        create_postgres_database,
        drop_postgres_database,
    )
    from airflow_provider_kaapana.testing.tiny_model import dice_score

    key = b"e2e-site-secret-".ljust(32, b"k")
    truth_series = _demo_series(tmp_path / "truth")  # what the modality sends
    try:
        db_url = create_postgres_database()
    except Exception as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 (user postgres) is needed: {exc}", pytrace=False)
    try:
        result = run_demo(
            tmp_path / "demo", db_url=db_url, deidentify=["retain-longitudinal-modified-dates"], deid_key=key
        )
    finally:
        drop_postgres_database(db_url)

    # the pipeline ran on the pseudonymised study: the keyed UIDs, no original patient in the PACS or index
    assert result.study_instance_uid == pseudonym_uid(key, truth_series.study_instance_uid)
    assert result.series_instance_uid == pseudonym_uid(key, truth_series.series_instance_uid)
    assert result.pacs_patients and all(
        pid != "DEMO0001" and "Demo" not in name for pid, name in result.pacs_patients
    ), result.pacs_patients
    assert len({pid for pid, _ in result.pacs_patients}) == 1  # source, SEG and SR under one pseudonym
    assert result.source_document["PatientID"] != "DEMO0001"
    assert result.source_document["PatientIdentityRemoved"] == "YES"
    assert "DEMO0001" not in str(result.source_document) and "Demo^Patient" not in str(result.seg_document)
    # the listener's own Airflow user triggered the ingest run over REST v2
    assert result.ingest_triggered_by == DEMO_USER[0]
    # both documents are in the index: the CT (all 32 instances) and the SEG with its label
    assert result.source_document["Modality"] == "CT"
    assert result.source_document["kaapana"]["instance_count"] == 32
    assert "DEMO_CT" in result.source_document["kaapana"]["source_aes"]  # the modality's calling AE
    assert result.seg_document["Modality"] == "SEG"
    assert result.seg_document["kaapana"]["segment_labels"] == ["sphere"]
    # the SEG references the source study and is in the PACS (located by QIDO-RS in run_demo)
    assert result.seg_document["StudyInstanceUID"] == result.study_instance_uid
    assert result.seg_series_instance_uid != result.series_instance_uid
    # the landing zone was cleared only after store + index succeeded
    assert result.landing_files_left == []
    # the segmentation is right: Dice against the synthetic truth on the source grid (the SEG references
    # the de-identified instances: the truth's SOP Instance UIDs under the key)
    truth_series.sop_instance_uids = [pseudonym_uid(key, uid) for uid in truth_series.sop_instance_uids]
    seg_files = list((tmp_path / "demo" / "workspace" / "kaapana_nnunet_segmentation").rglob("seg.dcm"))
    assert len(seg_files) == 1
    mask = _seg_mask(seg_files[0], truth_series)
    assert dice_score(mask.astype(np.uint8), truth_series.truth) >= 0.8
    # every mapped step of the one series ran
    seg_tasks = result.task_durations["kaapana_nnunet_segmentation"]
    for step in ("receive", "nifti", "predict", "seg", "send", "stats", "send_sr", "index"):
        assert f"per_series.{step}[0]" in seg_tasks
    # the sphere's volume: the same number in the index and in the SR from the PACS, near the truth
    volumes = result.volumes
    assert volumes["index_ml"] == pytest.approx(volumes["sr_ml"], rel=1e-9)
    assert volumes["sr_ml"] == pytest.approx(volumes["voxel_truth_ml"], rel=0.2)
    assert volumes["voxel_truth_ml"] == pytest.approx(volumes["true_ml"], rel=0.05)
    # the Viewer buttons, as the API server answers them: the series each task produced, in its study
    links = result.viewer_links
    study = result.study_instance_uid
    for task in ("kaapana_ingest/store", "kaapana_ingest/index"):
        assert links[task].endswith(f"/studies/{study}/series/{result.series_instance_uid}/metadata"), links
    assert links["kaapana_nnunet_segmentation/per_series.seg"].endswith(
        f"/studies/{study}/series/{result.seg_series_instance_uid}/metadata"
    )
    assert f"/studies/{study}/series/" in links["kaapana_nnunet_segmentation/per_series.stats"]  # the SR's
    # the source series' document: its link and the ingest run's thumbnail of it
    assert result.source_document["kaapana"]["viewer_url"] == links["kaapana_ingest/index"]
    assert result.source_document["kaapana"]["thumbnail"].startswith("data:image/png;base64,")


def test_kaapana_demo_command_on_sqlite(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    steps = [line for line in lines if line.startswith("[") and " s] " in line]
    assert len(steps) >= 10, out.stdout
    assert any("SQLite" in line for line in steps)
    assert any(line.strip().startswith("SEG series") for line in lines)
    assert "segment labels=['sphere']" in out.stdout
    assert "Sphere volume: segmented " in out.stdout and "vs true 1.437 ml" in out.stdout
