"""The egress guard: the last check at a site before a result document may leave it.

It refuses what is not on the allow-listed schema, suppresses small cells (k-threshold on distinct
patients) with complementary suppression, withholds populations that are too small, refuses anything
that looks like an identifier, and enforces the size limit. Refusals never echo the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.statistics import (
    SCHEMA_AGGREGATE_V1,
    AnalysisSpec,
    StatisticKind,
    canonical_json_bytes,
    get_payload_schema,
    identifier_kind,
    iter_strings,
)
from airflow_provider_kaapana.exceptions import EgressRefused, PayloadSchemaError

# FLARE's histogram cleanser: no more bins than this fraction of the values counted.
DEFAULT_MAX_BINS_FRACTION = 0.1
# Known identifiers shorter than this cannot be matched without refusing ordinary labels ("CT", "1").
MIN_IDENTIFIER_CHARS = 3
MAX_IDENTIFIER_CHARS = 256
# The site's input document may be larger than what leaves (it carries contributors): bounded anyway.
INPUT_SIZE_FACTOR = 8

# Index document fields whose values identify a patient, a study or a person.
IDENTIFIER_FIELDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)

Action = Literal["suppressed", "complementary", "withheld"]


@dataclass(frozen=True)
class GuardAction:
    """One thing the guard did to a statistic. ``cell`` is a category label or a bin index."""

    statistic: str
    action: Action
    cell: str | int | None
    reason: str


@dataclass(frozen=True)
class GuardResult:
    """The document that may leave, the threshold applied, and what was suppressed or withheld."""

    document: dict[str, Any]
    k: int
    actions: tuple[GuardAction, ...]

    @property
    def suppressed_cells(self) -> int:
        return sum(1 for a in self.actions if a.action in ("suppressed", "complementary"))

    @property
    def withheld(self) -> list[str]:
        return sorted({a.statistic for a in self.actions if a.action == "withheld"})

    @property
    def payload(self) -> bytes:
        """The exact bytes to send (and to record in the audit log)."""
        return canonical_json_bytes(self.document)


# --------------------------------------------------------------------------------------------------
# identifiers


def _redacted(text: str) -> str:
    """Enough to find the statistic, never the value: the first character and the length."""
    return f"{text[:1]}… ({len(text)} chars)" if text else "(empty)"


def _norm(text: str) -> str:
    return " ".join(re.split(r"[\s^,;=]+", text.upper())).strip()


class KnownIdentifiers:
    """The site's own identifiers (names, IDs, birth dates, UIDs), matched as whole tokens.

    Matching is case-insensitive, ``^``/comma/whitespace-insensitive (``DOE^JOHN`` matches
    ``Doe, John``), and a date matches as ``YYYYMMDD`` and ``YYYY-MM-DD``. Identifiers shorter than
    :data:`MIN_IDENTIFIER_CHARS` are ignored (they would match ordinary labels).
    """

    def __init__(self, identifiers: Iterable[Any] = ()) -> None:
        values: set[str] = set()
        for raw in identifiers:
            for item in raw if isinstance(raw, (list, tuple, set, frozenset)) else [raw]:
                if item is None:
                    continue
                text = _norm(str(item))[:MAX_IDENTIFIER_CHARS]
                if len(text) < MIN_IDENTIFIER_CHARS:
                    continue
                values.add(text)
                if re.fullmatch(r"\d{8}", text):
                    values.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")
                elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                    values.add(text.replace("-", ""))
        self._values = frozenset(values)
        self._max_chars = max((len(v) for v in values), default=0)

    def __len__(self) -> int:
        return len(self._values)

    def found_in(self, text: str) -> bool:
        """Whether any known identifier occurs in ``text`` between token boundaries."""
        if not self._values:
            return False
        norm = _norm(text)
        bounds = [
            i
            for i in range(len(norm) + 1)
            if i in (0, len(norm)) or not (norm[i - 1].isalnum() and norm[i].isalnum())
        ]
        for a_pos, a in enumerate(bounds):
            for b in bounds[a_pos + 1 :]:
                if b - a > self._max_chars:
                    break
                if norm[a:b].strip(" ") in self._values:
                    return True
        return False


def collect_known_identifiers(documents: Iterable[Mapping[str, Any]]) -> KnownIdentifiers:
    """The identifiers in the site's series index documents (see :data:`IDENTIFIER_FIELDS`)."""
    values: list[Any] = []
    for doc in documents:
        for name in IDENTIFIER_FIELDS:
            value = doc.get(name)
            if value is not None:
                values.append(value)
        for fact in (doc.get("kaapana") or {}).get("instances") or []:
            if isinstance(fact, Mapping) and fact.get("sop"):
                values.append(fact["sop"])
    return KnownIdentifiers(values)


