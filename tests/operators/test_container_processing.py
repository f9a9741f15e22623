"""ContainerProcessingOperator: the pods it builds for the example algorithms (no cluster, validated
offline with kubernetes-validate --strict) and the contract it keeps in local mode."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import ApiClient

from airflow_provider_kaapana.core.algorithms.manifest import load_manifest
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.operators.container_processing import ContainerProcessingOperator

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2001"
RUN_ID = "manual__2026-12-01T10:00:00+00:00"
K8S_VERSION = "1.37.0"


def context(dag_id: str = "kaapana_algorithm_x") -> dict:
    ti = SimpleNamespace(dag_id=dag_id, task_id="process", map_index=-1, try_number=1)
    return {"ti": ti, "run_id": RUN_ID, "dag": SimpleNamespace(dag_id=dag_id)}


def serialise(pod) -> dict:
    return ApiClient().sanitize_for_serialization(pod)


@pytest.mark.parametrize(
    ("example", "key"), [("threshold-segmenter", "nifti_dir"), ("measure-intensity", "series_dir")]
)
def test_example_pods_validate_strictly_and_keep_the_contract(example, key):
    manifest = load_manifest(EXAMPLES / example)
    input_dir = f"/kaapana/ws/kaapana_algorithm_x/{RUN_ID}/batch/{SERIES_UID}/in"
    op = ContainerProcessingOperator(
        task_id="process",
        namespace="kaapana",
        manifest=manifest,
        series={"series_instance_uid": SERIES_UID, key: input_dir},
        workspace_base="/kaapana/ws",
        workspace_claim="kaapana-workspace",
        node_selector={"kaapana/pool": "cpu"},
    )
    assert isinstance(op, KubernetesPodOperator)
    data = serialise(op.build_pod_request_obj(context(), dry_run=True))
    kubernetes_validate.validate(data, K8S_VERSION, strict=True)
    data_again = serialise(op.build_pod_request_obj(context(), dry_run=True))
    (container,) = data["spec"]["containers"]
    assert container["image"] == manifest.image and container["command"] == manifest.command
    job_dir = RunWorkspace(Path("/kaapana/ws"), "kaapana_algorithm_x", RUN_ID).step_dir(
        SERIES_UID, manifest.name, False
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KAAPANA_INPUT_DIR"] == input_dir
    assert env["KAAPANA_OUTPUT_DIR"] == str(job_dir / "output")
    assert env["KAAPANA_PARAMS_FILE"] == str(job_dir / "params.json")
    assert env["KAAPANA_INPUT_FORMAT"] == manifest.input_format and env["KAAPANA_CONTRACT_VERSION"] == "1"
    mounts = container["volumeMounts"]
    assert {"name": "kaapana-workspace", "mountPath": "/kaapana/ws", "readOnly": False} in mounts
    (ro,) = [m for m in mounts if m.get("readOnly")]
    assert (
        ro["mountPath"] == input_dir
        and ro["subPath"] == f"kaapana_algorithm_x/{RUN_ID}/batch/{SERIES_UID}/in"
    )
    assert data_again["spec"]["containers"][0]["volumeMounts"] == mounts  # a second build adds nothing
    resources = container["resources"]
    assert "nvidia.com/gpu" not in resources["limits"]
    assert resources["requests"]["memory"] == manifest.resources["memory"]
    assert data["spec"]["nodeSelector"] == {"kaapana/pool": "cpu"}


def test_gpu_manifest_resources_and_node_selector(tmp_path):
    data = json.loads(
        json.dumps(
            __import__("yaml").safe_load((EXAMPLES / "threshold-segmenter" / "manifest.yaml").read_text())
        )
    )
    data["resources"] = {
        "gpus": 2,
        "memory": "8Gi",
        "memory_limit": "16Gi",
        "shm_size": "2Gi",
        "node_selector": {"gpu": "a100"},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    op = ContainerProcessingOperator(
        task_id="process",
        manifest=str(tmp_path),
        input_dir="/data/in",
        job_dir="/data/job",
        workspace_host_path="/srv/ws",
    )
    pod = serialise(op.build_pod_request_obj(context(), dry_run=True))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert not [m for m in container["volumeMounts"] if m.get("readOnly")]  # /data/in is not in the workspace


def test_missing_input_is_named():
    op = ContainerProcessingOperator(
        task_id="process", manifest=EXAMPLES / "measure-intensity", series={"nifti_dir": "/x"}
    )
    with pytest.raises(KaapanaError, match="series_dir"):
        op.build_pod_request_obj(context(), dry_run=True)


def test_local_mode_no_findings_skips(tmp_path):
    import nibabel as nib
    import numpy as np

    nifti = tmp_path / "nifti"
    nifti.mkdir()
    nib.save(
        nib.Nifti1Image(np.full((4, 4, 4), -1000, dtype=np.int16), np.eye(4)), nifti / "case_0000.nii.gz"
    )
    op = ContainerProcessingOperator(
        task_id="process",
        manifest=EXAMPLES / "threshold-segmenter",
        series={"series_instance_uid": SERIES_UID, "nifti_dir": str(nifti)},
        params_values={"lower": -850, "upper": 3000, "label_name": "lesion"},
        mode="local",
        workspace_base=str(tmp_path / "ws"),
    )
    with pytest.raises(AirflowSkipException, match="no findings"):
        op.execute(context())
    op.params_values = {"lower": -1000, "upper": 0, "label_name": "bone"}
    result = op.execute(context())
    assert json.loads(Path(result["labels_path"]).read_text()) == {"background": 0, "bone": 1}
    assert nib.load(result["label_map_path"]).get_fdata().sum() == 64
