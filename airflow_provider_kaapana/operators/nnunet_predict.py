"""``NnUNetPredictOperator``: ``kaapana predict`` as a GPU pod (a :class:`~.pods.PodStepOperator`) or locally.

In ``mode="kubernetes"`` the operator is a KubernetesPodOperator whose build step fills in the image, the
``kaapana predict`` command, GPU resources and the workspace/model-store volumes; running, logs,
deferral and clean-up are the parent's. In ``mode="local"`` the same command runs as a subprocess on
the worker. Both return the same XCom::

    {"series_instance_uid", "case_id", "prediction_dir", "label_map_path", "labels_path"}

The workspace and the model store are mounted in the pod at the same paths the worker uses, so every
path in XCom means the same file on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes.client import models as k8s

from airflow_provider_kaapana import __version__
from airflow_provider_kaapana.core.nnunet.models import DEFAULT_CHECKPOINT, POD_MODELS_DIR
from airflow_provider_kaapana.core.nnunet.predict import LABELS_FILE, PROVENANCE_FILE
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.operators.pods import PodStepOperator

DEFAULT_IMAGE = f"ghcr.io/kaapana-provider/kaapana-nnunet-predict:{__version__}"
STEP = "nnunet"


class NnUNetPredictOperator(PodStepOperator):
    """Run an nnU-Net model on one series' NIfTI files (see ``docs/operators/nnunet_predict.rst``).

    :param model: trainer folder, or dataset name/id installed in ``models_dir`` (templated).
    :param series: the NIfTI step's XCom ``{"series_instance_uid", "case_id", "nifti_dir", ...}``
        (templated; pass the upstream task's output).
    :param input_dir: explicit input folder instead of ``series["nifti_dir"]`` (templated).
    :param output_dir: where the label maps go; default ``<workspace>/<dag>/<run>/batch/<uid>/nnunet``.
    :param configuration, folds, checkpoint, device, tta, step_size: as ``kaapana predict``.
        ``device`` None means ``cuda`` for a pod with GPUs, ``cpu`` without, ``auto`` locally.
    :param mode: ``"kubernetes"`` (a pod) or ``"local"`` (a subprocess on the worker).
    :param models_dir: the model store path (worker and pod).
    :param workspace_base: the run workspace base path (worker and pod).
    :param workspace_claim, workspace_host_path: PVC claim name or hostPath holding the workspace.
    :param models_claim, models_host_path: PVC claim name or hostPath holding the model store.
    :param gpus: ``nvidia.com/gpu`` limit of the pod (0: CPU pod).
    :param memory_request, memory_limit, cpu_request: pod resources unless ``container_resources`` given.
    :param shm_size: size of the memory-backed ``/dev/shm`` (nnU-Net's worker processes share tensors).
    Every other KubernetesPodOperator argument (``node_selector``, ``tolerations``, ``affinity``,
    ``priority_class_name``, ``deferrable``, ``namespace`` ...) passes through.
    """

    template_fields: Sequence[str] = (
        *PodStepOperator.template_fields,
        "model",
        "series",
        "input_dir",
        "output_dir",
        "series_instance_uid",
        "case_id",
        "configuration",
        "folds",
        "tta",
        "step_size",
        "checkpoint",
        "device",
        "models_dir",
        "workspace_base",
    )

    def __init__(
        self,
        *,
        model: str,
        series: dict[str, Any] | None = None,
        input_dir: str | None = None,
        output_dir: str | None = None,
        series_instance_uid: str | None = None,
        case_id: str | None = None,
        configuration: str | None = None,
        folds: Sequence[int | str] | str | None = None,
        checkpoint: str = DEFAULT_CHECKPOINT,
        device: str | None = None,
        tta: bool = True,
        step_size: float = 0.5,
        mode: str = "kubernetes",
        models_dir: str = POD_MODELS_DIR,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        workspace_claim: str | None = None,
        workspace_host_path: str | None = None,
        models_claim: str | None = None,
        models_host_path: str | None = None,
        gpus: int = 1,
        memory_request: str = "8Gi",
        memory_limit: str = "24Gi",
        cpu_request: str = "2",
        shm_size: str = "4Gi",
        image: str | None = None,
        container_resources: k8s.V1ResourceRequirements | None = None,
        volumes: list[k8s.V1Volume] | None = None,
        volume_mounts: list[k8s.V1VolumeMount] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "nnunet-predict")
        super().__init__(
            image=image or DEFAULT_IMAGE,
            mode=mode,
            workspace_base=workspace_base,
            workspace_claim=workspace_claim,
            workspace_host_path=workspace_host_path,
            extra_volumes=[("kaapana-models", models_claim, models_host_path, models_dir, True)],
            gpus=gpus,
            memory_request=memory_request,
            memory_limit=memory_limit,
            cpu_request=cpu_request,
            shm_size=shm_size,
            container_resources=container_resources,
            volumes=volumes,
            volume_mounts=volume_mounts,
            **kwargs,
        )
        self.model = model
        self.series = series
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.series_instance_uid = series_instance_uid
        self.case_id = case_id
        self.configuration = configuration
        # a string is a template (or "0,1,2"), split after rendering
        self.folds = folds if folds is None or isinstance(folds, str) else list(folds)
        self.checkpoint = checkpoint
        self.device = device
        self.tta = tta
        self.step_size = step_size
        self.models_dir = models_dir

    # -- what to predict, where to -------------------------------------------------------------------
    def _series_field(self, key: str) -> Any:
        return self.series.get(key) if isinstance(self.series, dict) else None

    def _resolved(self, context: Any) -> dict[str, Any]:
        """Input/output folders and identifiers from the rendered arguments and the run."""
        if self.series is not None and not isinstance(self.series, dict):
            raise KaapanaError(f"series must be the NIfTI step's XCom dict, got {type(self.series).__name__}")
        uid = self.series_instance_uid or self._series_field("series_instance_uid")
        case_id = self.case_id or self._series_field("case_id")
        input_dir = self.input_dir or self._series_field("nifti_dir")
        if not input_dir:
            raise KaapanaError("no input: give series (with nifti_dir) or input_dir")
        output_dir = self.output_dir
        if not output_dir:
            if not uid or not context:
                raise KaapanaError(
                    "no output_dir, and no series_instance_uid/run to place it in the workspace"
                )
            workspace = self.run_workspace(context)
            output_dir = str(workspace.step_dir(uid, STEP, create=self.mode == "local"))
        return {
            "series_instance_uid": uid,
            "case_id": case_id,
            "input_dir": input_dir,
            "output_dir": output_dir,
        }

    def _device(self) -> str:
        if self.device:
            return str(self.device)
        if self.mode == "local":
            return "auto"
        return "cuda" if self.gpus else "cpu"

    def predict_arguments(self, input_dir: str, output_dir: str) -> list[str]:
        """The ``kaapana predict`` arguments, identical for the pod and the local subprocess."""
        args = ["--model", str(self.model), "-i", str(input_dir), "-o", str(output_dir)]
        args += ["--models-dir", str(self.models_dir), "--device", self._device()]
        if self.configuration:
            args += ["--configuration", str(self.configuration)]
        folds = self.folds.replace(",", " ").split() if isinstance(self.folds, str) else self.folds
        if folds:
            args += ["--folds", *(str(f) for f in folds)]
        args += ["--checkpoint", str(self.checkpoint), "--step-size", str(self.step_size)]
        if not parse_bool(self.tta, "tta"):
            args.append("--no-tta")
        return args

    # -- the pod's command; running it is PodStepOperator's ------------------------------------------
    def pod_command(self, context: Any) -> tuple[list[str], list[str]]:
        where = self._resolved(context)
        return ["kaapana", "predict"], self.predict_arguments(where["input_dir"], where["output_dir"])

    # -- local mode: the same CLI as a subprocess ----------------------------------------------------
    def execute_local(self, context: Any) -> None:
        where = self._resolved(context)
        command = [sys.executable, "-m", "airflow_provider_kaapana", "predict"]
        command += self.predict_arguments(where["input_dir"], where["output_dir"])
        self.log.info("running %s", " ".join(command))
        process = subprocess.run(command, capture_output=True, text=True)
        for line in (process.stdout + process.stderr).splitlines()[-200:]:
            self.log.info("%s", line)
        if process.returncode != 0:
            tail = process.stderr.strip().splitlines()[-1:] or ["(no output)"]
            raise KaapanaError(f"kaapana predict failed with exit code {process.returncode}: {tail[0]}")

    def result(self, context: Any) -> dict[str, Any]:
        where = self._resolved(context)
        prediction_dir = Path(where["output_dir"])
        case_id = where["case_id"]
        label_map_path: str | None = None
        provenance = prediction_dir / PROVENANCE_FILE
        cases: dict[str, str] = {}
        if provenance.is_file():  # the worker may not see the pod's volume; then fall back to the naming
            cases = json.loads(provenance.read_text()).get("cases", {})
        if case_id and case_id in cases:
            label_map_path = cases[case_id]
        elif case_id:
            label_map_path = str(prediction_dir / f"{case_id}.nii.gz")
        elif len(cases) == 1:
            case_id, label_map_path = next(iter(cases.items()))
        return {
            "series_instance_uid": where["series_instance_uid"],
            "case_id": case_id,
            "prediction_dir": str(prediction_dir),
            "label_map_path": label_map_path,
            "labels_path": str(prediction_dir / LABELS_FILE),
        }
