"""The payload vocabulary of federated analysis: schemas, statistic kinds, analyses, and their builders."""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from airflow_provider_kaapana.exceptions import PayloadSchemaError

SCHEMA_AGGREGATE_V1 = "kaapana.federated.aggregate/v1"

UNKNOWN = "UNKNOWN"
OTHER = "OTHER"
MAX_LABEL_CHARS = 64
MAX_CELLS = 128
MAX_BINS = 64

# What a category label may look like once normalised: upper-case letters, digits and a few separators.
# No '^' (PN component separator), no '@', no quotes: anything else is folded to OTHER by the builders
# and refused by the guard.
SAFE_LABEL_RE = re.compile(r"^[A-Z0-9](?:[A-Z0-9 _.,+\-/()&]{0,62}[A-Z0-9)])?$")
STATISTIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ANALYSIS_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ANALYSIS_VERSION_RE = re.compile(r"^[0-9]{1,3}$")

Stage = Literal["site", "released"]


class StatisticKind(str, enum.Enum):
    """The kinds of statistic a v1 aggregate payload may carry. There is deliberately no min/max."""

    COUNTS = "counts"  # category -> count (a partition of one population)
    MOMENTS = "moments"  # n, sum, sum of squares -> pooled mean and variance
    HISTOGRAM = "histogram"  # counts in fixed, pre-agreed bins

    @classmethod
    def coerce(cls, value: Any) -> StatisticKind:
        try:
            return cls(value)
        except ValueError:
            raise PayloadSchemaError(
                f"unknown statistic kind (expected one of {', '.join(k.value for k in cls)})"
            ) from None


@dataclass(frozen=True)
class StatisticSpec:
    """One statistic an analysis publishes, as agreed in advance between coordinator and sites.

    ``population`` names the set of units the statistic partitions: statistics with the same population
    have the same total, so the guard suppresses them together. ``unit`` is what one count counts.
    ``edges`` (histograms only) are fixed by the analysis version; a payload with other edges is refused.
    """

    name: str
    kind: StatisticKind
    population: str
    unit: str
    edges: tuple[float, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not STATISTIC_NAME_RE.match(self.name):
            raise ValueError(f"statistic name {self.name!r} must match {STATISTIC_NAME_RE.pattern}")
        object.__setattr__(self, "kind", StatisticKind(self.kind))
        if not STATISTIC_NAME_RE.match(self.population):
            raise ValueError(f"statistic {self.name}: population must match {STATISTIC_NAME_RE.pattern}")
        if self.kind is StatisticKind.HISTOGRAM:
            if self.edges is None:
                raise ValueError(f"histogram {self.name} needs its pre-agreed edges")
            edges = tuple(float(e) for e in self.edges)
            if len(edges) < 2 or len(edges) - 1 > MAX_BINS:
                raise ValueError(f"histogram {self.name}: 1 to {MAX_BINS} bins")
            if any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"histogram {self.name}: edges must be finite and strictly increasing")
            object.__setattr__(self, "edges", edges)
        elif self.edges is not None:
            raise ValueError(f"statistic {self.name}: only histograms have edges")


