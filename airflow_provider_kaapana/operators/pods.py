"""What the pod operators share: volumes, resources, and a KubernetesPodOperator whose build step is ours.

:class:`PodStepOperator` is the one implementation behind ``NnUNetPredictOperator`` and
``ContainerProcessingOperator``: in ``mode="kubernetes"`` it is a stock KubernetesPodOperator whose
:meth:`~PodStepOperator.build_pod_request_obj` fills in the command (:meth:`pod_command`), extra
environment and mounts; running, logs, deferral and clean-up are the parent's. In ``mode="local"``
:meth:`execute_local` runs the same command on the worker. Both modes return :meth:`result`.

The workspace is mounted in the pod at the path the worker uses, so every path in XCom means the same
file on both sides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.operators.base import WorkspaceMixin

MODES = ("kubernetes", "local")
WORKSPACE_VOLUME = "kaapana-workspace"


def pod_volume(name: str, claim: str | None, host_path: str | None) -> k8s.V1Volume | None:
    """A PVC or hostPath volume (neither: ``None``; both: an error naming the volume)."""
    if claim and host_path:
        raise ValueError(f"{name}: give a PVC claim or a hostPath, not both")
    if claim:
        return k8s.V1Volume(
            name=name, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        )
    if host_path:
        return k8s.V1Volume(
            name=name, host_path=k8s.V1HostPathVolumeSource(path=host_path, type="DirectoryOrCreate")
        )
    return None


def pod_resources(
    gpus: int, memory_request: str, memory_limit: str, cpu_request: str
) -> k8s.V1ResourceRequirements:
    """Requests and limits of the step's container; ``nvidia.com/gpu`` only when ``gpus`` > 0."""
    if gpus < 0:
        raise ValueError("gpus must be >= 0")
    limits: dict[str, str] = {"memory": memory_limit}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return k8s.V1ResourceRequirements(requests={"memory": memory_request, "cpu": cpu_request}, limits=limits)


class PodStepOperator(WorkspaceMixin, KubernetesPodOperator):
    """A pipeline step run as a pod (or locally); subclasses say the command and read the result.

    :param mode: ``"kubernetes"`` (a pod) or ``"local"`` (a subprocess on the worker).
    :param workspace_base: the run workspace base path (worker and pod).
    :param workspace_claim, workspace_host_path: PVC claim name or hostPath holding the workspace.
    :param extra_volumes: ``(name, claim, host_path, mount_path, read_only)`` of further stores (models).
    :param gpus: ``nvidia.com/gpu`` limit of the pod (0: CPU pod).
    :param memory_request, memory_limit, cpu_request: pod resources unless ``container_resources`` given.
    :param shm_size: size of a memory-backed ``/dev/shm`` (None: none).
    Every other KubernetesPodOperator argument passes through.
    """

    def __init__(
        self,
        *,
        image: str,
        mode: str = "kubernetes",
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        workspace_claim: str | None = None,
        workspace_host_path: str | None = None,
        extra_volumes: Sequence[tuple[str, str | None, str | None, str, bool]] = (),
        gpus: int = 0,
        memory_request: str = "1Gi",
        memory_limit: str = "4Gi",
        cpu_request: str = "1",
        shm_size: str | None = None,
        container_resources: k8s.V1ResourceRequirements | None = None,
        volumes: list[k8s.V1Volume] | None = None,
        volume_mounts: list[k8s.V1VolumeMount] | None = None,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if container_resources is None:
            container_resources = pod_resources(gpus, memory_request, memory_limit, cpu_request)
        volumes = list(volumes or [])
        volume_mounts = list(volume_mounts or [])
        self.workspace_mounted = bool(workspace_claim or workspace_host_path)
        for name, claim, host_path, mount_path, read_only in (
            (WORKSPACE_VOLUME, workspace_claim, workspace_host_path, workspace_base, False),
            *extra_volumes,
        ):
            volume = pod_volume(name, claim, host_path)
            if volume is not None:
                volumes.append(volume)
                volume_mounts.append(k8s.V1VolumeMount(name=name, mount_path=mount_path, read_only=read_only))
        if shm_size:
            volumes.append(
                k8s.V1Volume(
                    name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=shm_size)
                )
            )
            volume_mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
        # The parent's do_xcom_push also means "add an XCom sidecar to the pod"; our XCom is the small
        # result dict returned by execute(), so the sidecar stays off and the flag is restored below.
        push_result = kwargs.pop("do_xcom_push", True)
        super().__init__(
            image=image,
            container_resources=container_resources,
            volumes=volumes,
            volume_mounts=volume_mounts,
            do_xcom_push=False,
            **kwargs,
        )
        self.do_xcom_push = push_result
        self.mode = mode
        self.workspace_base = workspace_base
        self.gpus = gpus
        self._step_volume_mounts: list[Any] | None = None

    # -- what subclasses say -------------------------------------------------------------------------
    def pod_command(self, context: Any) -> tuple[list[str], list[str]]:
        """``(command, arguments)`` of the pod's container."""
        raise NotImplementedError

    def pod_env(self, context: Any) -> dict[str, str]:
        """Extra environment of the pod's container."""
        return {}

    def pod_mounts(self, context: Any) -> list[k8s.V1VolumeMount]:
        """Extra mounts of the pod's container (computed per run, e.g. the input read-only)."""
        return []

    def prepare(self, context: Any) -> None:
        """Run on the worker before the pod starts (or the local command): e.g. write the job's files."""

    def execute_local(self, context: Any) -> None:
        raise NotImplementedError

    def result(self, context: Any) -> dict[str, Any]:
        raise NotImplementedError

    # -- kubernetes mode: only the build step is ours ------------------------------------------------
    @contextlib.contextmanager
    def _no_sidecar(self) -> Iterator[None]:
        push_result, self.do_xcom_push = self.do_xcom_push, False
        try:
            yield
        finally:
            self.do_xcom_push = push_result

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> k8s.V1Pod:
        self.cmds, self.arguments = self.pod_command(context)
        env = self.pod_env(context)
        if env:
            given = [e for e in (self.env_vars or []) if getattr(e, "name", None) not in env]
            self.env_vars = [*given, *(k8s.V1EnvVar(name=k, value=v) for k, v in env.items())]
        # the step's own mounts (rendered) are kept at the first build and the per-run ones added to a
        # copy, so a second build (retry, dry run) adds nothing twice
        if self._step_volume_mounts is None:
            self._step_volume_mounts = list(self.volume_mounts)
        self.volume_mounts = [*self._step_volume_mounts, *self.pod_mounts(context)]
        with self._no_sidecar():
            return super().build_pod_request_obj(context, dry_run=dry_run)

    def execute(self, context: Any) -> dict[str, Any]:
        self.prepare(context)
        if self.mode == "local":
            self.execute_local(context)
            return self.result(context)
        with self._no_sidecar():
            super().execute(context)  # deferrable: defers here and comes back in trigger_reentry
        return self.result(context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        with self._no_sidecar():
            super().trigger_reentry(context, event)
        return self.result(context)
