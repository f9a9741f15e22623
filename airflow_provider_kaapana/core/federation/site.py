"""At a site: read the cohort from the search index, run the analysis, pass the egress guard.

Everything here stays at the site; only :attr:`SiteOutcome.document` (already guarded) may leave,
and only through :func:`.exchange.sealed_answer` after :func:`.exchange.record_sealed_egress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_kaapana.core.federation.cohort import COHORT_SOURCE_FIELDS, cohort_statistics
from airflow_provider_kaapana.core.federation.guard import (
    IDENTIFIER_FIELDS,
    collect_known_identifiers,
    guard_egress,
)
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.measurements import (
    MEASUREMENT_SOURCE_FIELDS,
    segment_measurements,
)
from airflow_provider_kaapana.core.federation.segmentation import (
    SEGMENTATION_SOURCE_FIELDS,
    segmentation_query,
    segmentation_statistics,
)
from airflow_provider_kaapana.core.index.client import SearchClient
from airflow_provider_kaapana.core.index.cohort import CohortFilter, search_documents
from airflow_provider_kaapana.exceptions import EgressRefused, UnknownAnalysisError


@dataclass(frozen=True)
class SiteAnalysis:
    """How a site runs one analysis: ``compute(documents, job_id=, site=, parameters=)`` -> document,
    the index fields it reads, and how its cohort query narrows the job's cohort selection."""

    compute: Callable[..., dict[str, Any]]
    fields: tuple[str, ...]
    narrow: Callable[[Mapping[str, Any]], dict[str, Any]] = dict


def _cohort(documents: Iterable[Mapping[str, Any]], *, job_id: str, site: str, **_: Any) -> dict[str, Any]:
    return cohort_statistics(documents, job_id=job_id, site=site)


def _fetch_fields(*fields: str) -> tuple[str, ...]:
    # what the analysis reads plus what the guard must know to refuse
    return tuple(dict.fromkeys((*fields, *IDENTIFIER_FIELDS, "kaapana.instances.sop")))


SITE_ANALYSES: dict[str, SiteAnalysis] = {
    "cohort_statistics": SiteAnalysis(_cohort, _fetch_fields(*COHORT_SOURCE_FIELDS)),
    "segmentation_statistics": SiteAnalysis(
        segmentation_statistics, _fetch_fields(*SEGMENTATION_SOURCE_FIELDS), segmentation_query
    ),
    "segment_measurements": SiteAnalysis(
        segment_measurements, _fetch_fields(*MEASUREMENT_SOURCE_FIELDS), segmentation_query
    ),
}
# The fields fetched for cohort statistics (kept for callers that fetch without a job).
FETCH_FIELDS: tuple[str, ...] = SITE_ANALYSES["cohort_statistics"].fields
# Job parameters that select the cohort, where an analysis version declares them.
FILTER_PARAMETERS = ("modality", "body_part", "date_from", "date_to", "description_pattern")
QUERY_PARAMETER = "query"


def cohort_selection(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The index query for a job's cohort parameters (none given: every series)."""
    raw = parameters.get(QUERY_PARAMETER)
    if raw:
        if not isinstance(raw, Mapping):
            raise ValueError("the query parameter must be a query DSL object")
        return dict(raw["query"]) if set(raw) == {"query"} else dict(raw)
    filters = {k: parameters[k] for k in FILTER_PARAMETERS if parameters.get(k) not in (None, "", [])}
    return CohortFilter.from_dict(filters).to_query()


def fetch_series_documents(
    client: SearchClient,
    index: str,
    query: Mapping[str, Any] | None = None,
    *,
    fields: Iterable[str] = FETCH_FIELDS,
    page_size: int = 1000,
) -> list[dict[str, Any]]:
    """Every series document matching ``query`` (``_source`` limited to ``fields``), paged by UID."""
    return search_documents(
        client, index, dict(query or {"match_all": {}}), fields=list(fields), page_size=page_size
    )


def site_analysis(name: str) -> SiteAnalysis:
    """The site implementation of analysis ``name``; :class:`UnknownAnalysisError` if there is none."""
    found = SITE_ANALYSES.get(name)
    if found is None:
        raise UnknownAnalysisError(f"no site implementation of {name}")
    return found


def site_documents(
    job: FederatedJob, declared: Iterable[str], client: SearchClient, index: str
) -> list[dict[str, Any]]:
    """The series documents ``job`` reads: its cohort (only the ``declared`` parameters select), narrowed
    by the analysis, with only the fields the analysis and the guard need."""
    analysis = site_analysis(job.analysis)
    declared = set(declared)
    query = analysis.narrow(cohort_selection({k: v for k, v in job.parameters.items() if k in declared}))
    return fetch_series_documents(client, index, query, fields=analysis.fields)


@dataclass(frozen=True)
class SiteOutcome:
    """The result of the site's analysis: ``ok`` with the guarded document, or ``refused`` with a reason.

    ``series`` is the number of documents read (for the site's own log, never sent).
    """

    status: str
    reason: str = ""
    document: dict[str, Any] | None = None
    k: int | None = None
    suppressed_cells: int = 0
    withheld: list[str] = field(default_factory=list)
    series: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "document": self.document,
            "k": self.k,
            "suppressed_cells": self.suppressed_cells,
            "withheld": list(self.withheld),
            "series": self.series,
        }


def analyse(
    job: FederatedJob,
    policy: SitePolicy,
    documents: list[Mapping[str, Any]],
    *,
    deid_key: bytes | None = None,
) -> SiteOutcome:
    """Run ``job``'s analysis on the site's ``documents`` and guard it with ``policy``.

    ``deid_key`` is the site's de-identification key (its own connection, never the job's): the guard
    pseudonymises record-level payloads with it and refuses them without it.
    A refusal by the guard is an outcome (``refused`` with the guard's code, never the value), not an
    error; an analysis this site does not implement raises :class:`UnknownAnalysisError`.
    """
    document = site_analysis(job.analysis).compute(
        documents, job_id=job.job_id, site=policy.site, parameters=job.parameters
    )
    try:
        guarded = guard_egress(
            document,
            job=job,
            policy=policy,
            known_identifiers=collect_known_identifiers(documents),
            deid_key=deid_key,
        )
    except EgressRefused as exc:
        return SiteOutcome("refused", reason=f"egress guard: {exc.code}", series=len(documents))
    return SiteOutcome(
        "ok",
        document=guarded.document,
        k=guarded.k,
        suppressed_cells=guarded.suppressed_cells,
        withheld=guarded.withheld,
        series=len(documents),
    )


__all__ = [
    "FETCH_FIELDS",
    "SiteAnalysis",
    "site_analysis",
    "site_documents",
    "FILTER_PARAMETERS",
    "SITE_ANALYSES",
    "SiteOutcome",
    "analyse",
    "cohort_selection",
    "fetch_series_documents",
]
