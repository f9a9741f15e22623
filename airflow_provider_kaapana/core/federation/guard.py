"""The egress guard: the last check at a site before a result document may leave it.

It refuses what is not on the allow-listed schema, suppresses small cells (k-threshold on distinct
patients) with complementary suppression, withholds populations that are too small, refuses anything
that looks like an identifier, and enforces the size limit. Record-level payloads leave only through a
de-identifying rule: every record through the de-identification core with the site's key, the
identifier scan over the result, k-anonymity on the kept quasi-identifiers. Refusals never echo the
offending value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.records import (
    SCHEMA_RECORDS_V1,
    deidentify_record,
    quasi_columns,
    record_hashes,
    record_profile,
    released_columns,
    small_groups,
)
from airflow_provider_kaapana.core.federation.statistics import (
    SCHEMA_AGGREGATE_V1,
    AnalysisSpec,
    ColumnRole,
    StatisticKind,
    canonical_json_bytes,
    get_payload_schema,
    identifier_kind,
    iter_strings,
)
from airflow_provider_kaapana.exceptions import DeidentificationError, EgressRefused, PayloadSchemaError

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
RECORDS = "records"


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

    @property
    def record_sha256(self) -> list[str]:
        """The SHA-256 of each released record (record-level payloads; empty for aggregates)."""
        return record_hashes(self.document) if RECORDS in self.document else []


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

    def extended(self, identifiers: Iterable[Any]) -> KnownIdentifiers:
        """These identifiers and ``identifiers``."""
        return KnownIdentifiers([*self._values, *identifiers])

    def is_number_of(self, number: float) -> bool:
        """Whether ``number`` written whole (an integer, or a float without a fractional part) is one
        of the identifiers: ``101.37`` is not the study ID ``101``, ``101`` and ``101.0`` are."""
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            return False
        return str(int(number)) in self._values

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
    """The disclosure control for a new payload schema (e.g. model weights); without one it is refused.

    Not for record-level schemas: they leave only through :func:`register_record_egress_rule`.
    """
    try:
        record_level = get_payload_schema(schema_id).record_level
    except PayloadSchemaError:
        record_level = False
    if record_level:
        raise ValueError(f"{schema_id} is record-level: register a de-identifying record egress rule")
    _EGRESS_RULES[schema_id] = rule


# --------------------------------------------------------------------------------------------------
# record-level payloads: de-identification, identifier scan, k-anonymity


def scan_records(records: Any, analysis: AnalysisSpec, known: KnownIdentifiers, *, released: bool) -> None:
    """Raise :class:`EgressRefused` (code ``identifier``) naming ``records[i].<column>`` — never the value
    — for a value that looks like an identifier or is one of the site's own.

    At the site the patient and UID columns hold the originals by design and are not scanned; once
    released they are pseudonyms (a ``2.25`` UID by construction) and are checked against the site's
    identifiers only. Every other string is scanned for identifier patterns and the site's identifiers;
    a number is refused when, written whole, it is one of the site's identifiers (a patient ID planted as
    a measurement); a fractional number is never an identifier (a volume of 101.37 is not study 101).
    """
    if not isinstance(records, list):
        return
    roles = {c.name: c.role for c in analysis.columns}
    pseudonymised = (ColumnRole.PATIENT, ColumnRole.UID)
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        for j, (key, value) in enumerate(record.items()):
            role = roles.get(key) if isinstance(key, str) else None
            where = f"records[{i}].{key}" if role is not None else f"records[{i}].<key {j}>"
            if role is None:
                for inner, text in iter_strings({key: value}, (), where):
                    if identifier_kind(text) is not None or known.found_in(text):
                        raise EgressRefused("identifier", f"{inner}: not a column of {analysis.name}")
                continue
            if role in pseudonymised and not released:
                continue
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                if known.is_number_of(value):
                    raise EgressRefused("identifier", f"{where}: a number is a known identifier of this site")
                continue
            for inner, text in iter_strings(value, (), where):
                kind = None if role in pseudonymised else identifier_kind(text)
                if kind is None and known.found_in(text):
                    kind = "a known identifier of this site"
                if kind is not None:
                    raise EgressRefused("identifier", f"{inner}: a value looks like {kind}")


def _site_originals(document: Mapping[str, Any], analysis: AnalysisSpec) -> list[str]:
    """The patient IDs and UIDs the site document carries: they must not appear in what leaves."""
    names = [c.name for c in analysis.columns if c.role in (ColumnRole.PATIENT, ColumnRole.UID)]
    records = document.get(RECORDS)
    out: list[str] = []
    for record in records if isinstance(records, list) else []:
        if isinstance(record, Mapping):
            out.extend(str(record[n]) for n in names if isinstance(record.get(n), str))
    return out


RecordRule = Callable[
    [Mapping[str, Any], AnalysisSpec, FederatedJob, int, bytes], tuple[dict[str, Any], list[GuardAction]]
]


def release_records(
    document: Mapping[str, Any], analysis: AnalysisSpec, job: FederatedJob, k: int, key: bytes
) -> tuple[dict[str, Any], list[GuardAction]]:
    """The egress rule of ``records/v1``: de-identify every record, then k-anonymity by suppression.

    Each record goes through :func:`.records.deidentify_record` (the de-identification core, the schema's
    fixed profile, the site's ``key``). Records whose group over *every* quasi-identifier the analysis
    offers (age band and sex, whichever the job asked for) holds fewer than ``k`` distinct patients are
    dropped (``suppressed``): rows of two jobs join on the patient pseudonym, so for two jobs over the
    same cohort one asking for the age band and another for the sex do not add up to a smaller group
    (jobs over different cohorts can: that residual risk is the guide's). The released rows carry only
    the non-quasi columns and the quasi-identifiers the job names; when fewer than ``k`` patients remain,
    nothing is released.
    """
    try:
        columns = released_columns(analysis, job.parameters)
    except PayloadSchemaError as exc:
        raise EgressRefused("parameters", str(exc)) from None
    profile = record_profile()
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(document[RECORDS]):
        try:
            # every offered column, released or not: k-anonymity below is over all of them
            rows.append(deidentify_record(record, analysis.columns, profile, key))
        except DeidentificationError as exc:  # names the attribute, never the value
            raise EgressRefused("deidentification", f"records[{i}]: {exc}") from None
        except Exception as exc:  # its message may quote an original: only the type leaves
            raise EgressRefused(
                "deidentification", f"records[{i}]: cannot be de-identified ({type(exc).__name__})"
            ) from None
    patient = next(c.name for c in columns if c.role is ColumnRole.PATIENT)
    small = small_groups(rows, quasi_columns(analysis.columns), patient, k)
    actions = [
        GuardAction(RECORDS, "suppressed", i, f"quasi-identifier group of fewer than k={k} individuals")
        for i in sorted(small)
    ]
    kept = [{c.name: row[c.name] for c in columns} for i, row in enumerate(rows) if i not in small]
    if len({row[patient] for row in kept}) < k:
        raise EgressRefused("k", f"fewer than k={k} individuals in the released records")
    released = {key_: document[key_] for key_ in ("schema", "job_id", "analysis", "analysis_version", "site")}
    released.update(
        k=k,
        columns=[c.name for c in columns],
        suppressed=bool(small),
        deidentification=profile.method_description,
        records=kept,
    )
    return released, actions


_RECORD_RULES: dict[str, RecordRule] = {SCHEMA_RECORDS_V1: release_records}


def register_record_egress_rule(schema_id: str, rule: RecordRule) -> None:
    """The de-identifying rule of a record-level payload schema. The guard still scans, re-checks
    k-anonymity and validates what the rule returns; a record-level schema without a rule is refused."""
    _RECORD_RULES[schema_id] = rule


def _guard_records(
    document: Mapping[str, Any],
    schema: Any,
    analysis: AnalysisSpec,
    job: FederatedJob,
    k: int,
    known: KnownIdentifiers,
    deid_key: bytes | None,
) -> tuple[dict[str, Any], list[GuardAction]]:
    rule = _RECORD_RULES.get(schema.schema_id)
    if rule is None:
        raise EgressRefused(
            "schema", f"{schema.schema_id} is record-level and has no de-identifying egress rule"
        )
    if deid_key is None:
        raise EgressRefused(
            "deidentification", "a record-level payload needs the site's de-identification key"
        )
    try:
        from airflow_provider_kaapana.core.deid.pseudonyms import check_key

        deid_key = check_key(deid_key)
    except ValueError as exc:  # the message names the length rule, never the key
        raise EgressRefused("deidentification", str(exc)) from None
    known = known.extended(_site_originals(document, analysis))
    scan_records(document.get(RECORDS), analysis, known, released=False)
    try:
        schema.validate(document, analysis, "site")
    except PayloadSchemaError as exc:
        raise EgressRefused("schema", str(exc)) from None
    released, actions = rule(document, analysis, job, k, deid_key)
    try:
        schema.validate(released, analysis, "released")
    except PayloadSchemaError as exc:  # a bug in the rule: fail closed
        raise EgressRefused("schema", f"released document is invalid: {exc}") from None
    if released["k"] != k:
        raise EgressRefused("k", f"released document states k={released['k']}, the guard applies k={k}")
    scan_records(released[RECORDS], analysis, known, released=True)
    by_name = {c.name: c for c in analysis.columns}
    columns = [by_name[n] for n in released["columns"]]
    patient = next(c.name for c in columns if c.role is ColumnRole.PATIENT)
    if small_groups(released[RECORDS], quasi_columns(columns), patient, k):
        raise EgressRefused("k", f"released records hold a quasi-identifier group of fewer than k={k}")
    return released, actions


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
    deid_key: bytes | None = None,
) -> GuardResult:
    """The cleaned document that may leave the site for ``job``, or :class:`EgressRefused`.

    ``known_identifiers`` are the site's own identifiers (a :class:`KnownIdentifiers`, e.g. from
    :func:`collect_known_identifiers`, or plain strings). The threshold is ``policy.effective_k(job)``.
    ``deid_key`` is the site's de-identification key, from the site's own connection: a record-level
    payload is refused without it, an aggregate never uses it.
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
    rule = None if schema.record_level else _EGRESS_RULES.get(schema.schema_id)
    if rule is None and not schema.record_level:
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
    if schema.record_level:
        released, actions = _guard_records(document, schema, analysis, job, k, known, deid_key)
        return _sized(GuardResult(document=released, k=k, actions=tuple(actions)), policy)
    # identifiers first: a label such as "DOE^JANE" is not a safe label either, but the reason that
    # matters (and is logged) is that it looks like a person's name
    if isinstance(document.get("statistics"), Mapping):
        scan_for_identifiers(document["statistics"], analysis, known)
    try:
        schema.validate(document, analysis, "site")
    except PayloadSchemaError as exc:
        raise EgressRefused("schema", str(exc)) from None

    assert rule is not None
    released, actions = rule(document, analysis, k, max_bins_fraction)
    try:
        schema.validate(released, analysis, "released")
    except PayloadSchemaError as exc:  # a bug in the rule: fail closed
        raise EgressRefused("schema", f"released document is invalid: {exc}") from None
    scan_for_identifiers(released["statistics"], analysis, known)
    return _sized(GuardResult(document=released, k=k, actions=tuple(actions)), policy)


def _sized(result: GuardResult, policy: SitePolicy) -> GuardResult:
    size = len(result.payload)
    if size > policy.max_payload_bytes:
        raise EgressRefused(
            "size",
            f"payload of {size} bytes exceeds site {policy.site}'s limit of {policy.max_payload_bytes}",
        )
    return result


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
    if schema.schema_id != analysis.payload_schema:
        raise PayloadSchemaError(
            f"{analysis.name} v{analysis.version} results must be {analysis.payload_schema}"
        )
    schema.validate(document, analysis, "released")
    for key, value in (("job_id", job.job_id), ("site", site), ("analysis", job.analysis)):
        if document[key] != value:
            raise PayloadSchemaError(f"document {key} is not {value}")
    if document["k"] < job.k:
        raise PayloadSchemaError(f"document was released with k={document['k']} below the job's k={job.k}")
    if schema.record_level:
        _verify_records(document, analysis, job)
        return
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


def _verify_records(document: Mapping[str, Any], analysis: AnalysisSpec, job: FederatedJob) -> None:
    """The coordinator's re-check of a records document: the job's columns only, k-anonymous, no
    identifier pattern (pseudonym forms are checked by the schema)."""
    if document["schema"] not in _RECORD_RULES:
        raise PayloadSchemaError(f"{document['schema']} has no de-identifying egress rule here")
    try:
        columns = released_columns(analysis, job.parameters)
    except PayloadSchemaError:
        raise PayloadSchemaError("the job asks for columns the analysis does not release") from None
    if document["columns"] != [c.name for c in columns]:
        raise PayloadSchemaError("document columns are not the job's")
    patient = next(c.name for c in columns if c.role is ColumnRole.PATIENT)
    if small_groups(document[RECORDS], quasi_columns(columns), patient, job.k):
        raise PayloadSchemaError(f"records hold a quasi-identifier group of fewer than k={job.k}")
    try:
        scan_records(document[RECORDS], analysis, KnownIdentifiers(), released=True)
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
    "register_record_egress_rule",
    "release_aggregate",
    "release_records",
    "scan_records",
    "scan_for_identifiers",
    "verify_received",
]
