"""Federated analysis without Airflow: jobs and site policies, payloads, the egress guard, audit, aggregation, reports."""

from __future__ import annotations

from airflow_provider_kaapana.core.federation.aggregate import (
    AggregateResult,
    SiteResult,
    SiteStatus,
    SiteSummary,
    aggregate_results,
    pooled_moments,
    record_result,
)
from airflow_provider_kaapana.core.federation.analyses import get_analysis, list_analyses, register_analysis
from airflow_provider_kaapana.core.federation.audit import AuditRecord, read_audit_log, record_egress
from airflow_provider_kaapana.core.federation.cohort import (
    COHORT_SOURCE_FIELDS,
    COHORT_STATISTICS_V1,
    cohort_statistics,
    compute_cohort_statistics,
)
from airflow_provider_kaapana.core.federation.guard import (
    GuardAction,
    GuardResult,
    KnownIdentifiers,
    collect_known_identifiers,
    guard_egress,
    register_record_egress_rule,
    verify_received,
)
from airflow_provider_kaapana.core.federation.hitl import (
    ANSWER_OPTIONS,
    result_from_hitl,
    site_answer,
    timed_out,
)
from airflow_provider_kaapana.core.federation.jobs import (
    Decision,
    FederatedJob,
    QueryBudget,
    SitePolicy,
    make_job_id,
    split_job_id,
)
from airflow_provider_kaapana.core.federation.measurements import (
    SEGMENT_MEASUREMENTS_V1,
    segment_measurements,
)
from airflow_provider_kaapana.core.federation.records import SCHEMA_RECORDS_V1
from airflow_provider_kaapana.core.federation.report import build_report, render_html, report_for, report_json
from airflow_provider_kaapana.core.federation.statistics import (
    SCHEMA_AGGREGATE_V1,
    AnalysisSpec,
    StatisticKind,
    StatisticSpec,
    canonical_json_bytes,
)

__all__ = [
    "ANSWER_OPTIONS",
    "COHORT_SOURCE_FIELDS",
    "COHORT_STATISTICS_V1",
    "SCHEMA_AGGREGATE_V1",
    "SCHEMA_RECORDS_V1",
    "SEGMENT_MEASUREMENTS_V1",
    "AggregateResult",
    "AnalysisSpec",
    "AuditRecord",
    "Decision",
    "FederatedJob",
    "GuardAction",
    "GuardResult",
    "KnownIdentifiers",
    "QueryBudget",
    "SitePolicy",
    "SiteResult",
    "SiteStatus",
    "SiteSummary",
    "StatisticKind",
    "StatisticSpec",
    "aggregate_results",
    "build_report",
    "canonical_json_bytes",
    "cohort_statistics",
    "collect_known_identifiers",
    "compute_cohort_statistics",
    "get_analysis",
    "guard_egress",
    "list_analyses",
    "make_job_id",
    "pooled_moments",
    "read_audit_log",
    "record_egress",
    "record_result",
    "register_analysis",
    "register_record_egress_rule",
    "render_html",
    "report_for",
    "report_json",
    "result_from_hitl",
    "segment_measurements",
    "site_answer",
    "split_job_id",
    "timed_out",
    "verify_received",
]
