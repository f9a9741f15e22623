"""At the coordinator: exact aggregation of the sites' released documents, keyed by site."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.guard import verify_received
from airflow_provider_kaapana.core.federation.jobs import SITE_NAME_RE, FederatedJob
from airflow_provider_kaapana.core.federation.statistics import AnalysisSpec, StatisticKind
from airflow_provider_kaapana.exceptions import FederationError, PayloadSchemaError

MAX_REASON_CHARS = 500


class SiteStatus(str, enum.Enum):
    """How a site's part of a job ended."""

    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class SiteResult:
    """One site's answer to a job: its status, its released document (status ok) and a short reason."""

    site: str
    status: SiteStatus
    document: Mapping[str, Any] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not SITE_NAME_RE.match(self.site):
            raise FederationError(f"site name must match {SITE_NAME_RE.pattern}")
        object.__setattr__(self, "status", SiteStatus(self.status))
        object.__setattr__(self, "reason", str(self.reason or "")[:MAX_REASON_CHARS])
        if (self.status is SiteStatus.OK) != (self.document is not None):
            raise FederationError(f"site {self.site}: a document comes with status ok and only then")


def record_result(results: MutableMapping[str, SiteResult], result: SiteResult) -> None:
    """Store ``result`` under its site: a repeated answer replaces the earlier one, it never adds to it."""
    results[result.site] = result


@dataclass(frozen=True)
class SiteSummary:
    """One row of the site status table."""

    name: str
    status: SiteStatus
    suppressed_cells: int = 0
    withheld: tuple[str, ...] = ()
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "suppressed_cells": self.suppressed_cells,
            "withheld": list(self.withheld),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class AggregateResult:
    """The pooled statistics of one job and the status of every site."""

    job: FederatedJob
    analysis: AnalysisSpec
    sites: tuple[SiteSummary, ...]
    statistics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """True when any site is not ok: the aggregate covers fewer sites than asked."""
        return any(s.status is not SiteStatus.OK for s in self.sites)