def scan_for_identifiers(
    statistics: Mapping[str, Any], analysis: AnalysisSpec, known: KnownIdentifiers | None = None
) -> None:
    """Raise :class:`EgressRefused` (code ``identifier``) for any key or string that looks like an identifier.

    Scanned: every key and string of the statistics body (category labels above all). Numbers are JSON
    numbers and are not scanned. The envelope (job id, site) is checked for equality instead: it comes
    from the coordinator, and scanning it for the site's identifiers would hand the coordinator a
    membership oracle ("is this string one of your patients' IDs?").
    """
    names = set(analysis.by_name) | {
        "kind",
        "cells",
        "total",
        "edges",
        "counts",
        "n",
        "sum",
        "sum_sq",
        "contributors",
        "total_contributors",
        "suppressed",
        "withheld",
    }
    for where, text in iter_strings(statistics, names):
        kind = identifier_kind(text)
        if kind is None and known is not None and known.found_in(text):
            kind = "a known identifier of this site"
        if kind is not None:
            raise EgressRefused("identifier", f"{where}: a string looks like {kind}: {_redacted(text)}")


# --------------------------------------------------------------------------------------------------
# statistical disclosure control for aggregate/v1


@dataclass
class _Release:
    spec_name: str
    population: str
    stat: dict[str, Any]
    withheld: bool = False
    hides_total: bool = False


def _withhold(release: _Release, actions: list[GuardAction], reason: str, *, hides_total: bool) -> None:
    if not release.withheld:
        actions.append(GuardAction(release.spec_name, "withheld", None, reason))
    release.withheld = True
    release.hides_total = release.hides_total or hides_total


def _cells(stat: Mapping[str, Any]) -> tuple[list[Any], dict[Any, int], dict[Any, int], int, int]:
    """(keys, counts, weights, total count, total weight): weights are contributors where given."""
    if stat["kind"] == StatisticKind.COUNTS.value:
        keys = list(stat["cells"])
        values = {key: stat["cells"][key] for key in keys}
        contributors = stat.get("contributors")
        weights = {key: contributors[key] for key in keys} if contributors is not None else dict(values)
    else:
        keys = list(range(len(stat["counts"])))
        values = dict(enumerate(stat["counts"]))
        contributors = stat.get("contributors")
        weights = dict(enumerate(contributors)) if contributors is not None else dict(values)
    total = sum(values.values())
    total_weight = stat.get("total_contributors", total) if contributors is not None else total
    return keys, values, weights, total, total_weight


def _suppress_cells(
    release: _Release, k: int, max_bins_fraction: float, actions: list[GuardAction]
) -> set[Any]:
    """Primary and complementary suppression in one counts or histogram statistic; the suppressed keys."""
    stat = release.stat
    keys, values, weights, total, total_weight = _cells(stat)
    if 0 < total_weight < k:
        _withhold(release, actions, f"fewer than k={k} individuals in the whole statistic", hides_total=True)
        return set(keys)
    if stat["kind"] == StatisticKind.HISTOGRAM.value and total > 0 and len(keys) > max_bins_fraction * total:
        _withhold(
            release,
            actions,
            f"{len(keys)} bins for {total} values (at most {max_bins_fraction:.0%} of the values)",
            hides_total=False,
        )
        return set(keys)
    primary = [key for key in keys if 0 < weights[key] < k]
    for key in primary:
        actions.append(GuardAction(release.spec_name, "suppressed", key, f"fewer than k={k} individuals"))
    suppressed = set(primary)
    if len(primary) == 1:
        # one suppressed cell = total minus the published ones: hide a second, the smallest non-zero one
        candidates = sorted(
            (values[key], str(key), key) for key in keys if values[key] > 0 and key not in suppressed
        )
        if candidates:
            extra = candidates[0][2]
            suppressed.add(extra)
            actions.append(
                GuardAction(
                    release.spec_name, "complementary", extra, "protects a suppressed cell from the total"
                )
            )
        else:
            _withhold(
                release, actions, "a single suppressed cell would follow from the total", hides_total=True
            )
            return set(keys)
    return suppressed


