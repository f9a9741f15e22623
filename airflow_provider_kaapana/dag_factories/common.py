"""Pieces shared by the DAG factories: defaults, form params, and small run-time helpers.

Everything here is cheap at parse time: the only I/O is listing the names of the installed models (directory
entries of the local model store: no file is opened, never the network). Run-time checks of a run's
inputs (:func:`check_run_conf`) fail the first task with :class:`AirflowFailException`, so a wrong input
is never retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, BaseOperator, Param, get_parsing_context
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaapana.core.dicom.uids import UID_PATTERN
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.core.nnunet.models import POD_MODELS_DIR, installed_datasets
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.dag_factories.run_conf import check_run_conf as check_run_conf  # re-exported

if TYPE_CHECKING:  # the PACS modules import pydicom and pynetdicom: only DAGs that use them pay for it
    from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator

log = logging.getLogger(__name__)

# JSON schema of one Series Instance UID in a form: the same rule as core.uids (PS3.5 9.1), so a UID the
# form accepts is never refused by the tasks later (e.g. "1.02.3": leading zero in a component).
UID_ITEMS: dict[str, Any] = {"type": "string", "pattern": UID_PATTERN, "maxLength": 64}


@dataclass
class PipelineSettings:
    """Deployment settings a factory bakes into its DAG (connection ids, paths, index, image...)."""

    workspace_base: str = DEFAULT_WORKSPACE_BASE
    pacs_conn_id: str = "kaapana_pacs_default"
    search_conn_id: str = "kaapana_search_default"
    index: str = DEFAULT_INDEX
    models_dir: str = POD_MODELS_DIR  # the model store, as mounted on workers and in the nnU-Net pods
    predict_mode: str = "kubernetes"  # or "local": same CLI as a subprocess on the worker
    predict_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. image, PVC names, tolerations
    default_args: dict[str, Any] = field(default_factory=lambda: {"retries": 1})
    # scale-out (docs/guides/scale_out.rst): the executor queue and pool of the GPU tasks (predict),
    # and the pool bounding PACS associations (store/send). None: Airflow's defaults.
    gpu_queue: str | None = None
    gpu_pool: str | None = None
    pacs_pool: str | None = None

    def gpu_task_kwargs(self) -> dict[str, Any]:
        """``queue``/``pool`` for a GPU task (only those set)."""
        return {k: v for k, v in (("queue", self.gpu_queue), ("pool", self.gpu_pool)) if v}

    def pacs_task_kwargs(self) -> dict[str, Any]:
        """``pool`` for a task that opens PACS associations (only when set)."""
        return {"pool": self.pacs_pool} if self.pacs_pool else {}


def installed_model_names(models_dir: str) -> list[str]:
    """Installed nnU-Net models by dataset name (``Dataset901_TinySphere``), from directory entries only.

    The trigger form's model list is fixed when the DAG file is parsed (every 30 s by the dag-processor),
    so this opens no file: whether a listed model is complete is checked by the predict task.
    """
    try:
        return installed_datasets(models_dir)
    except OSError as exc:  # an unreadable store must not break DAG parsing: the form falls back to text
        log.warning("cannot list installed models in %s: %s", models_dir, exc)
        return []


def model_param(models_dir: str, section: str = "Model") -> Param:
    """The form's model field: an enum of the installed models, the first preselected; with none
    installed, a required text field whose help says so and how to install one."""
    names = installed_model_names(models_dir)
    install = "use the kaapana_install_model DAG or `kaapana models install`"
    common: dict[str, Any] = {"title": "nnU-Net model", "section": section}
    if names:
        return Param(
            names[0],
            type="string",
            enum=names,
            description=f"An installed model (in {models_dir}); to add another, {install}.",
            **common,
        )
    return Param(
        "",
        type="string",
        minLength=1,
        description=(
            f"No model is installed in {models_dir} (when this DAG file was last parsed): to install "
            f"one, {install}; or type the name of one the workers have."
        ),
        **common,
    )


def pipeline_dag(
    dag_id: str,
    settings: PipelineSettings,
    *,
    tags: list[str],
    description: str,
    doc_md: str,
    params: dict[str, Param],
    schedule: Any = None,
    **kwargs: Any,
) -> DAG:
    """The DAG every factory builds: not back-filled, tagged ``kaapana``, XCom args rendered natively,
    with a one-line ``description`` (the DAG list) beside the ``doc_md`` (the DAG's page)."""
    return DAG(
        dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["kaapana", *tags],
        description=description,
        doc_md=doc_md,
        default_args=settings.default_args,
        render_template_as_native_obj=True,
        params=params,
        **kwargs,
    )


def runs_in_this_process(task_id: str) -> bool:
    """Whether this parse of the DAG file may run task ``task_id`` (its full id, ``group.task``).

    Airflow 3 parses the whole DAG file again in every task's process, so every task pays for the
    imports of every operator class of its DAG. A factory whose operator is costly to import (the
    nnU-Net pod operator pulls in the Kubernetes clients: about 1.5 s and 2000 modules on the 2-core
    development machine) builds a :class:`StandIn` instead where this is ``False``: in the process of
    *another* task of the DAG. The dag-processor, ``dag.test()`` and the task's own process (no
    parsing context, or this task's) get the real operator.
    """
    running = get_parsing_context().task_id
    return running is None or running == task_id


class StandIn(BaseOperator):
    """The place of a task whose operator class is not imported in this process (see
    :func:`runs_in_this_process`): same task id, same upstream tasks, so XCom references to it resolve
    as they would to the real one. It never runs: executing it is an error."""

    def __init__(self, *, upstream: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if upstream is not None:
            upstream >> self

    def execute(self, context: Any) -> Any:
        raise AirflowFailException(
            f"task {self.task_id} was built as a stand-in: its DAG file was parsed for another task"
        )


def receive_from_pacs(series: Any, settings: PipelineSettings) -> DicomReceiveOperator:
    """The ``receive`` step of a per-series chain: the series into the run workspace, by the form's method."""
    from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator

    return DicomReceiveOperator(
        task_id="receive",
        series=series,
        method="{{ params.retrieve_method }}",
        pacs_conn_id=settings.pacs_conn_id,
        workspace_base=settings.workspace_base,
    )


def retrieve_method_param(**kwargs: Any) -> Param:
    from airflow_provider_kaapana.hooks.pacs import RETRIEVE_METHODS

    return Param(
        "c-get", type="string", enum=list(RETRIEVE_METHODS), title="Retrieve from the PACS by", **kwargs
    )


def send_method_param(**kwargs: Any) -> Param:
    from airflow_provider_kaapana.core.net.send import SEND_METHODS

    return Param("c-store", type="string", enum=list(SEND_METHODS), title="Send by", **kwargs)
