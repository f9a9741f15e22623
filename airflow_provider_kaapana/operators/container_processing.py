"""``ContainerProcessingOperator``: any ``kaapana.algorithm/v1`` container as a pod, or its command locally.

A :class:`~airflow_provider_kaapana.operators.pods.PodStepOperator` (the one pod implementation it
shares with the nnU-Net step): the build step fills in the manifest's image, command, resources and the
contract's environment, and mounts the input read-only. ``mode="local"`` runs the manifest's
``local_command`` on the worker with the same environment (:mod:`airflow_provider_kaapana.core.algorithms`).
Returns ``{"series_instance_uid", "case_id", "algorithm", "version", "output_dir", "label_map_path",
"labels_path", "measurements_path", "dicom_dir"}`` (the keys of the declared outputs), so the SEG export
and send steps take it as they take the nnU-Net step's XCom. :class:`MeasurementsIndexOperator` puts
a ``measurements`` output into the index.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s

from airflow_provider_kaapana.core.algorithms.contract import (
    EXIT_NO_FINDINGS,
    Job,
    NoFindings,
    collect_outputs,
    job_environment,
    prepare_job,
    run_local,
)
from airflow_provider_kaapana.core.algorithms.manifest import Manifest, load_manifest
from airflow_provider_kaapana.core.params import as_mapping
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.hooks.search import SearchHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator
from airflow_provider_kaapana.operators.pods import WORKSPACE_VOLUME, PodStepOperator

INPUT_KEYS = {"dicom": "series_dir", "nifti": "nifti_dir"}
SERIES_KEYS = ("series_instance_uid", "study_instance_uid", "case_id", "modality", "series_dir", "nifti_dir")


class ContainerProcessingOperator(PodStepOperator):
    """Run one algorithm (its manifest) on one series (see ``docs/operators/container_processing.rst``).

    :param manifest: a :class:`~airflow_provider_kaapana.core.algorithms.manifest.Manifest`, or the path
        of a manifest file/folder.
    :param series: the upstream step's XCom: the NIfTI step's (``nifti_dir``) for ``inputs.format:
        nifti``, the receive step's (``series_dir``) for ``dicom`` (templated).
    :param source: the receive step's XCom, for the series metadata (templated, optional).
    :param params: parameter values for ``params.json`` (templated; usually ``{name: "{{ params.name }}"}``).
    :param input_dir: explicit input folder instead of the one in ``series`` (templated).
    :param job_dir: explicit job folder; default ``<workspace>/<dag>/<run>/batch/<uid>/<name>``.
    :param mode, workspace_base, workspace_claim, workspace_host_path: as ``PodStepOperator``.
    The manifest's ``resources`` (gpus, memory, memory_limit, cpu, shm_size, node_selector) are the
    defaults of the pod's; every KubernetesPodOperator argument given here wins.
    """

    template_fields: Sequence[str] = (
        *PodStepOperator.template_fields,
        "series",
        "source",
        "params_values",
        "input_dir",
        "job_dir",
        "workspace_base",
    )

    def __init__(
        self,
        *,
        manifest: Manifest | str | os.PathLike[str],
        series: Mapping[str, Any] | str | None = None,
        source: Mapping[str, Any] | str | None = None,
        params_values: Mapping[str, Any] | str | None = None,
        input_dir: str | None = None,
        job_dir: str | None = None,
        mode: str = "kubernetes",
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        image: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        resources = self.manifest.resources
        pod_defaults: dict[str, Any] = {
            "gpus": resources.get("gpus", 0),
            "memory_request": resources.get("memory", "1Gi"),
            "memory_limit": resources.get("memory_limit") or resources.get("memory", "4Gi"),
            "cpu_request": resources.get("cpu", "1"),
            "shm_size": resources.get("shm_size"),
            "name": self.manifest.name,
            "skip_on_exit_code": EXIT_NO_FINDINGS,
        }
        if resources.get("node_selector"):
            pod_defaults["node_selector"] = dict(resources["node_selector"])
        if resources.get("timeout_seconds"):
            pod_defaults["active_deadline_seconds"] = int(resources["timeout_seconds"])
        super().__init__(
            image=image or self.manifest.image,
            mode=mode,
            workspace_base=workspace_base,
            **{**pod_defaults, **kwargs},
        )
        self.series = series
        self.source = source
        self.params_values = params_values
        self.input_dir = input_dir
        self.job_dir = job_dir

    # -- the job ---------------------------------------------------------------------------------------
    def _series(self) -> dict[str, Any]:
        source = as_mapping(self.source, "source")
        series = as_mapping(self.series, "series")
        return {k: v for k, v in {**source, **series}.items() if k in SERIES_KEYS and v is not None}

    def job(self, context: Any) -> Job:
        series = self._series()
        input_dir = self.input_dir or series.get(INPUT_KEYS[self.manifest.input_format])
        if not input_dir:
            key = INPUT_KEYS[self.manifest.input_format]
            raise KaapanaError(f"{self.task_id}: no input: give series (with {key}) or input_dir")
        if self.job_dir:
            return Job(Path(input_dir), Path(self.job_dir))
        uid = series.get("series_instance_uid")
        if not uid:
            raise KaapanaError(
                f"{self.task_id}: no job_dir, and no series_instance_uid to place it in the workspace"
            )
        return Job(
            Path(input_dir), self.run_workspace(context).step_dir(uid, self.manifest.name, create=False)
        )

    def prepare(self, context: Any) -> None:
        values = prepare_job(
            self.manifest, self.job(context), as_mapping(self.params_values, "params"), self._series()
        )
        self.log.info("%s %s, parameters %s", self.manifest.name, self.manifest.version, values)

    # -- kubernetes mode: the manifest's command, the contract's environment ---------------------------
    def pod_command(self, context: Any) -> tuple[list[str], list[str]]:
        return list(self.manifest.command), []

    def pod_env(self, context: Any) -> dict[str, str]:
        return job_environment(self.manifest, self.job(context))

    def pod_mounts(self, context: Any) -> list[k8s.V1VolumeMount]:
        """The input again, read-only, over its place in the workspace (same path, subPath of the volume)."""
        input_dir = self.job(context).input_dir
        base = Path(self.workspace_base)
        if not self.workspace_mounted or base not in input_dir.parents:
            return []
        return [
            k8s.V1VolumeMount(
                name=WORKSPACE_VOLUME,
                mount_path=str(input_dir),
                sub_path=str(input_dir.relative_to(base)),
                read_only=True,
            )
        ]

    # -- local mode ----------------------------------------------------------------------------------
    def execute_local(self, context: Any) -> None:
        try:
            run_local(self.manifest, self.job(context), lambda line: self.log.info("%s", line))
        except NoFindings as exc:
            raise AirflowSkipException(str(exc)) from exc

    def result(self, context: Any) -> dict[str, Any]:
        series = self._series()
        return {
            "series_instance_uid": series.get("series_instance_uid"),
            "case_id": series.get("case_id"),
            "algorithm": self.manifest.name,
            "version": self.manifest.version,
            **collect_outputs(self.manifest, self.job(context)),
        }


class MeasurementsIndexOperator(KaapanaBaseOperator):
    """An algorithm's ``measurements.json`` -> ``kaapana.algorithms.<name>`` of the series' index document.

    :param processing: the ContainerProcessingOperator's XCom (templated).
    :param source: the receive step's XCom; indexes the series first when it is not yet in the index.
    """

    template_fields: Sequence[str] = ("processing", "source", "index")

    def __init__(
        self,
        *,
        processing: Mapping[str, Any] | str,
        source: Mapping[str, Any] | str | None = None,
        index: str,
        search_conn_id: str = SearchHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.processing = processing
        self.source = source
        self.index = index
        self.search_conn_id = search_conn_id

    def get_hook(self) -> SearchHook:
        return SearchHook(search_conn_id=self.search_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.algorithms.contract import load_measurements
        from airflow_provider_kaapana.core.algorithms.measurements import index_measurements

        processing = as_mapping(self.processing, "processing")
        source = as_mapping(self.source, "source")
        path = processing.get("measurements_path")
        uid = processing.get("series_instance_uid") or source.get("series_instance_uid")
        if not path or not uid:
            raise KaapanaError(
                f"{self.task_id}: the processing XCom names no measurements_path/series_instance_uid"
            )
        entry = index_measurements(
            self.hook.get_client(),
            self.index,
            uid,
            processing["algorithm"],
            processing["version"],
            load_measurements(path),
            series_dir=source.get("series_dir"),
        )
        self.log.info("indexed %s measurements of %s: %s", processing["algorithm"], uid, entry)
        return {"series_instance_uid": uid, "index": self.index, "fields": entry}
