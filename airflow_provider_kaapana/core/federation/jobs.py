"""Federated jobs (what a coordinator asks) and site policies (what a site agrees to answer)."""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.statistics import (
    ANALYSIS_NAME_RE,
    ANALYSIS_VERSION_RE,
    AnalysisSpec,
    canonical_json_bytes,
)
from airflow_provider_kaapana.exceptions import (
    InvalidJobError,
    InvalidPolicyError,
    PayloadSchemaError,
    UnknownAnalysisError,
)

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.federation.audit import AuditRecord

JOB_ID_SEPARATOR = "/"
DAG_PREFIX = "kaapana_federated_"
# Airflow's own rules: DAG ids are letters, digits, '_', '.', '-'; run ids follow the default
# ``allowed_run_id_pattern``. Neither contains '/', so "<dag_id>/<run_id>" splits unambiguously.
DAG_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.~:+\-]{1,250}$")
SITE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_.\-]{0,62}[a-z0-9])?$")
PARAMETER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_PARAMETERS_BYTES = 16 * 1024
MAX_K = 10_000

DEFAULT_K_MIN = 10
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024


def make_job_id(dag_id: str, run_id: str) -> str:
    """The job id of one coordinator DAG run: ``<dag_id>/<run_id>``."""
    if not isinstance(dag_id, str) or not DAG_ID_RE.match(dag_id):
        raise InvalidJobError(f"dag_id must match {DAG_ID_RE.pattern}")
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise InvalidJobError(f"run_id must match {RUN_ID_RE.pattern}")
    return f"{dag_id}{JOB_ID_SEPARATOR}{run_id}"


def split_job_id(job_id: str) -> tuple[str, str]:
    """``(dag_id, run_id)`` of a job id; :class:`InvalidJobError` when it is not one."""
    if not isinstance(job_id, str) or job_id.count(JOB_ID_SEPARATOR) != 1:
        raise InvalidJobError("job_id must be '<dag_id>/<run_id>'")
    dag_id, run_id = job_id.split(JOB_ID_SEPARATOR)
    make_job_id(dag_id, run_id)
    return dag_id, run_id


def _utc(value: _dt.datetime | str, what: str) -> _dt.datetime:
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidJobError(f"{what} is not an ISO 8601 date-time") from None
    if not isinstance(value, _dt.datetime):
        raise InvalidJobError(f"{what} must be a date-time")
    if value.tzinfo is None:
        raise InvalidJobError(f"{what} must carry a time zone (UTC)")
    return value.astimezone(_dt.timezone.utc)


