"""The run-time check every DAG's first task makes of its run's ``conf``: no key that is no parameter.

A module of its own, importing nothing but Airflow's exception: the federation DAGs (parsed every few
seconds) use it without the pipeline factories' imports.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException


def check_run_conf(context: Any, also_accepted: tuple[str, ...] = ()) -> None:
    """Refuse a run whose ``conf`` holds keys that are no parameter of its DAG (a typo would otherwise
    be ignored silently): :class:`AirflowFailException`, so the task fails at once, without retries.

    Given as ``pre_execute`` of a DAG's first task(s) by the factories.
    """
    dag_run, dag = context.get("dag_run"), context.get("dag")
    conf = dict(getattr(dag_run, "conf", None) or {})
    accepted = set(getattr(dag, "params", None) or {}) | set(also_accepted)
    unknown = sorted(set(conf) - accepted)
    if unknown:
        raise AirflowFailException(
            f"unknown conf key(s) {', '.join(map(repr, unknown))}: DAG "
            f"{getattr(dag, 'dag_id', '?')} accepts {', '.join(sorted(accepted)) or 'none'}"
        )