class ColumnRole(str, enum.Enum):
    """What a column of a record-level payload carries, and so how the egress guard treats it.

    ``patient`` and ``uid`` columns hold originals at the site and keyed pseudonyms once released;
    ``quasi`` columns are coarsened quasi-identifiers the job may ask for (k-anonymity applies to them);
    ``label`` is a category label; ``measurement`` a finite number or null.
    """

    PATIENT = "patient"
    UID = "uid"
    QUASI = "quasi"
    LABEL = "label"
    MEASUREMENT = "measurement"


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a record-level payload. ``keyword`` is the DICOM attribute the value passes through
    the de-identification profile as (``PatientID``, ``StudyInstanceUID``, ``PatientAge``...)."""

    name: str
    role: ColumnRole
    keyword: str | None = None
    unit: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not STATISTIC_NAME_RE.match(self.name):
            raise ValueError(f"column name {self.name!r} must match {STATISTIC_NAME_RE.pattern}")
        object.__setattr__(self, "role", ColumnRole(self.role))
        needs_keyword = self.role in (ColumnRole.PATIENT, ColumnRole.UID, ColumnRole.QUASI, ColumnRole.LABEL)
        if needs_keyword != (self.keyword is not None):
            raise ValueError(
                f"column {self.name}: a {self.role.value} column passes through one DICOM keyword"
            )


@dataclass(frozen=True)
class AnalysisSpec:
    """A versioned federated analysis: its payload schema, its statistics, and the parameters it takes.

    ``nested_populations`` maps a population to the one it is a subset of (``patients_with_age`` in
    ``patients``): the guard withholds the subset when the difference of the two totals is below k,
    since that difference (here: patients without a known age) would otherwise be a published small cell.
    ``columns`` (record-level payloads only, then without ``statistics``) are the columns of its rows.
    """

    name: str
    version: str
    payload_schema: str
    statistics: tuple[StatisticSpec, ...]
    parameters: frozenset[str] = frozenset()
    description: str = ""
    nested_populations: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[ColumnSpec, ...] = ()
    by_name: Mapping[str, StatisticSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not ANALYSIS_NAME_RE.match(self.name):
            raise ValueError(f"analysis name {self.name!r} must match {ANALYSIS_NAME_RE.pattern}")
        if not ANALYSIS_VERSION_RE.match(self.version):
            raise ValueError(f"analysis {self.name}: version {self.version!r} must be 1-3 digits")
        names = [s.name for s in self.statistics]
        if len(set(names)) != len(names):
            raise ValueError(f"analysis {self.name}: statistic names repeat")
        populations = {s.population for s in self.statistics}
        for sub, parent in self.nested_populations.items():
            if sub not in populations or parent not in populations or sub == parent:
                raise ValueError(f"analysis {self.name}: nested population {sub} in {parent} is not defined")
        object.__setattr__(self, "nested_populations", dict(self.nested_populations))
        columns = [c.name for c in self.columns]
        if len(set(columns)) != len(columns):
            raise ValueError(f"analysis {self.name}: column names repeat")
        if self.columns and self.statistics:
            raise ValueError(f"analysis {self.name}: a payload has statistics or record columns, not both")
        object.__setattr__(self, "by_name", {s.name: s for s in self.statistics})

    @property
    def dag_id(self) -> str:
        """The coordinator DAG that runs this analysis: ``kaapana_federated_<name>``."""
        return f"kaapana_federated_{self.name}"


# --------------------------------------------------------------------------------------------------
# payload schema registry


@dataclass(frozen=True)
class PayloadSchema:
    """A payload type: its id, whether it carries records, and its validator.

    ``validate(document, analysis, stage)`` raises :class:`PayloadSchemaError`; ``stage`` is ``"site"``
    (what an analysis produced, before the guard) or ``"released"`` (what the guard let out). A future
    ``kaapana.federated.model-weights/v1`` registers its own validator here and its own egress rule in
    :mod:`.guard`; a schema without an egress rule is refused there.
    """

    schema_id: str
    description: str
    record_level: bool
    validate: Callable[[Mapping[str, Any], AnalysisSpec, Stage], None]


_PAYLOAD_SCHEMAS: dict[str, PayloadSchema] = {}


def register_payload_schema(schema: PayloadSchema) -> None:
    """Add a payload type (an id may be registered once)."""
    if schema.schema_id in _PAYLOAD_SCHEMAS and _PAYLOAD_SCHEMAS[schema.schema_id] is not schema:
        raise ValueError(f"payload schema {schema.schema_id} is already registered")
    _PAYLOAD_SCHEMAS[schema.schema_id] = schema


def get_payload_schema(schema_id: Any) -> PayloadSchema:
    """The registered payload type, or :class:`PayloadSchemaError` (the id is shown only if it is one)."""
    schema = _PAYLOAD_SCHEMAS.get(schema_id) if isinstance(schema_id, str) else None
    if schema is None:
        raise PayloadSchemaError(f"unknown payload schema (allowed: {', '.join(sorted(_PAYLOAD_SCHEMAS))})")
    return schema


def payload_schema_ids() -> list[str]:
    return sorted(_PAYLOAD_SCHEMAS)


# --------------------------------------------------------------------------------------------------
# builders: plain Python values in, one statistic dict out


def normalise_label(value: Any) -> str:
    """A category label: upper-cased, whitespace collapsed; empty -> UNKNOWN; unsafe -> OTHER.

    Multi-valued attributes use their first value. A label that could carry an identifier (a ``^``, a
    UID-like or date-like string, anything outside :data:`SAFE_LABEL_RE`) becomes OTHER.
    """
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return UNKNOWN
    text = " ".join(str(value).upper().split())
    if not text:
        return UNKNOWN
    if len(text) > MAX_LABEL_CHARS or not SAFE_LABEL_RE.match(text) or looks_like_identifier(text):
        return OTHER
    return text


def _paired(values: Iterable[Any], who: Iterable[Hashable] | None) -> list[tuple[Any, Hashable | None]]:
    values = list(values)
    if who is None:
        return [(v, None) for v in values]
    people = list(who)
    if len(people) != len(values):
        raise ValueError(f"{len(values)} values but {len(people)} contributors")
    return list(zip(values, people))


def counts(
    labels: Iterable[Any],
    *,
    who: Iterable[Hashable] | None = None,
    weights: Iterable[int] | None = None,
    max_cells: int = MAX_CELLS,
) -> dict[str, Any]:
    """A ``counts`` statistic: one label per counted unit (normalised by :func:`normalise_label`).

    ``who`` (same length) names the individual behind each unit, e.g. the patient of a series; then the
    statistic carries per-cell ``contributors`` (distinct individuals) that the guard thresholds on and
    strips before egress. ``weights`` (same length, non-negative integers) counts a unit more than once,
    e.g. a series label weighted by its number of instances. Beyond ``max_cells`` categories the
    smallest are folded into OTHER.
    """
    cell_counts: dict[str, int] = {}
    cell_people: dict[str, set[Hashable]] = {}
    everyone: set[Hashable] = set()
    labels = list(labels)
    weight_list = [1] * len(labels) if weights is None else list(weights)
    if len(weight_list) != len(labels) or any(not isinstance(w, int) or w < 0 for w in weight_list):
        raise ValueError("weights must be one non-negative integer per label")
    for (label, person), weight in zip(_paired(labels, who), weight_list):
        if weight == 0:
            continue
        key = normalise_label(label)
        cell_counts[key] = cell_counts.get(key, 0) + weight
        if who is not None:
            cell_people.setdefault(key, set()).add(person)
            everyone.add(person)
    if len(cell_counts) > max_cells:
        ranked = sorted(cell_counts, key=lambda c: (-cell_counts[c], c))
        for key in ranked[max_cells - 1 :]:
            if key == OTHER:
                continue
            cell_counts[OTHER] = cell_counts.get(OTHER, 0) + cell_counts.pop(key)
            if who is not None:
                cell_people.setdefault(OTHER, set()).update(cell_people.pop(key))
    cells = dict(sorted(cell_counts.items()))
    stat: dict[str, Any] = {"kind": StatisticKind.COUNTS.value, "cells": cells, "total": sum(cells.values())}
    if who is not None:
        stat["contributors"] = {c: len(cell_people[c]) for c in cells}
        stat["total_contributors"] = len(everyone)
    return stat


def moments(values: Iterable[float | None], *, who: Iterable[Hashable] | None = None) -> dict[str, Any]:
    """A ``moments`` statistic (n, sum, sum of squares) of the values that are not None."""
    present = [(float(v), p) for v, p in _paired(values, who) if v is not None]
    if any(not math.isfinite(v) for v, _ in present):
        raise ValueError("moments of non-finite values")
    stat: dict[str, Any] = {
        "kind": StatisticKind.MOMENTS.value,
        "n": len(present),
        "sum": math.fsum(v for v, _ in present),
        "sum_sq": math.fsum(v * v for v, _ in present),
    }
    if who is not None:
        stat["contributors"] = len({p for _, p in present})
    return stat


def bin_index(value: float, edges: Sequence[float]) -> int | None:
    """The bin of ``value``: ``[e_i, e_i+1)``, the last bin closed; None outside the edges."""
    if not edges[0] <= value <= edges[-1]:
        return None
    for i in range(len(edges) - 1):
        if value < edges[i + 1]:
            return i
    return len(edges) - 2


def histogram(
    values: Iterable[float | None], edges: Sequence[float], *, who: Iterable[Hashable] | None = None
) -> dict[str, Any]:
    """A ``histogram`` statistic over fixed ``edges`` of the values that are not None.

    A value outside the edges raises ValueError (the caller decides whether it is missing): silently
    dropping it would make the histogram's total differ from the moments of the same values.
    """
    edge_list = [float(e) for e in edges]
    bins = [0] * (len(edge_list) - 1)
    people: list[set[Hashable]] = [set() for _ in bins]
    everyone: set[Hashable] = set()
    for value, person in _paired(values, who):
        if value is None:
            continue
        i = bin_index(float(value), edge_list)
        if i is None:
            raise ValueError(
                f"a value lies outside the histogram edges [{edge_list[0]:g}, {edge_list[-1]:g}]"
            )
        bins[i] += 1
        if who is not None:
            people[i].add(person)
            everyone.add(person)
    stat: dict[str, Any] = {"kind": StatisticKind.HISTOGRAM.value, "edges": edge_list, "counts": bins}
    if who is not None:
        stat["contributors"] = [len(p) for p in people]
        stat["total_contributors"] = len(everyone)
    return stat


def result_document(
    *, job_id: str, analysis: AnalysisSpec, site: str, statistics: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The envelope of a site's (not yet guarded) result document."""
    return {
        "schema": analysis.payload_schema,
        "job_id": job_id,
        "analysis": analysis.name,
        "analysis_version": analysis.version,
        "site": site,
        "statistics": {name: dict(stat) for name, stat in statistics.items()},
    }


