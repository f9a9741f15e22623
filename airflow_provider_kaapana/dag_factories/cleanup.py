"""Clean up old run workspaces, never one whose DAG run is still queued or running."""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.dag_factories.common import check_run_conf

log = logging.getLogger(__name__)
ACTIVE_STATES = {"queued", "running"}


def create_cleanup_dag(
    dag_id: str = "kaapana_cleanup_workspaces",
    workspace_base: str = DEFAULT_WORKSPACE_BASE,
    schedule: str | None = "@daily",
    max_age_days: float = 7.0,
) -> DAG:
    with DAG(
        dag_id,
        schedule=schedule,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["kaapana", "maintenance"],
        description="Remove run workspaces older than a number of days",
        doc_md=__doc__,
        params={
            "workspace_base": Param(workspace_base, type="string", title="Workspace base path"),
            "max_age_days": Param(
                max_age_days,
                type="number",
                minimum=0,
                title="Minimum age (days)",
                description="Run workspaces whose newest file is older than this are removed.",
            ),
        },
    ) as dag:

        @task(pre_execute=check_run_conf)
        def remove_stale_workspaces(params: dict | None = None, ti=None) -> list[str]:
            from airflow_provider_kaapana.core.workspace import find_stale_workspaces, remove_workspace

            removed: list[str] = []
            for stale in find_stale_workspaces(
                params["workspace_base"], float(params["max_age_days"]) * 86400
            ):
                try:
                    state = ti.get_dagrun_state(stale.dag_id, stale.run_id)
                except Exception as exc:
                    if not _run_not_found(exc):  # cannot tell: keep it, a running run may use it
                        log.warning("keeping %s: state of run %s unknown (%s)", stale.path, stale.run_id, exc)
                        continue
                    state = None  # the run is gone from the metadata DB: nothing can still use it
                if state in ACTIVE_STATES:
                    log.info("keeping %s: run %s of %s is %s", stale.path, stale.run_id, stale.dag_id, state)
                    continue
                remove_workspace(stale.path)
                log.info(
                    "removed %s (%.1f days old, run state %s)", stale.path, stale.age_seconds / 86400, state
                )
                removed.append(str(stale.path))
            return removed

        remove_stale_workspaces()
    return dag


def _run_not_found(exc: Exception) -> bool:
    """Whether asking for a DAG run's state failed because the run does not exist (HTTP 404)."""
    response = getattr(exc, "response", None)  # airflow.sdk's ServerResponseError
    if getattr(response, "status_code", None) == 404:
        return True
    detail = getattr(exc, "detail", None)
    return isinstance(detail, dict) and detail.get("reason") == "not_found"