def _released_stat(release: _Release, suppressed: set[Any]) -> dict[str, Any]:
    stat = release.stat
    kind = stat["kind"]
    if kind == StatisticKind.MOMENTS.value:
        if release.withheld:
            return {"kind": kind, "n": None, "sum": None, "sum_sq": None, "withheld": True}
        return {
            "kind": kind,
            "n": stat["n"],
            "sum": float(stat["sum"]),
            "sum_sq": float(stat["sum_sq"]),
            "withheld": False,
        }
    if kind == StatisticKind.COUNTS.value:
        if release.withheld:
            return {"kind": kind, "cells": {}, "total": None, "suppressed": [], "withheld": True}
        cells = {key: (None if key in suppressed else value) for key, value in stat["cells"].items()}
        return {
            "kind": kind,
            "cells": dict(sorted(cells.items())),
            "total": stat["total"],
            "suppressed": sorted(suppressed),
            "withheld": False,
        }
    bins = stat["counts"]
    if release.withheld:
        suppressed = set(range(len(bins)))
    return {
        "kind": kind,
        "edges": [float(e) for e in stat["edges"]],
        "counts": [None if i in suppressed else value for i, value in enumerate(bins)],
        "suppressed": sorted(suppressed),
        "withheld": release.withheld,
    }


def _population_total(release: _Release) -> int:
    stat = release.stat
    if stat["kind"] == StatisticKind.MOMENTS.value:
        return int(stat["n"])
    return _cells(stat)[3]


def release_aggregate(
    document: Mapping[str, Any], analysis: AnalysisSpec, k: int, max_bins_fraction: float
) -> tuple[dict[str, Any], list[GuardAction]]:
    """Apply the k-threshold, complementary and population suppression to a validated aggregate/v1 document."""
    actions: list[GuardAction] = []
    releases = {
        name: _Release(name, spec.population, dict(document["statistics"][name]))
        for name, spec in analysis.by_name.items()
    }
    suppressed: dict[str, set[Any]] = {}
    for name, release in releases.items():
        stat = release.stat
        if stat["kind"] == StatisticKind.MOMENTS.value:
            weight = stat.get("contributors", stat["n"])
            if 0 < weight < k:
                _withhold(release, actions, f"fewer than k={k} individuals", hides_total=True)
            suppressed[name] = set()
        else:
            suppressed[name] = _suppress_cells(release, k, max_bins_fraction, actions)

    # A subset population whose difference to its parent is a small cell (e.g. 3 patients of unknown age)
    totals: dict[str, int] = {}
    for release in releases.values():
        totals.setdefault(release.population, _population_total(release))
    for sub, parent in sorted(analysis.nested_populations.items()):
        difference = totals.get(parent, 0) - totals.get(sub, 0)
        if 0 < difference < k:
            for release in releases.values():
                if release.population == sub:
                    _withhold(
                        release,
                        actions,
                        f"{parent} minus {sub} would be a cell of fewer than k={k}",
                        hides_total=True,
                    )

    # Statistics of one population share their total: if one must hide it, all must.
    hidden = {r.population for r in releases.values() if r.hides_total}
    for release in releases.values():
        if release.population in hidden:
            _withhold(
                release, actions, f"population {release.population} is withheld elsewhere", hides_total=True
            )

    out = {key: document[key] for key in ("schema", "job_id", "analysis", "analysis_version", "site")}
    out["k"] = k
    out["statistics"] = {name: _released_stat(r, suppressed[name]) for name, r in releases.items()}
    return out, actions


EgressRule = Callable[[Mapping[str, Any], AnalysisSpec, int, float], tuple[dict[str, Any], list[GuardAction]]]
_EGRESS_RULES: dict[str, EgressRule] = {SCHEMA_AGGREGATE_V1: release_aggregate}


def register_egress_rule(schema_id: str, rule: EgressRule) -> None:
    """The disclosure control for a new payload schema (e.g. model weights); without one it is refused."""
    _EGRESS_RULES[schema_id] = rule


# --------------------------------------------------------------------------------------------------
# the guard


