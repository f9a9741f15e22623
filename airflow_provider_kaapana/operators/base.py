"""What every Kaapana operator shares: the run workspace from the task context, and its hook.

The habit is Airflow's common-sql provider's: an operator holds a connection id, resolves its hook once
through the cached :attr:`KaapanaBaseOperator.hook` property, whose one override point is
:meth:`~KaapanaBaseOperator.get_hook`; ``execute()`` is a few lines calling the core. Rendered argument
values are read back by :mod:`airflow_provider_kaapana.core.params` (``as_native``, ``as_mapping``,
``parse_bool``...), the same functions for every operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_kaapana.core.workspace import RunWorkspace, run_workspace
from airflow_provider_kaapana.exceptions import KaapanaError


def run_ids(context: Mapping[str, Any]) -> tuple[str, str]:
    """``(dag_id, run_id)`` of the running task, from its context.

    The DAG id is the task instance's (``ti``), else the DAG run's, else the DAG's: one Airflow context
    holds all three, the same id; a hand-made context for a test may hold only one of them.
    """
    for key in ("ti", "dag_run", "dag"):
        dag_id = getattr(context.get(key), "dag_id", None)
        if dag_id:
            return str(dag_id), str(context["run_id"])
    raise KaapanaError("the task context names no DAG (no ti, dag_run or dag): pass an output folder")


class WorkspaceMixin:
    """``run_workspace(context)``: ``<workspace_base>/<dag_id>/<run_id>`` of the running task.

    A mixin, so that an operator with another parent (the nnU-Net pod operator) shares it.
    """

    workspace_base: str

    def run_workspace(self, context: Mapping[str, Any]) -> RunWorkspace:
        return run_workspace(self.workspace_base, *run_ids(context))


class KaapanaBaseOperator(WorkspaceMixin, BaseOperator):
    """Base of the operators: the run workspace, and a hook resolved once.

    Subclasses that talk to a service override :meth:`get_hook` (building the hook from their
    connection-id argument); :attr:`hook` caches it for the task's lifetime, so a test or a subclass
    replaces the one method, never each use.
    """

    def __init__(self, **kwargs: Any) -> None:
        # Own (empty) signature: Airflow's metaclass would otherwise copy BaseOperator.__init__ here,
        # and .partial() would read its defaults (inlets=None ...) as this class's, breaking mapping.
        super().__init__(**kwargs)

    @cached_property
    def hook(self) -> Any:
        """The operator's hook, built by :meth:`get_hook` on first use (after templates are rendered)."""
        return self.get_hook()

    def get_hook(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} uses no connection")