def _suppression_of(document: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    if "records" in document:  # a records document says only whether rows were suppressed
        return 0, ()
    cells = 0
    withheld = []
    for name, stat in sorted(document["statistics"].items()):
        if stat.get("withheld"):
            withheld.append(name)
        else:
            cells += len(stat.get("suppressed") or [])
    return cells, tuple(withheld)


def _pool_counts(name: str, docs: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    cells: dict[str, int] = {}
    incomplete: set[str] = set()
    total = 0
    total_incomplete = False
    withheld_by = []
    for site, doc in docs:
        stat = doc["statistics"][name]
        if stat["withheld"]:
            withheld_by.append(site)
            continue
        for label, value in stat["cells"].items():
            cells.setdefault(label, 0)
            if value is None:
                incomplete.add(label)
            else:
                cells[label] += value
        if stat["total"] is None:
            total_incomplete = True
        else:
            total += stat["total"]
    if withheld_by:  # every cell may hide a contribution of a site that withheld the statistic
        incomplete = set(cells)
        total_incomplete = True
    return {
        "kind": StatisticKind.COUNTS.value,
        "cells": dict(sorted(cells.items())),
        "incomplete": sorted(incomplete),
        "total": total,
        "total_incomplete": total_incomplete,
        "sites": [site for site, _ in docs if site not in withheld_by],
        "withheld_by": withheld_by,
    }


def _pool_histogram(
    name: str, spec_edges: tuple[float, ...], docs: list[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    bins = [0] * (len(spec_edges) - 1)
    incomplete: set[int] = set()
    withheld_by = []
    for site, doc in docs:
        stat = doc["statistics"][name]
        if stat["withheld"]:
            withheld_by.append(site)
            continue
        for i, value in enumerate(stat["counts"]):
            if value is None:
                incomplete.add(i)
            else:
                bins[i] += value
    if withheld_by:
        incomplete = set(range(len(bins)))
    return {
        "kind": StatisticKind.HISTOGRAM.value,
        "edges": list(spec_edges),
        "counts": bins,
        "incomplete": sorted(incomplete),
        "sites": [site for site, _ in docs if site not in withheld_by],
        "withheld_by": withheld_by,
    }


def pooled_moments(parts: Iterable[tuple[int, float, float]]) -> dict[str, Any]:
    """Pooled ``n``, ``mean``, sample ``variance`` (ddof=1) and ``sd`` from per-site (n, sum, sum_sq)."""
    parts = list(parts)
    n = sum(p[0] for p in parts)
    total = math.fsum(p[1] for p in parts)
    total_sq = math.fsum(p[2] for p in parts)
    mean = total / n if n else None
    variance = None
    if n >= 2:
        # (sum_sq - sum^2 / n) / (n - 1), never negative through rounding
        variance = max(0.0, (total_sq - total * total / n) / (n - 1))
    return {
        "n": n,
        "mean": mean,
        "variance": variance,
        "sd": math.sqrt(variance) if variance is not None else None,
    }


def _pool_moments(name: str, docs: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    parts = []
    withheld_by = []
    for site, doc in docs:
        stat = doc["statistics"][name]
        if stat["withheld"]:
            withheld_by.append(site)
        else:
            parts.append((stat["n"], float(stat["sum"]), float(stat["sum_sq"])))
    return {
        "kind": StatisticKind.MOMENTS.value,
        **pooled_moments(parts),
        "incomplete": bool(withheld_by),
        "sites": [site for site, _ in docs if site not in withheld_by],
        "withheld_by": withheld_by,
    }


def _pool_records(docs: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The sites' released records in one table, each row with its site (pseudonyms are per site key)."""
    columns = list(docs[0][1]["columns"]) if docs else []
    rows = [{"site": site, **record} for site, doc in docs for record in doc["records"]]
    incomplete = sorted(site for site, doc in docs if doc["suppressed"])
    return {"kind": "records", "columns": ["site", *columns], "rows": rows, "incomplete": incomplete}


def aggregate_results(
    job: FederatedJob,
    results: Mapping[str, SiteResult],
    *,
    expected_sites: Iterable[str] = (),
    analysis: AnalysisSpec | None = None,
) -> AggregateResult:
    """Pool the ok sites' documents of ``job``; every site gets a row in the status table.

    ``results`` is keyed by site (see :func:`record_result`), so a site counts once however often it
    answered. Each document is checked again here (:func:`.guard.verify_received`: schema, this job and
    site, no cell below k, no identifier pattern); a document that fails is dropped and its site marked
    failed. An expected site without a result is marked timed_out.
    """
    analysis = analysis or get_analysis(job.analysis, job.analysis_version)
    summaries: list[SiteSummary] = []
    accepted: list[tuple[str, Mapping[str, Any]]] = []
    for key in sorted(set(results) | set(expected_sites)):
        result = results.get(key)
        if result is None:
            summaries.append(SiteSummary(key, SiteStatus.TIMED_OUT, reason="no answer"))
            continue
        if result.site != key:
            summaries.append(
                SiteSummary(key, SiteStatus.FAILED, reason=f"answer filed under {key} names another site")
            )
            continue
        if result.status is not SiteStatus.OK:
            summaries.append(SiteSummary(key, result.status, reason=result.reason))
            continue
        try:
            verify_received(result.document, job=job, site=key, analysis=analysis)
        except PayloadSchemaError as exc:
            summaries.append(
                SiteSummary(
                    key,
                    SiteStatus.FAILED,
                    reason=f"dropped by the coordinator's check: {exc}"[:MAX_REASON_CHARS],
                )
            )
            continue
        assert result.document is not None
        cells, withheld = _suppression_of(result.document)
        summaries.append(SiteSummary(key, SiteStatus.OK, cells, withheld, result.reason))
        accepted.append((key, result.document))

    statistics: dict[str, dict[str, Any]] = {}
    if analysis.columns:
        statistics["records"] = _pool_records(accepted)
    for name, spec in analysis.by_name.items():
        if spec.kind is StatisticKind.COUNTS:
            statistics[name] = _pool_counts(name, accepted)
        elif spec.kind is StatisticKind.HISTOGRAM:
            assert spec.edges is not None
            statistics[name] = _pool_histogram(name, spec.edges, accepted)
        else:
            statistics[name] = _pool_moments(name, accepted)
    return AggregateResult(job=job, analysis=analysis, sites=tuple(summaries), statistics=statistics)


__all__ = [
    "AggregateResult",
    "SiteResult",
    "SiteStatus",
    "SiteSummary",
    "aggregate_results",
    "pooled_moments",
    "record_result",
]
