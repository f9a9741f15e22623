"""The foundation: package metadata, the CLI, the provider registration and the real test services."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest
import requests

import airflow_provider_kaapana
from airflow_provider_kaapana.cli import main
from airflow_provider_kaapana.core.dicom.uids import uid_path, validate_uid
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.exceptions import InvalidUIDError
from airflow_provider_kaapana.get_provider_info import get_provider_info


def test_version_from_cli(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kaapana {airflow_provider_kaapana.__version__}"


def test_cli_module_runs_as_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "usage: kaapana" in out


def test_provider_info_is_registered_through_entry_point():
    from importlib.metadata import entry_points

    eps = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_kaapana")
    ]
    assert eps, "the apache_airflow_provider entry point is not installed"
    info = eps[0].load()()
    assert info == get_provider_info()
    assert info["package-name"] == "airflow-provider-kaapana"
    assert info["versions"][0] == airflow_provider_kaapana.__version__


def test_airflow_providers_list_shows_package(airflow_db):
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "plain"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "airflow-provider-kaapana" in out.stdout


@pytest.mark.parametrize("bad", ["", "1.2.", "../1.2", "1.2/3", "1..3", "1." + "2" * 70, "a.b", "1.2\x00/x"])
def test_invalid_uids_never_become_paths(bad, tmp_path):
    with pytest.raises(InvalidUIDError):
        uid_path(tmp_path, bad)


def test_uid_padding_stripped():
    assert validate_uid("1.2.840.10008\x00") == "1.2.840.10008"


def test_workspace_layout(tmp_path):
    ws = RunWorkspace(tmp_path, "kaapana_ingest", "manual__2026-11-26T10:00:00+00:00")
    step = ws.step_dir("1.2.3", "nifti")
    assert (
        step
        == tmp_path / "kaapana_ingest" / "manual__2026-11-26T10_00_00+00_00" / "batch" / "1.2.3" / "nifti"
    )
    assert step.is_dir()


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
def test_synthetic_series_geometry_is_what_it_claims(synthetic_series, orientation):
    series = synthetic_series(
        orientation=orientation, rows=20, columns=24, slices=7, pixel_spacing=(0.8, 1.2)
    )
    assert len(series.files) == 7
    for k, path in enumerate(series.files):
        ds = pydicom.dcmread(path)
        ipp = np.array(ds.ImagePositionPatient, float)
        # the affine maps voxel (0, 0, k) to this slice's position
        np.testing.assert_allclose(series.affine_lps @ [0, 0, k, 1], [*ipp, 1], atol=1e-4)
        assert ds.SOPInstanceUID == series.sop_instance_uids[k]
        stored = ds.pixel_array
        np.testing.assert_array_equal(stored, series.volume[k])
    assert series.truth.sum() > 0
    # the truth lies where the bright voxels are
    hu = series.volume.astype(float) - 1024
    assert hu[series.truth == 1].mean() > -900 > hu[series.truth == 0].mean()


def test_synthetic_series_is_deterministic(synthetic_series):
    a = synthetic_series("a", seed=3)
    b = synthetic_series("b", seed=3)
    assert a.series_instance_uid == b.series_instance_uid
    np.testing.assert_array_equal(a.volume, b.volume)


def test_orthanc_answers_dimse_and_dicomweb(orthanc, ct_series):
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    ae = AE(ae_title="KAAPANA_TEST")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(pydicom.dcmread(ct_series.files[0])).Status == 0
    finally:
        assoc.release()
    r = requests.get(
        f"{orthanc.dicomweb_url}/studies/{ct_series.study_instance_uid}/series",
        headers={"Accept": "application/dicom+json"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()[0]["0020000E"]["Value"] == [ct_series.series_instance_uid]


def test_orthanc_auth_variant_demands_credentials(orthanc_auth):
    assert requests.get(f"{orthanc_auth.dicomweb_url}/studies", timeout=5).status_code == 401
    assert (
        requests.get(f"{orthanc_auth.dicomweb_url}/studies", auth=orthanc_auth.auth, timeout=5).status_code
        == 200
    )


def test_osmem_indexes_and_finds(osmem):
    from opensearchpy import OpenSearch

    client = OpenSearch(osmem.url)
    client.index(index="foundation-test", id="1.2.3", body={"Modality": "CT"}, refresh=True)
    hits = client.search(index="foundation-test", body={"query": {"match": {"Modality": "CT"}}})["hits"][
        "hits"
    ]
    assert [h["_id"] for h in hits] == ["1.2.3"]


def test_dag_test_runs_on_migrated_db(airflow_db):
    from tests.dags.smoke import dag

    dag_run = dag.test()
    assert dag_run.state == "success"
    values = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dag_run.get_task_instances()}
    assert values == {"produce": 41, "consume": 42}