def canonical_json_bytes(document: Mapping[str, Any]) -> bytes:
    """The one serialisation that is size-checked, hashed, logged and sent: sorted keys, ASCII, compact."""
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadSchemaError(f"document is not plain JSON ({type(exc).__name__})") from None
    return text.encode("ascii")


# --------------------------------------------------------------------------------------------------
# identifier patterns (used by the guard at the site and again by the coordinator)

# A DICOM UID: root 0-2 and at least three more components, no leading zeros. Numbers in the payload
# are JSON numbers and are never scanned, so a float such as 1.25 cannot be mistaken for one.
# UUID-derived UIDs (2.25.<integer>) have only three components and are matched separately.
UID_RE = re.compile(r"(?<![0-9.])(?:[0-2](?:\.(?:0|[1-9][0-9]*)){3,}|2\.25\.[1-9][0-9]{5,})(?![0-9])")
DATE8_RE = re.compile(r"(?<![0-9])(?:1[89]|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])(?![0-9])")
ISO_DATE_RE = re.compile(
    r"(?<![0-9])(?:1[89]|20)[0-9]{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])(?![0-9])"
)


def identifier_kind(text: str) -> str | None:
    """What identifier ``text`` looks like (``DICOM UID``, ``person name``, ``date``), or None."""
    if "^" in text:
        return "person name"
    if UID_RE.search(text):
        return "DICOM UID"
    if DATE8_RE.search(text) or ISO_DATE_RE.search(text):
        return "date"
    return None


