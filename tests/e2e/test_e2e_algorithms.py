"""Bring your own algorithm in a real Airflow: ``kaapana algorithms install`` -> the DAG appears with a
form from the manifest -> a run on a synthetic series puts the SEG / the measurements into Orthanc and
the index; a broken manifest is an import error of its own DAG file only."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from airflow_provider_kaapana.cli import main
from airflow_provider_kaapana.core.index.client import index_series, make_search_client
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.testing.local_airflow import AirflowError, LocalAirflow

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"
SEG_DAG = "kaapana_algorithm_threshold_segmenter"
MEASURE_DAG = "kaapana_algorithm_measure_intensity"


def test_installed_algorithms_run_in_real_airflow(orthanc, osmem, synthetic_series, tmp_path):
    index = f"kaapana-e2e-alg-{uuid.uuid4().hex[:8]}"
    settings = {
        "workspace_base": str(tmp_path / "workspace"),
        "index": index,
        "predict_mode": "local",
        "default_args": {"retries": 0},
    }
    algorithms, dags = tmp_path / "algorithms", tmp_path / "dags"
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = (EXAMPLES / "measure-intensity" / "manifest.yaml").read_text()
    (broken / "manifest.yaml").write_text(manifest.replace("name: measure-intensity", "name: broken-one"))
    for source in (EXAMPLES / "threshold-segmenter", EXAMPLES / "measure-intensity", broken):
        argv = ["algorithms", "install", str(source), "--algorithms-dir", str(algorithms)]
        assert main([*argv, "--dags-folder", str(dags), "--settings", json.dumps(settings)]) == 0
    # broken after installation: its DAG file fails alone
    installed = algorithms / "broken-one" / "manifest.yaml"
    installed.write_text(installed.read_text().replace("image: ghcr.io", "imag: ghcr.io"))

    series = synthetic_series(rows=16, columns=16, slices=6, seed=uuid.uuid4().int % 10**9)
    dimse.store(dimse.DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet), series.files)
    client = make_search_client(f"http://127.0.0.1:{osmem.port}", "opensearch")
    assert index_series(client, index, [str(series.series_dir)], refresh=True).failed == {}

    pacs_extra = {"called_ae": orthanc.aet, "calling_ae": "KAAPANA", "dicomweb_url": orthanc.dicomweb_url}
    env = {
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
    }
    with LocalAirflow(tmp_path / "airflow", [dags], extra_env=env) as airflow:
        airflow.wait_for_dag(SEG_DAG, timeout=180)
        airflow.wait_for_dag(MEASURE_DAG, timeout=60)
        with pytest.raises(AirflowError, match="imag"):
            airflow.wait_for_dag("kaapana_algorithm_broken_one", timeout=60)

        params = airflow.api("GET", f"dags/{SEG_DAG}/details").json()["params"]
        assert params["lower"]["value"] == -850
        assert params["lower"]["schema"]["title"] == "Lower threshold"
        assert params["label_name"]["schema"]["enum"] == ["lesion", "bone", "organ"]

        seg_run = airflow.trigger(
            SEG_DAG, {"identifiers": [series.series_instance_uid], "label_name": "bone"}
        )
        measure_run = airflow.trigger(MEASURE_DAG, {"identifiers": [series.series_instance_uid]})
        assert airflow.wait_for_run(SEG_DAG, seg_run, timeout=600) == "success", airflow.task_states(
            SEG_DAG, seg_run
        )
        assert airflow.wait_for_run(MEASURE_DAG, measure_run, timeout=600) == "success"

    web = DicomWebClient(orthanc.dicomweb_url, auth=orthanc.auth)
    modalities = {
        s["00080060"]["Value"][0] for s in web.qido("series", study_instance_uid=series.study_instance_uid)
    }
    assert "SEG" in modalities
    client.refresh(index)
    document = client.get(index, series.series_instance_uid)
    assert document["kaapana"]["algorithms"]["measure-intensity"]["voxels"] == 16 * 16 * 6
    segs = client.search(index, {"query": {"term": {"Modality": "SEG"}}})["hits"]["hits"]
    assert [h["_source"]["ReferencedSeriesSequence"] for h in segs] and len(segs) == 1