def _int(value: Any, what: str, error: type[Exception], lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise error(f"{what} must be an integer in [{lo}, {hi}]")
    return value


@dataclass(frozen=True)
class FederatedJob:
    """One federated analysis request = one run of the coordinator DAG ``kaapana_federated_<analysis>``.

    ``k`` is the minimum cell count the coordinator asks for; a site applies ``max(k, its own k_min)``.
    ``parameters`` are JSON values; an analysis declares which parameter names it takes.
    """

    job_id: str
    analysis: str
    analysis_version: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    k: int = DEFAULT_K_MIN
    created: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))

    def __post_init__(self) -> None:
        dag_id, _ = split_job_id(self.job_id)
        if not isinstance(self.analysis, str) or not ANALYSIS_NAME_RE.match(self.analysis):
            raise InvalidJobError(f"analysis must match {ANALYSIS_NAME_RE.pattern}")
        if dag_id != DAG_PREFIX + self.analysis:
            raise InvalidJobError(
                f"job {self.job_id} runs DAG {dag_id}, but analysis {self.analysis} runs in "
                f"{DAG_PREFIX}{self.analysis}"
            )
        if not isinstance(self.analysis_version, str) or not ANALYSIS_VERSION_RE.match(self.analysis_version):
            raise InvalidJobError(f"job {self.job_id}: analysis_version must be a string of 1-3 digits")
        _int(self.k, f"job {self.job_id}: k", InvalidJobError, 1, MAX_K)
        if not isinstance(self.parameters, Mapping):
            raise InvalidJobError(f"job {self.job_id}: parameters must be an object")
        for name in self.parameters:
            if not isinstance(name, str) or not PARAMETER_NAME_RE.match(name):
                raise InvalidJobError(
                    f"job {self.job_id}: parameter names must match {PARAMETER_NAME_RE.pattern}"
                )
        try:
            raw = canonical_json_bytes(self.parameters)
        except PayloadSchemaError:
            raise InvalidJobError(f"job {self.job_id}: parameters must be plain JSON") from None
        if len(raw) > MAX_PARAMETERS_BYTES:
            raise InvalidJobError(f"job {self.job_id}: parameters exceed {MAX_PARAMETERS_BYTES} bytes")
        # a private, deep copy: the job cannot change after it was validated
        object.__setattr__(self, "parameters", json.loads(raw))
        object.__setattr__(self, "created", _utc(self.created, f"job {self.job_id}: created"))

    @property
    def dag_id(self) -> str:
        return split_job_id(self.job_id)[0]

    @property
    def run_id(self) -> str:
        return split_job_id(self.job_id)[1]

    @classmethod
    def for_run(
        cls,
        analysis: AnalysisSpec,
        run_id: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        k: int = DEFAULT_K_MIN,
        created: _dt.datetime | str | None = None,
    ) -> FederatedJob:
        """The job of one run of ``analysis``'s coordinator DAG."""
        return cls(
            job_id=make_job_id(analysis.dag_id, run_id),
            analysis=analysis.name,
            analysis_version=analysis.version,
            parameters=dict(parameters or {}),
            k=k,
            created=created or _dt.datetime.now(_dt.timezone.utc),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "analysis": self.analysis,
            "analysis_version": self.analysis_version,
            "parameters": json.loads(canonical_json_bytes(self.parameters)),
            "k": self.k,
            "created": self.created.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def to_json(self) -> str:
        return canonical_json_bytes(self.to_dict()).decode("ascii")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederatedJob:
        if not isinstance(data, Mapping):
            raise InvalidJobError("a job must be a JSON object")
        allowed = {"job_id", "analysis", "analysis_version", "parameters", "k", "created"}
        unknown = sorted(str(k)[:32] for k in set(data) - allowed)
        if unknown:
            raise InvalidJobError(f"unknown job field(s): {', '.join(unknown)}")
        missing = sorted(allowed - set(data))
        if missing:
            raise InvalidJobError(f"job is missing {', '.join(missing)}")
        return cls(
            job_id=data["job_id"],
            analysis=data["analysis"],
            analysis_version=data["analysis_version"],
            parameters=data["parameters"],
            k=data["k"],
            created=_utc(data["created"], "created"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FederatedJob:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidJobError("job is not valid JSON") from None
        return cls.from_dict(data)


# --------------------------------------------------------------------------------------------------
# site policy


@dataclass(frozen=True)
class Decision:
    """A site's answer to a job before anything is computed. ``k`` is the threshold it will apply."""

    accepted: bool
    reason: str
    k: int | None = None
    require_approval: bool = False


@dataclass(frozen=True)
class QueryBudget:
    """At most ``max_jobs`` released jobs of one analysis within ``window_hours`` (differencing defence)."""

    max_jobs: int
    window_hours: float = 24.0 * 30

    def __post_init__(self) -> None:
        _int(self.max_jobs, "query_budget.max_jobs", InvalidPolicyError, 1, 1_000_000)
        hours = self.window_hours
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= 24 * 3660:
            raise InvalidPolicyError("query_budget.window_hours must be a number of hours > 0")


def _parse_bool(value: Any, what: str) -> bool:
    """True/false from JSON (or the strings "true"/"false"); garbage raises instead of being guessed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidPolicyError(f"{what} must be true or false")


AllowedVersions = tuple[str, ...] | Literal["*"]


@dataclass(frozen=True)
class SitePolicy:
    """What one site answers: allowed analyses and versions, approval, its k floor, a payload limit.

    ``allowed_analyses`` maps an analysis name to its allowed versions, or to ``"*"`` for every version
    this package implements. Built from an Airflow connection's extra with :meth:`from_dict`.
    """

    site: str
    allowed_analyses: Mapping[str, AllowedVersions]
    require_approval: bool = True
    k_min: int = DEFAULT_K_MIN
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    query_budget: QueryBudget | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not SITE_NAME_RE.match(self.site):
            raise InvalidPolicyError(f"site must match {SITE_NAME_RE.pattern}")
        if not isinstance(self.allowed_analyses, Mapping):
            raise InvalidPolicyError(f"site {self.site}: allowed_analyses must be an object")
        allowed: dict[str, AllowedVersions] = {}
        for name, versions in self.allowed_analyses.items():
            if not isinstance(name, str) or not ANALYSIS_NAME_RE.match(name):
                raise InvalidPolicyError(
                    f"site {self.site}: analysis names must match {ANALYSIS_NAME_RE.pattern}"
                )
            if versions == "*":
                allowed[name] = "*"
                continue
            if isinstance(versions, (str, int)) or not isinstance(versions, Iterable):
                raise InvalidPolicyError(f'site {self.site}: versions of {name} must be a list or "*"')
            parsed = []
            for v in versions:
                text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
                if not isinstance(text, str) or not ANALYSIS_VERSION_RE.match(text):
                    raise InvalidPolicyError(
                        f"site {self.site}: versions of {name} must be strings of 1-3 digits"
                    )
                parsed.append(text)
            allowed[name] = tuple(sorted(set(parsed)))
        object.__setattr__(self, "allowed_analyses", allowed)
        object.__setattr__(self, "require_approval", _parse_bool(self.require_approval, "require_approval"))
        _int(self.k_min, f"site {self.site}: k_min", InvalidPolicyError, 2, MAX_K)
        _int(
            self.max_payload_bytes,
            f"site {self.site}: max_payload_bytes",
            InvalidPolicyError,
            256,
            64 * 1024 * 1024,
        )

    def effective_k(self, job: FederatedJob) -> int:
        """The threshold the site applies: the larger of the job's k and its own floor."""
        return max(job.k, self.k_min)

    def decide(
        self,
        job: FederatedJob,
        *,
        releases: Iterable[AuditRecord] = (),
        now: _dt.datetime | None = None,
        analyses: Callable[[str, str], AnalysisSpec] = get_analysis,
    ) -> Decision:
        """Accept or refuse ``job``: allow-list, version, implementation, parameters, query budget.

        ``releases`` are this site's past egress records (:func:`.audit.read_audit_log`), used only
        when the policy has a query budget.
        """
        allowed = self.allowed_analyses.get(job.analysis)
        if allowed is None:
            return Decision(False, f"analysis {job.analysis} is not on site {self.site}'s allow-list")
        if allowed != "*" and job.analysis_version not in allowed:
            return Decision(
                False,
                f"version {job.analysis_version} of {job.analysis} is not allowed at site {self.site} "
                f"(allowed: {', '.join(allowed) or 'none'})",
            )
        try:
            spec = analyses(job.analysis, job.analysis_version)
        except UnknownAnalysisError:
            return Decision(
                False, f"{job.analysis} version {job.analysis_version} is not implemented at site {self.site}"
            )
        unknown = sorted(set(job.parameters) - spec.parameters)
        if unknown:
            return Decision(
                False, f"{job.analysis} v{job.analysis_version} takes no parameter(s) {', '.join(unknown)}"
            )
        if self.query_budget is not None:
            now = _utc(now or _dt.datetime.now(_dt.timezone.utc), "now")
            since = now - _dt.timedelta(hours=self.query_budget.window_hours)
            spent = {
                r.job_id
                for r in releases
                if r.analysis == job.analysis and r.time >= since and r.job_id != job.job_id
            }
            if len(spent) >= self.query_budget.max_jobs:
                return Decision(
                    False,
                    f"query budget of site {self.site} spent: {len(spent)} {job.analysis} job(s) released in "
                    f"the last {self.query_budget.window_hours:g} h (at most {self.query_budget.max_jobs})",
                )
        return Decision(True, "accepted", k=self.effective_k(job), require_approval=self.require_approval)

    # ----------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SitePolicy:
        """A policy from JSON (an Airflow connection's extra, or its ``"policy"`` object)."""
        if not isinstance(data, Mapping):
            raise InvalidPolicyError("a site policy must be a JSON object")
        if "policy" in data and isinstance(data["policy"], Mapping):
            data = data["policy"]
        fields = {
            "site",
            "allowed_analyses",
            "require_approval",
            "k_min",
            "max_payload_bytes",
            "query_budget",
        }
        unknown = sorted(str(k)[:32] for k in set(data) - fields)
        if unknown:
            # a misspelt key (say "kmin") must not silently fall back to a weaker default
            raise InvalidPolicyError(f"unknown site policy field(s): {', '.join(unknown)}")
        for required in ("site", "allowed_analyses"):
            if required not in data:
                raise InvalidPolicyError(f"site policy is missing {required}")
        budget = data.get("query_budget")
        if budget is not None:
            if not isinstance(budget, Mapping) or set(budget) - {"max_jobs", "window_hours"}:
                raise InvalidPolicyError('query_budget must be {"max_jobs": n, "window_hours": h}')
            if "max_jobs" not in budget:
                raise InvalidPolicyError("query_budget is missing max_jobs")
            budget = QueryBudget(**budget)
        return cls(
            site=data["site"],
            allowed_analyses=data["allowed_analyses"],
            require_approval=data.get("require_approval", True),
            k_min=data.get("k_min", DEFAULT_K_MIN),
            max_payload_bytes=data.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES),
            query_budget=budget,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> SitePolicy:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise InvalidPolicyError("site policy is not valid JSON") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "site": self.site,
            "allowed_analyses": {
                name: (v if v == "*" else list(v)) for name, v in sorted(self.allowed_analyses.items())
            },
            "require_approval": self.require_approval,
            "k_min": self.k_min,
            "max_payload_bytes": self.max_payload_bytes,
        }
        if self.query_budget is not None:
            out["query_budget"] = {
                "max_jobs": self.query_budget.max_jobs,
                "window_hours": self.query_budget.window_hours,
            }
        return out


__all__ = [
    "DEFAULT_K_MIN",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "Decision",
    "FederatedJob",
    "QueryBudget",
    "SitePolicy",
    "make_job_id",
    "split_job_id",
]
