"""NnUNetPredictOperator: the pod it builds (no cluster) and its local mode through dag.test()."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import nibabel as nib
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from airflow_provider_kaapana.core.nnunet.models import install_model
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.operators.nnunet_predict import DEFAULT_IMAGE, NnUNetPredictOperator
from airflow_provider_kaapana.testing.tiny_model import TINY_LABELS, dice_score, write_tiny_case

SERIES_UID = "1.2.826.0.1.3680043.8.498.1001"
K8S_VERSION = "1.37.0"


def context(dag_id: str = "kaapana_segment", run_id: str = "manual__2026-11-26T10:00:00+00:00") -> dict:
    ti = SimpleNamespace(dag_id=dag_id, task_id="nnunet", map_index=-1, try_number=1)
    return {"ti": ti, "run_id": run_id, "dag": SimpleNamespace(dag_id=dag_id)}


def gpu_operator(**overrides) -> NnUNetPredictOperator:
    kwargs = dict(
        task_id="nnunet",
        namespace="kaapana",
        model="Dataset901_TinySphere",
        series={"series_instance_uid": SERIES_UID, "case_id": "ct", "nifti_dir": "/kaapana/ws/in/nifti"},
        folds=[0, 1],
        tta=False,
        step_size=0.7,
        models_dir="/kaapana/models",
        workspace_base="/kaapana/ws",
        workspace_claim="kaapana-workspace",
        models_claim="kaapana-models",
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        affinity=k8s.V1Affinity(
            node_affinity=k8s.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                    node_selector_terms=[
                        k8s.V1NodeSelectorTerm(
                            match_expressions=[
                                k8s.V1NodeSelectorRequirement(
                                    key="gpu-pool", operator="In", values=["a100", "h100"]
                                )
                            ]
                        )
                    ]
                )
            )
        ),
        priority_class_name="kaapana-gpu",
    )
    kwargs.update(overrides)
    return NnUNetPredictOperator(**kwargs)


def serialise(pod: k8s.V1Pod) -> dict:
    return ApiClient().sanitize_for_serialization(pod)


def test_pod_spec_carries_gpu_mounts_scheduling_and_command():
    op = gpu_operator()
    assert isinstance(op, KubernetesPodOperator)
    pod = op.build_pod_request_obj(context(), dry_run=True)
    data = serialise(pod)
    kubernetes_validate.validate(data, K8S_VERSION, strict=True)

    spec = data["spec"]
    (container,) = spec["containers"]
    assert container["image"] == DEFAULT_IMAGE
    out = str(
        RunWorkspace(Path("/kaapana/ws"), "kaapana_segment", op_run_id()).step_dir(
            SERIES_UID, "nnunet", False
        )
    )
    assert container["command"] == ["kaapana", "predict"]
    assert container["args"] == [
        "--model", "Dataset901_TinySphere", "-i", "/kaapana/ws/in/nifti", "-o", out,
        "--models-dir", "/kaapana/models", "--device", "cuda",
        "--folds", "0", "1", "--checkpoint", "checkpoint_final.pth", "--step-size", "0.7", "--no-tta",
    ]  # fmt: skip
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["memory"] == "24Gi"
    assert container["resources"]["requests"] == {"memory": "8Gi", "cpu": "2"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["kaapana-workspace"]["mountPath"] == "/kaapana/ws"
    assert mounts["kaapana-models"] == {
        "name": "kaapana-models",
        "mountPath": "/kaapana/models",
        "readOnly": True,
    }
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kaapana-workspace"]["persistentVolumeClaim"] == {"claimName": "kaapana-workspace"}
    assert volumes["kaapana-models"]["persistentVolumeClaim"] == {"claimName": "kaapana-models"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["priorityClassName"] == "kaapana-gpu"
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms[0]["matchExpressions"][0]["values"] == ["a100", "h100"]
    assert spec["restartPolicy"] == "Never"
    assert data["metadata"]["namespace"] == "kaapana"
    assert data["metadata"]["labels"]["dag_id"] == "kaapana_segment"


def op_run_id() -> str:
    return context()["run_id"]


def test_cpu_pod_host_paths_and_explicit_folders_validate():
    op = gpu_operator(
        gpus=0,
        workspace_claim=None,
        models_claim=None,
        workspace_host_path="/srv/kaapana/ws",
        models_host_path="/srv/kaapana/models",
        series=None,
        input_dir="/kaapana/ws/x/nifti",
        output_dir="/kaapana/ws/x/seg",
        memory_limit="12Gi",
        shm_size=None,
    )
    data = serialise(op.build_pod_request_obj(context(), dry_run=True))
    kubernetes_validate.validate(data, K8S_VERSION, strict=True)
    (container,) = data["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"]["memory"] == "12Gi"
    args = container["args"]
    assert args[args.index("--device") + 1] == "cpu"
    assert (
        args[args.index("-i") + 1] == "/kaapana/ws/x/nifti"
        and args[args.index("-o") + 1] == "/kaapana/ws/x/seg"
    )
    volumes = {v["name"]: v for v in data["spec"]["volumes"]}
    assert set(volumes) == {"kaapana-workspace", "kaapana-models"}
    assert volumes["kaapana-models"]["hostPath"] == {
        "path": "/srv/kaapana/models",
        "type": "DirectoryOrCreate",
    }


def test_arguments_are_templated_and_checked():
    op = gpu_operator(deferrable=True)
    assert op.deferrable is True
    for name in (
        "model",
        "series",
        "input_dir",
        "output_dir",
        "folds",
        "configuration",
        "image",
        "arguments",
    ):
        assert name in op.template_fields
    assert set(KubernetesPodOperator.template_fields) <= set(op.template_fields)
    with pytest.raises(ValueError, match="mode"):
        gpu_operator(mode="docker")
    with pytest.raises(ValueError, match="not both"):
        gpu_operator(workspace_host_path="/srv/ws")
    with pytest.raises(KaapanaError, match="no input"):
        gpu_operator(series=None).build_pod_request_obj(context(), dry_run=True)
    with pytest.raises(KaapanaError, match="series must be"):
        gpu_operator(series="not-a-dict").build_pod_request_obj(context(), dry_run=True)


@pytest.mark.slow
def test_local_mode_through_dag_test(airflow_db, tiny_nnunet_model: Path, tmp_path: Path):
    from airflow_provider_kaapana.core.nnunet.models import export_model_zip
    from tests.dags.nnunet_predict_local import dag

    models_dir = tmp_path / "models"
    install_model(export_model_zip(tiny_nnunet_model, tmp_path / "model.zip"), models_dir)
    case = write_tiny_case(tmp_path / "nifti", case_id="series_a", seed=99)
    result_file = tmp_path / "result.json"
    dag_run = dag.test(
        run_conf={
            "model": "901",
            "models_dir": str(models_dir),
            "workspace_base": str(tmp_path / "ws"),
            "fold": "0",
            "series_instance_uid": SERIES_UID,
            "case_id": "series_a",
            "nifti_dir": str(tmp_path / "nifti"),
            "result_file": str(result_file),
        }
    )
    assert dag_run.state == "success"
    result = json.loads(result_file.read_text())
    expected_dir = RunWorkspace(tmp_path / "ws", dag.dag_id, dag_run.run_id).step_dir(
        SERIES_UID, "nnunet", False
    )
    assert result == {
        "series_instance_uid": SERIES_UID,
        "case_id": "series_a",
        "prediction_dir": str(expected_dir),
        "label_map_path": str(expected_dir / "series_a.nii.gz"),
        "labels_path": str(expected_dir / "labels.json"),
    }
    assert dice_score(nib.load(result["label_map_path"]).get_fdata(), case.truth) >= 0.8
    assert json.loads(Path(result["labels_path"]).read_text()) == TINY_LABELS
    provenance = json.loads((expected_dir / "prediction.json").read_text())
    assert provenance["tta"] is False and provenance["folds"] == [0] and provenance["device"] == "cpu"


def test_image_runs_the_same_command_without_airflow():
    """The pod image installs the package without Airflow: the CLI must not need it."""
    import subprocess
    import sys

    dockerfile = (
        Path(__file__).resolve().parents[2] / "operators_images/nnunet-predict/Dockerfile"
    ).read_text()
    assert 'ENTRYPOINT ["kaapana", "predict"]' in dockerfile
    (base,) = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert ":" in base and not base.endswith(":latest")
    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "from airflow_provider_kaapana.cli import main\n"
        "raise SystemExit(main(['predict', '--help']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--no-tta" in result.stdout and "--step-size" in result.stdout
    assert gpu_operator().build_pod_request_obj(context(), dry_run=True).spec.containers[0].command == [
        "kaapana",
        "predict",
    ]


def test_kubernetes_mode_returns_the_xcom_without_a_sidecar(monkeypatch):
    """The parent runs the pod (its API calls are replaced here: there is no cluster)."""
    seen = {}

    def fake_execute_sync(self, context):
        seen["push_flag"] = self.do_xcom_push
        seen["pod"] = self.build_pod_request_obj(context, dry_run=True)
        return None

    def fake_trigger_reentry(self, context, event):
        seen["reentry_flag"] = self.do_xcom_push
        return None

    monkeypatch.setattr(KubernetesPodOperator, "execute_sync", fake_execute_sync)
    monkeypatch.setattr(KubernetesPodOperator, "trigger_reentry", fake_trigger_reentry)
    op = gpu_operator()
    ctx = context()
    result = op.execute(ctx)
    out = RunWorkspace(Path("/kaapana/ws"), "kaapana_segment", ctx["run_id"]).step_dir(
        SERIES_UID, "nnunet", False
    )
    assert result == {
        "series_instance_uid": SERIES_UID,
        "case_id": "ct",
        "prediction_dir": str(out),
        "label_map_path": str(out / "ct.nii.gz"),
        "labels_path": str(out / "labels.json"),
    }
    assert seen["push_flag"] is False and [c.name for c in seen["pod"].spec.containers] == ["base"]
    assert op.do_xcom_push is True  # so Airflow pushes the returned dict
    assert op.trigger_reentry(ctx, {"status": "success"}) == result and seen["reentry_flag"] is False


def test_folds_from_a_template_string_are_split():
    op = gpu_operator(folds="{{ params.folds }}")
    op.folds = "0, 2"  # what rendering leaves
    args = op.build_pod_request_obj(context(), dry_run=True).spec.containers[0].args
    assert args[args.index("--folds") : args.index("--folds") + 3] == ["--folds", "0", "2"]