def guard_egress(
    document: Mapping[str, Any],
    *,
    job: FederatedJob,
    policy: SitePolicy,
    known_identifiers: KnownIdentifiers | Iterable[Any] = (),
    analysis: AnalysisSpec | None = None,
    max_bins_fraction: float = DEFAULT_MAX_BINS_FRACTION,
) -> GuardResult:
    """The cleaned document that may leave the site for ``job``, or :class:`EgressRefused`.

    ``known_identifiers`` are the site's own identifiers (a :class:`KnownIdentifiers`, e.g. from
    :func:`collect_known_identifiers`, or plain strings). The threshold is ``policy.effective_k(job)``.
    """
    decision = policy.decide(job)
    if not decision.accepted:
        raise EgressRefused("policy", decision.reason)
    k = policy.effective_k(job)
    try:
        raw_size = len(canonical_json_bytes(document))
    except PayloadSchemaError as exc:
        raise EgressRefused("schema", str(exc)) from None
    if raw_size > INPUT_SIZE_FACTOR * policy.max_payload_bytes:
        raise EgressRefused(
            "size", f"document of {raw_size} bytes is far beyond the {policy.max_payload_bytes}-byte limit"
        )
    analysis = analysis or get_analysis(job.analysis, job.analysis_version)
    if not isinstance(document, Mapping):
        raise EgressRefused("schema", "document must be a JSON object")
    try:
        schema = get_payload_schema(document.get("schema"))
    except PayloadSchemaError as exc:
        raise EgressRefused("schema", str(exc)) from None
    if schema.schema_id != analysis.payload_schema:
        raise EgressRefused(
            "schema", f"{analysis.name} v{analysis.version} publishes {analysis.payload_schema} only"
        )
    if schema.record_level:
        raise EgressRefused(
            "schema", f"{schema.schema_id} is record-level: the v1 guard releases aggregates only"
        )
    rule = _EGRESS_RULES.get(schema.schema_id)
    if rule is None:
        raise EgressRefused("schema", f"no egress rule for {schema.schema_id}")
    expected = {
        "job_id": job.job_id,
        "analysis": job.analysis,
        "analysis_version": job.analysis_version,
        "site": policy.site,
    }
    for key, value in expected.items():
        if document.get(key) != value:
            raise EgressRefused("schema", f"document {key} is not this job's ({value})")
    known = (
        known_identifiers
        if isinstance(known_identifiers, KnownIdentifiers)
        else KnownIdentifiers(known_identifiers)
    )
    # identifiers first: a label such as "DOE^JANE" is not a safe label either, but the reason that
    # matters (and is logged) is that it looks like a person's name
    if isinstance(document.get("statistics"), Mapping):
        scan_for_identifiers(document["statistics"], analysis, known)
    try:
        schema.validate(document, analysis, "site")
    except PayloadSchemaError as exc:
        raise EgressRefused("schema", str(exc)) from None

    released, actions = rule(document, analysis, k, max_bins_fraction)
    try:
        schema.validate(released, analysis, "released")
    except PayloadSchemaError as exc:  # a bug in the rule: fail closed
        raise EgressRefused("schema", f"released document is invalid: {exc}") from None
    scan_for_identifiers(released["statistics"], analysis, known)
    size = len(canonical_json_bytes(released))
    if size > policy.max_payload_bytes:
        raise EgressRefused(
            "size",
            f"payload of {size} bytes exceeds site {policy.site}'s limit of {policy.max_payload_bytes}",
        )
    return GuardResult(document=released, k=k, actions=tuple(actions))


def verify_received(
    document: Any, *, job: FederatedJob, site: str, analysis: AnalysisSpec | None = None
) -> None:
    """The coordinator's defence in depth: raise :class:`PayloadSchemaError` unless ``document`` is a
    released document of ``job`` from ``site`` that follows its schema, publishes no cell below the
    job's k and carries nothing that looks like an identifier.
    """
    analysis = analysis or get_analysis(job.analysis, job.analysis_version)
    if not isinstance(document, Mapping):
        raise PayloadSchemaError("document must be a JSON object")
    schema = get_payload_schema(document.get("schema"))
    if schema.record_level or schema.schema_id != analysis.payload_schema:
        raise PayloadSchemaError(
            f"{analysis.name} v{analysis.version} results must be {analysis.payload_schema}"
        )
    schema.validate(document, analysis, "released")
    for key, value in (("job_id", job.job_id), ("site", site), ("analysis", job.analysis)):
        if document[key] != value:
            raise PayloadSchemaError(f"document {key} is not {value}")
    if document["k"] < job.k:
        raise PayloadSchemaError(f"document was released with k={document['k']} below the job's k={job.k}")
    k = job.k
    for name, stat in document["statistics"].items():
        if stat["kind"] == StatisticKind.MOMENTS.value:
            small = stat["n"] is not None and 0 < stat["n"] < k
        else:
            values = stat["cells"].values() if stat["kind"] == StatisticKind.COUNTS.value else stat["counts"]
            small = any(v is not None and 0 < v < k for v in values)
        if small:
            raise PayloadSchemaError(f"statistic {name} publishes a value below k={k}")
    try:
        scan_for_identifiers(document["statistics"], analysis)
    except EgressRefused as exc:
        raise PayloadSchemaError(str(exc)) from None


__all__ = [
    "DEFAULT_MAX_BINS_FRACTION",
    "IDENTIFIER_FIELDS",
    "GuardAction",
    "GuardResult",
    "KnownIdentifiers",
    "collect_known_identifiers",
    "guard_egress",
    "register_egress_rule",
    "release_aggregate",
    "scan_for_identifiers",
    "verify_received",
]