def looks_like_identifier(text: str) -> bool:
    return identifier_kind(text) is not None


# --------------------------------------------------------------------------------------------------
# validation of aggregate/v1 documents

_ENVELOPE_KEYS = {"schema", "job_id", "analysis", "analysis_version", "site", "statistics"}
_SITE_KEYS: dict[StatisticKind, tuple[set[str], set[str]]] = {  # (required, optional)
    StatisticKind.COUNTS: ({"kind", "cells", "total"}, {"contributors", "total_contributors"}),
    StatisticKind.HISTOGRAM: ({"kind", "edges", "counts"}, {"contributors", "total_contributors"}),
    StatisticKind.MOMENTS: ({"kind", "n", "sum", "sum_sq"}, {"contributors"}),
}
_RELEASED_KEYS: dict[StatisticKind, set[str]] = {
    StatisticKind.COUNTS: {"kind", "cells", "total", "suppressed", "withheld"},
    StatisticKind.HISTOGRAM: {"kind", "edges", "counts", "suppressed", "withheld"},
    StatisticKind.MOMENTS: {"kind", "n", "sum", "sum_sq", "withheld"},
}


def _fail(where: str, message: str) -> PayloadSchemaError:
    return PayloadSchemaError(f"{where}: {message}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_keys(where: str, obj: Any, required: set[str], optional: Iterable[str] = ()) -> None:
    if not isinstance(obj, Mapping):
        raise _fail(where, "must be a JSON object")
    keys = set(obj)
    if any(not isinstance(k, str) for k in keys):
        raise _fail(where, "keys must be strings")
    unknown = keys - required - set(optional)
    if unknown:
        # unknown keys are never shown: they may be exactly what must not leave
        raise _fail(where, f"{len(unknown)} unknown key(s) (not shown)")
    missing = required - keys
    if missing:
        raise _fail(where, f"missing key(s) {', '.join(sorted(missing))}")


def _check_counts(where: str, stat: Mapping[str, Any], stage: Stage) -> None:
    cells = stat["cells"]
    if not isinstance(cells, Mapping):
        raise _fail(where, "cells must be an object")
    if len(cells) > MAX_CELLS:
        raise _fail(where, f"{len(cells)} cells (at most {MAX_CELLS})")
    for i, (label, value) in enumerate(cells.items()):
        if not isinstance(label, str) or not SAFE_LABEL_RE.match(label):
            raise _fail(where, f"cell {i}: label is not a safe category label (not shown)")
        if not (_is_count(value) or (stage == "released" and value is None)):
            raise _fail(where, f"cell {i}: count must be a non-negative integer")
    total = stat["total"]
    if stage == "site":
        if not _is_count(total) or total != sum(cells.values()):
            raise _fail(where, "total must equal the sum of the cells")
        if "contributors" in stat:
            contributors = stat["contributors"]
            if not isinstance(contributors, Mapping) or set(contributors) != set(cells):
                raise _fail(where, "contributors must have exactly the cells' labels")
            for i, label in enumerate(cells):
                c = contributors[label]
                if not _is_count(c) or c > cells[label] or (c == 0) != (cells[label] == 0):
                    raise _fail(where, f"cell {i}: contributors must be 1..count (0 for an empty cell)")
            tc = stat.get("total_contributors")
            if not _is_count(tc) or tc > total or tc < max(contributors.values(), default=0):
                raise _fail(where, "total_contributors must lie between the largest cell's and the total")
    else:
        _check_released(where, stat, list(cells), lambda key: cells[key] is None)
        if not (_is_count(total) or total is None):
            raise _fail(where, "total must be a non-negative integer or null")
        if total is not None and all(v is not None for v in cells.values()) and total != sum(cells.values()):
            raise _fail(where, "total must equal the sum of the cells")


def _check_histogram(where: str, stat: Mapping[str, Any], spec: StatisticSpec, stage: Stage) -> None:
    edges = stat["edges"]
    if not isinstance(edges, list) or not all(_is_number(e) for e in edges):
        raise _fail(where, "edges must be a list of numbers")
    assert spec.edges is not None
    if len(edges) != len(spec.edges) or any(float(a) != b for a, b in zip(edges, spec.edges)):
        raise _fail(where, "edges differ from the analysis's pre-agreed edges")
    bins = stat["counts"]
    if not isinstance(bins, list) or len(bins) != len(edges) - 1:
        raise _fail(where, "counts must be a list with one count per bin")
    for i, value in enumerate(bins):
        if not (_is_count(value) or (stage == "released" and value is None)):
            raise _fail(where, f"bin {i}: count must be a non-negative integer")
    if stage == "site" and "contributors" in stat:
        contributors = stat["contributors"]
        if not isinstance(contributors, list) or len(contributors) != len(bins):
            raise _fail(where, "contributors must have one entry per bin")
        for i, (c, n) in enumerate(zip(contributors, bins)):
            if not _is_count(c) or c > n or (c == 0) != (n == 0):
                raise _fail(where, f"bin {i}: contributors must be 1..count (0 for an empty bin)")
        tc = stat.get("total_contributors")
        if not _is_count(tc) or tc > sum(bins) or tc < max(contributors, default=0):
            raise _fail(where, "total_contributors must lie between the largest bin's and the total")
    if stage == "released":
        _check_released(where, stat, list(range(len(bins))), lambda i: bins[i] is None)


def _check_released(
    where: str, stat: Mapping[str, Any], keys: list[Any], is_none: Callable[[Any], bool]
) -> None:
    if not isinstance(stat["withheld"], bool):
        raise _fail(where, "withheld must be true or false")
    suppressed = stat["suppressed"]
    if not isinstance(suppressed, list):
        raise _fail(where, "suppressed must be a list")
    expected = [key for key in keys if is_none(key)]
    if sorted(suppressed, key=str) != sorted(expected, key=str):
        raise _fail(where, "suppressed must list exactly the cells whose value is null")
    if (
        stat["withheld"]
        and stat.get("kind") == StatisticKind.COUNTS.value
        and (keys or stat["total"] is not None)
    ):
        raise _fail(where, "a withheld counts statistic has no cells and no total")
    if stat["withheld"] and stat.get("kind") == StatisticKind.HISTOGRAM.value and len(expected) != len(keys):
        raise _fail(where, "a withheld histogram has only null bins")


def _check_moments(where: str, stat: Mapping[str, Any], stage: Stage) -> None:
    n, total, total_sq = stat["n"], stat["sum"], stat["sum_sq"]
    if stage == "released":
        if not isinstance(stat["withheld"], bool):
            raise _fail(where, "withheld must be true or false")
        if stat["withheld"]:
            if n is not None or total is not None or total_sq is not None:
                raise _fail(where, "a withheld moments statistic has null n, sum and sum_sq")
            return
    if not _is_count(n) or not _is_number(total) or not _is_number(total_sq):
        raise _fail(where, "n must be a non-negative integer, sum and sum_sq finite numbers")
    if total_sq < 0 or (n == 0 and (total != 0 or total_sq != 0)):
        raise _fail(where, "sum_sq must be >= 0 and both sums 0 when n is 0")
    # Cauchy-Schwarz: sum^2 <= n * sum_sq (with rounding slack)
    if total * total > n * total_sq * (1 + 1e-9) + 1e-9:
        raise _fail(where, "sum and sum_sq are inconsistent (sum^2 > n * sum_sq)")
    if stage == "site" and "contributors" in stat:
        c = stat["contributors"]
        if not _is_count(c) or c > n or (c == 0) != (n == 0):
            raise _fail(where, "contributors must be 1..n (0 when n is 0)")


def validate_aggregate_v1(document: Mapping[str, Any], analysis: AnalysisSpec, stage: Stage) -> None:
    """Check an ``aggregate/v1`` document against ``analysis``: keys, kinds, labels, edges, sums."""
    envelope = _ENVELOPE_KEYS | ({"k"} if stage == "released" else set())
    _check_keys("document", document, envelope)
    if document["schema"] != SCHEMA_AGGREGATE_V1:
        raise _fail("document", f"schema must be {SCHEMA_AGGREGATE_V1}")
    if document["analysis"] != analysis.name or document["analysis_version"] != analysis.version:
        raise _fail("document", f"analysis must be {analysis.name} version {analysis.version}")
    for key in ("job_id", "site"):
        if not isinstance(document[key], str) or not document[key]:
            raise _fail("document", f"{key} must be a non-empty string")
    if stage == "released" and (not _is_count(document["k"]) or document["k"] < 1):
        raise _fail("document", "k must be a positive integer")
    statistics = document["statistics"]
    if not isinstance(statistics, Mapping):
        raise _fail("statistics", "must be a JSON object")
    unknown = [name for name in statistics if name not in analysis.by_name]
    if unknown:
        raise _fail(
            "statistics",
            f"{len(unknown)} statistic(s) not in {analysis.name} v{analysis.version} (not shown)",
        )
    missing = sorted(set(analysis.by_name) - set(statistics))
    if missing:
        raise _fail("statistics", f"missing {', '.join(missing)}")
    for name, spec in analysis.by_name.items():
        stat = statistics[name]
        where = f"statistic {name}"
        if not isinstance(stat, Mapping):
            raise _fail(where, "must be a JSON object")
        kind = StatisticKind.coerce(stat.get("kind"))
        if kind is not spec.kind:
            raise _fail(where, f"kind must be {spec.kind.value}")
        if stage == "site":
            required, optional = _SITE_KEYS[kind]
            _check_keys(where, stat, required, optional)
        else:
            _check_keys(where, stat, _RELEASED_KEYS[kind])
        if kind is StatisticKind.COUNTS:
            _check_counts(where, stat, stage)
        elif kind is StatisticKind.HISTOGRAM:
            _check_histogram(where, stat, spec, stage)
        else:
            _check_moments(where, stat, stage)


register_payload_schema(
    PayloadSchema(
        schema_id=SCHEMA_AGGREGATE_V1,
        description="aggregate statistics (counts, moments, fixed-bin histograms) of one site",
        record_level=False,
        validate=validate_aggregate_v1,
    )
)


def iter_strings(obj: Any, known: Iterable[str], path: str = "statistics") -> Iterable[tuple[str, str]]:
    """``(where, text)`` for every key and string value in ``obj``; numbers are not strings.

    ``where`` names a key only when it is in ``known`` (statistic and field names); any other key, such as
    a category label, appears as ``<key N>`` so that a message built from ``where`` never echoes data.
    """
    names = known if isinstance(known, (set, frozenset)) else set(known)
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, Mapping):
        for i, (key, value) in enumerate(obj.items()):
            child = f"{path}.{key}" if key in names else f"{path}.<key {i}>"
            if isinstance(key, str):
                yield f"{child} (key)", key
            yield from iter_strings(value, names, child)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from iter_strings(value, names, f"{path}[{i}]")


__all__ = [
    "ANALYSIS_NAME_RE",
    "MAX_BINS",
    "MAX_CELLS",
    "OTHER",
    "SAFE_LABEL_RE",
    "SCHEMA_AGGREGATE_V1",
    "UNKNOWN",
    "AnalysisSpec",
    "ColumnRole",
    "ColumnSpec",
    "PayloadSchema",
    "StatisticKind",
    "StatisticSpec",
    "bin_index",
    "canonical_json_bytes",
    "counts",
    "get_payload_schema",
    "histogram",
    "identifier_kind",
    "iter_strings",
    "looks_like_identifier",
    "moments",
    "normalise_label",
    "payload_schema_ids",
    "register_payload_schema",
    "result_document",
    "validate_aggregate_v1",
]
