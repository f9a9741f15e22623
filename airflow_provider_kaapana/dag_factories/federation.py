"""Federated analysis DAGs: the coordinator's job DAG, a site's poll DAG and its local analysis DAG.

* ``kaapana_federated_<analysis>`` (coordinator): ``plan`` one HITL request per site ->
  ``site_result`` (mapped ``HITLOperator``, one per site, answered by the site over REST) ->
  ``aggregate`` (open, check, pool; report JSON + HTML in the run workspace).
* ``kaapana_federation_poll`` (site, every few seconds): answer what the policy refuses, start the
  local analysis run of what it accepts.
* ``kaapana_federated_site_<analysis>`` (site, one run per request): optional approval by a person ->
  analysis on the site's index + egress guard -> audit line, sealed answer.

Nothing is read at parse time: connections (keys, policy, coordinator) are read by the tasks. Each
factory imports only the operators its DAG uses: every task process parses its DAG file again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_kaapana.core.federation.analyses import get_analysis, list_analyses
from airflow_provider_kaapana.core.federation.exchange import (
    OPTIONS,
    RESULT_PARAM,
    SITE_RESULT_TASK,
    TIMED_OUT,
    site_dag_id,
)
from airflow_provider_kaapana.core.federation.jobs import DEFAULT_K_MIN, MAX_K, SITE_NAME_RE
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.dag_factories.run_conf import check_run_conf
from airflow_provider_kaapana.hooks.deid import DEFAULT_KEY_CONN_ID
from airflow_provider_kaapana.operators.federation import (
    SEARCH_CONN_ID,
    SEARCH_INDEX,
    FederatedAggregateOperator,
    FederatedAnalysisOperator,
    FederatedPollOperator,
    FederatedRespondOperator,
)

POLL_DAG_ID = "kaapana_federation_poll"
MAX_SITE_TIMEOUT_S = 30 * 24 * 3600


@dataclass
class FederationSettings:
    """Deployment settings of the federation DAGs (connection ids, defaults, paths, poll interval)."""

    # coordinator
    workspace_base: str = DEFAULT_WORKSPACE_BASE
    coordinator_conn_id: str = "kaapana_federation_coordinator"
    sites: list[str] = field(default_factory=list)  # the form's default site list
    k: int = DEFAULT_K_MIN
    site_timeout_seconds: int = 24 * 3600
    # site
    federation_conn_id: str = "kaapana_federation_default"
    search_conn_id: str = SEARCH_CONN_ID
    index: str = SEARCH_INDEX
    # the site's de-identification key (record-level analyses only)
    deid_key_conn_id: str = DEFAULT_KEY_CONN_ID
    poll_interval_seconds: float = 10.0
    # > 0: each poll run keeps looking (every poll_look_seconds) for this long before it ends
    poll_window_seconds: float = 0.0
    poll_look_seconds: float = 2.0
    default_args: dict[str, Any] = field(default_factory=lambda: {"retries": 0})


# Form fields for the parameters an analysis version may declare (AnalysisSpec.parameters).
# cohort_statistics v1 declares none: the site, not the coordinator, chooses its population.
COHORT_PARAMS: dict[str, Any] = {
    "label": lambda: Param(
        "liver",
        type="string",
        minLength=1,
        maxLength=64,
        title="Segment label",
        description="The label (or code meaning) of the segments to summarise, e.g. liver, spleen.",
        section="Analysis",
    ),
    "quasi_identifiers": lambda: Param(
        None,
        type=["null", "array"],
        items={"type": "string", "enum": ["age_band", "sex"]},
        uniqueItems=True,
        title="Quasi-identifiers",
        description=(
            "Optional: columns to add to each row, coarsened (age band, sex); every site applies "
            "k-anonymity to them. Leave empty for measurements alone."
        ),
        section="Analysis",
    ),
    "modality": lambda: Param(
        None, type=["null", "string"], title="Modality filter", section="Cohort", description="CT, MR, ..."
    ),
    "body_part": lambda: Param(None, type=["null", "string"], title="Body part filter", section="Cohort"),
    "date_from": lambda: Param(
        None, type=["null", "string"], format="date", title="Study date from", section="Cohort"
    ),
    "date_to": lambda: Param(
        None, type=["null", "string"], format="date", title="Study date to", section="Cohort"
    ),
    "query": lambda: Param(
        None,
        type=["null", "object"],
        title="Raw search query",
        description='Query DSL (the value of "query"); overrides the filters above.',
        section="Cohort",
    ),
}

DOC = """
### Federated {name} (v{version})

