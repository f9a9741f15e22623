"""Bring-your-own-algorithm DAGs: generated per manifest, broken manifests isolated, and both example
algorithms run end to end by ``dag.test()`` in local mode (real Orthanc, real osmem-server)."""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path

import pydicom
import pytest

from airflow_provider_kaapana.cli import main
from airflow_provider_kaapana.core.algorithms.manifest import load_manifest
from airflow_provider_kaapana.core.net import dimse
from airflow_provider_kaapana.core.net.dicomweb import DicomWebClient
from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.processing import create_processing_dag
from tests.dag_factories.test_dag_library import pacs_conn

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"


def test_one_dag_file_per_algorithm_and_a_broken_one_fails_alone(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    algorithms, dags = tmp_path / "algorithms", tmp_path / "dags"
    monkeypatch.setenv("KAAPANA_ALGORITHMS_DIR", str(algorithms))
    for example in ("threshold-segmenter", "measure-intensity"):
        assert main(["algorithms", "install", str(EXAMPLES / example), "--dags-folder", str(dags)]) == 0
    manifest = algorithms / "measure-intensity" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("kind: measurements", "kind: hologram"))
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dags) == {"kaapana_algorithm_threshold_segmenter"}
    (error_file,) = bag.import_errors
    assert error_file.endswith("kaapana_algorithm_measure_intensity.py")
    error = bag.import_errors[error_file]
    assert "measure-intensity/manifest.yaml" in error and "outputs[0].kind" in error
    dag = bag.dags["kaapana_algorithm_threshold_segmenter"]
    lower = dag.params.get_param("lower")
    assert (lower.value, lower.schema["title"], lower.schema["section"]) == (
        -850,
        "Lower threshold",
        "Threshold",
    )
    assert dag.params.get_param("label_name").schema["enum"] == ["lesion", "bone", "organ"]
    assert "identifiers" in dag.params and "kaapana" in dag.tags
    assert {t.task_id for t in dag.tasks} >= {"per_series.process", "per_series.nifti", "per_series.seg"}


def test_a_parameter_clashing_with_the_form_is_refused(tmp_path):
    data = load_manifest(EXAMPLES / "threshold-segmenter").data
    data["parameters"]["properties"]["limit"] = {"type": "integer", "default": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'limit' clashes"):
        create_processing_dag(load_manifest(tmp_path))


@pytest.fixture
def variants(airflow_db, orthanc, osmem, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALG_PACS", pacs_conn(orthanc))
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEST_ALG_SEARCH",
        json.dumps(
            {
                "conn_type": "kaapana_search",
                "host": "127.0.0.1",
                "port": osmem.port,
                "extra": {"flavor": "opensearch"},
            }
        ),
    )
    monkeypatch.setenv("KAAPANA_TEST_ALG_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("KAAPANA_TEST_ALG_INDEX", f"kaapana-test-alg-{uuid.uuid4().hex[:8]}")
    import tests.dags.algorithm_variants as variants

    return importlib.reload(variants)


def search_client(settings: PipelineSettings):
    from airflow_provider_kaapana.hooks.search import SearchHook

    return SearchHook(search_conn_id=settings.search_conn_id).get_client()


def in_pacs_and_index(series, orthanc, settings) -> None:
    """The series as the ingest DAG leaves it: in the PACS and in the index (the form selects from both)."""
    from airflow_provider_kaapana.core.index.client import index_series

    dimse.store(dimse.DimsePeer("127.0.0.1", orthanc.dicom_port, orthanc.aet), series.files)
    assert (
        index_series(search_client(settings), settings.index, [str(series.series_dir)], refresh=True).failed
        == {}
    )


@pytest.mark.slow
def test_threshold_segmenter_puts_a_seg_into_the_pacs_and_the_index(
    variants, orthanc, synthetic_series, tmp_path
):
    series = synthetic_series(rows=16, columns=16, slices=6, seed=uuid.uuid4().int % 10**9)
    settings = variants.settings
    in_pacs_and_index(series, orthanc, settings)
    run = variants.threshold.test(
        run_conf={"identifiers": [series.series_instance_uid], "label_name": "organ"}
    )
    assert run.state == "success"
    (seg_file,) = Path(settings.workspace_base).rglob("seg.dcm")
    seg = pydicom.dcmread(seg_file)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert seg.SegmentSequence[0].SegmentLabel == "organ"
    assert (
        seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
        == "Threshold segmenter"
    )
    web = DicomWebClient(orthanc.dicomweb_url, auth=orthanc.auth)
    found = web.qido("series", study_instance_uid=series.study_instance_uid)
    assert seg.SeriesInstanceUID in {s["0020000E"]["Value"][0] for s in found}
    client = search_client(settings)
    client.refresh(settings.index)
    assert client.get(settings.index, seg.SeriesInstanceUID)["Modality"] == "SEG"
    params = json.loads(next(Path(settings.workspace_base).rglob("params.json")).read_text())
    assert params == {"lower": -850, "upper": 3000, "label_name": "organ"}


@pytest.mark.slow
def test_measurement_algorithm_puts_its_fields_into_the_index(variants, orthanc, synthetic_series):
    series = synthetic_series(rows=16, columns=16, slices=4, seed=uuid.uuid4().int % 10**9)
    settings = variants.settings
    in_pacs_and_index(series, orthanc, settings)
    run = variants.measure.test(run_conf={"identifiers": [series.series_instance_uid], "above": -900})
    assert run.state == "success"
    client = search_client(settings)
    client.refresh(settings.index)
    document = client.get(settings.index, series.series_instance_uid)
    fields = document["kaapana"]["algorithms"]["measure-intensity"]
    assert fields["version"] == "1.0.0" and fields["voxels"] == 16 * 16 * 4
    assert -1000 < fields["mean"] < -700 and fields["voxels_above"] > 0
    hits = client.search(
        settings.index, {"query": {"range": {"kaapana.algorithms.measure-intensity.voxels_above": {"gt": 0}}}}
    )
    assert hits["hits"]["total"]["value"] == 1


def test_one_modality_becomes_the_search_default_and_outputs_pick_the_steps(tmp_path):
    data = load_manifest(EXAMPLES / "measure-intensity").data
    data["inputs"]["modality"] = ["MR"]
    data["outputs"] = [{"kind": "measurements"}, {"kind": "dicom", "path": "out"}]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    dag = create_processing_dag(load_manifest(tmp_path))
    assert dag.params.get_param("modality").value == "MR"
    tasks = {t.task_id for t in dag.tasks}
    assert {"per_series.measurements_index", "per_series.send_dicom", "per_series.index_dicom"} <= tasks
    assert "per_series.nifti" not in tasks and "per_series.seg" not in tasks