{description}

One run is one job: every chosen site gets a request (a Human-in-the-loop task assigned to the site's
user, shown as `site_result` with the site's name). Sites poll for it, decide by their own policy,
compute locally, pass their egress guard and answer with a document sealed to this coordinator's
key. `aggregate` opens, re-checks and pools the answers and writes `report.json` and `report.html`
into the run workspace (`federation/`). A site that does not answer within the timeout is
`timed_out`; the report is then `partial`.

```json
{{"sites": ["alpha", "beta", "gamma"], "k": 10, "site_timeout_seconds": 3600}}
```
"""


def _latest_version(analysis_name: str) -> str:
    versions = [a.version for a in list_analyses() if a.name == analysis_name]
    if not versions:
        get_analysis(analysis_name, "1")  # raises UnknownAnalysisError naming what exists
    return max(versions, key=int)


def federated_analysis_dag(
    analysis_name: str = "cohort_statistics",
    settings: FederationSettings | None = None,
    *,
    version: str | None = None,
    dag_id: str | None = None,
) -> DAG:
    """The coordinator DAG ``kaapana_federated_<analysis_name>`` (the analysis' latest version)."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    s = settings or FederationSettings()
    spec = get_analysis(analysis_name, version or _latest_version(analysis_name))
    params: dict[str, Param] = {
        "sites": Param(
            list(s.sites),
            type="array",
            items={"type": "string", "pattern": SITE_NAME_RE.pattern},
            minItems=1,
            uniqueItems=True,
            title="Sites",
            description="The sites to ask: each site's user name on this Airflow (one per line).",
            section="Sites",
        ),
        "k": Param(
            s.k,
            type="integer",
            minimum=DEFAULT_K_MIN,
            maximum=MAX_K,
            title="Minimum cell count k",
            description="No site publishes a count of fewer individuals (a site may apply more).",
            section="Sites",
        ),
        "site_timeout_seconds": Param(
            s.site_timeout_seconds,
            type="integer",
            minimum=10,
            maximum=MAX_SITE_TIMEOUT_S,
            title="Site timeout (s)",
            description="A site that has not answered after this long is reported timed_out.",
            section="Sites",
        ),
    }
    for name in sorted(spec.parameters):
        if name in COHORT_PARAMS:
            params[name] = COHORT_PARAMS[name]()
    with DAG(
        dag_id or spec.dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["kaapana", "federation"],
        description=f"Federated {spec.name}: ask the sites, aggregate their answers (coordinator)",
        doc_md=DOC.format(name=spec.name, version=spec.version, description=spec.description),
        default_args=s.default_args,
        params=params,
    ) as dag:

        @task(pre_execute=check_run_conf)  # unknown conf keys fail the run at once
        def plan(params: dict[str, Any] | None = None, dag_run: Any = None) -> list[dict[str, Any]]:
            """Validate the form, build the job (id from this run), one HITL request per site."""
            from airflow_provider_kaapana.core.federation.exchange import plan_requests
            from airflow_provider_kaapana.core.federation.jobs import FederatedJob

            assert params is not None and dag_run is not None
            parameters = {k: params[k] for k in spec.parameters if params.get(k) not in (None, "", [], {})}
            job = FederatedJob.for_run(
                spec,
                dag_run.run_id,
                parameters=parameters,
                k=int(params["k"]),
                created=dag_run.run_after,  # stable when the run is cleared and run again
            )
            timeout = timedelta(seconds=int(params["site_timeout_seconds"]))
            return plan_requests(job, list(params["sites"]), timeout)

        planned = plan()
        site_result = HITLOperator.partial(
            task_id=SITE_RESULT_TASK,
            options=list(OPTIONS),
            defaults=[TIMED_OUT],
            params={
                RESULT_PARAM: Param(
                    {}, type="object", description="the site's answer: a sealed document or a reason"
                )
            },
            map_index_template="{{ task.assigned_users[0]['id'] }}",
            # A timeout ends in the default (success), so a retry never waits a second timeout; it
            # catches a task that failed on resuming (a malformed answer, or Airflow 3.3.2's race when
            # an answer lands right after parking): the site sees try 2 and answers it again.
            retries=1,
            retry_delay=timedelta(seconds=2),
        ).expand_kwargs(planned)
        aggregate = FederatedAggregateOperator(
            task_id="aggregate",
            trigger_rule="all_done",
            coordinator_conn_id=s.coordinator_conn_id,
            workspace_base=s.workspace_base,
        )
        site_result >> aggregate
    return dag


def federation_poll_dag(settings: FederationSettings | None = None, dag_id: str = POLL_DAG_ID) -> DAG:
    """The site's poll DAG: pending requests -> refuse or start ``kaapana_federated_site_<analysis>``."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    s = settings or FederationSettings()
    with DAG(
        dag_id,
        schedule=timedelta(seconds=s.poll_interval_seconds),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["kaapana", "federation"],
        description="Answer this site's pending federation requests on the coordinator",
        doc_md=(
            "### Federation poll (site)\n\nLists this site's pending requests on the coordinator, answers "
            "those its policy refuses and starts a local analysis run for each accepted one."
        ),
        default_args=s.default_args,
        dagrun_timeout=timedelta(minutes=5),
    ) as dag:
        poll = FederatedPollOperator(
            task_id="poll",
            federation_conn_id=s.federation_conn_id,
            window_seconds=s.poll_window_seconds,
            interval_seconds=s.poll_look_seconds,
            pre_execute=check_run_conf,  # a run by hand takes no conf
        )
        TriggerDagRunOperator.partial(
            task_id="start_analysis",
            logical_date=None,
            skip_when_already_exists=True,
            wait_for_completion=False,
            openlineage_inject_parent_info=False,
            map_index_template="{{ task.trigger_run_id }}",
        ).expand_kwargs(poll.output)
    return dag


def federated_site_dag(
    analysis_name: str = "cohort_statistics",
    settings: FederationSettings | None = None,
    *,
    dag_id: str | None = None,
) -> DAG:
    """The site's analysis DAG ``kaapana_federated_site_<analysis_name>``, started by the poll DAG."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    s = settings or FederationSettings()
    with DAG(
        dag_id or site_dag_id(analysis_name),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        tags=["kaapana", "federation"],
        description=f"Federated {analysis_name} on this site: approval, analysis, egress guard, sealed answer",
        doc_md=(
            f"### Federated {analysis_name} (site)\n\nOne run per coordinator request, started by "
            f"`{POLL_DAG_ID}`: optional approval by a person, the analysis on this site's index and the "
            "egress guard, then the audit line and the sealed answer. Rejecting the approval answers "
            "`refused`; a failed analysis (or a run marked failed) answers `failed`."
        ),
        default_args=s.default_args,
        params={
            # both filled in by the poll DAG (FederatedPollOperator), never by hand
            "job": Param(
                {}, type="object", minProperties=1, title="Job", description="The coordinator's job."
            ),
            "request": Param(
                {},
                type="object",
                minProperties=1,
                title="Request",
                description="Where the coordinator waits for the answer.",
            ),
        },
    ) as dag:

        @task.branch(pre_execute=check_run_conf)  # the poll DAG's conf: job and request
        def approval_needed() -> str:
            """Ask a person first when the site's policy (read now, from the connection) says so."""
            from airflow_provider_kaapana.hooks.federation import FederationHook

            required = FederationHook(s.federation_conn_id).policy.require_approval
            return "approve" if required else "no_approval_needed"

        approve = ApprovalOperator(
            task_id="approve",
            # an answer that lands while Airflow 3.3.2 is still parking the task fails it; a retry shows
            # the reviewer the request again (see docs/dags/federated_site_cohort_statistics.rst)
            retries=2,
            retry_delay=timedelta(seconds=2),
            subject="Release {{ params.job.analysis }} v{{ params.job.analysis_version }} to the coordinator?",
            body=(
                "Job `{{ params.job.job_id }}` asks for **{{ params.job.analysis }}** "
                "v{{ params.job.analysis_version }} with k = {{ params.job.k }} and parameters "
                "`{{ params.job.parameters }}`. Approve to compute it on this site's index and send the "
                "guarded result; reject to answer refused."
            ),
        )
        no_approval = EmptyOperator(task_id="no_approval_needed")
        analysis = FederatedAnalysisOperator(
            task_id="analyse",
            trigger_rule="none_failed_min_one_success",
            federation_conn_id=s.federation_conn_id,
            search_conn_id=s.search_conn_id,
            index=s.index,
            key_conn_id=s.deid_key_conn_id,
        )
        respond = FederatedRespondOperator(task_id="respond", federation_conn_id=s.federation_conn_id)
        approval_needed() >> [approve, no_approval]
        [approve, no_approval] >> analysis >> respond
    return dag


__all__ = [
    "POLL_DAG_ID",
    "FederationSettings",
    "federated_analysis_dag",
    "federated_site_dag",
    "federation_poll_dag",
]
