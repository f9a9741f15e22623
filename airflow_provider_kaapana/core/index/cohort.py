"""Cohort selection: which series of the DICOM metadata index a run processes.

:func:`select_cohort` is the one implementation: :class:`~airflow_provider_kaapana.operators.cohort.
CohortSelectOperator` calls it, and so does the segmentation DAG (through that operator). A cohort is
given by Series Instance UIDs, a raw query, or a :class:`CohortFilter`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.exceptions import SearchIndexError

if TYPE_CHECKING:
    from airflow_provider_kaapana.core.index.client import SearchClient

NOTHING_SELECTED = "give Series Instance UIDs, at least one filter, or a raw query"


@dataclass
class CohortFilter:
    """A simple series filter; every set field must match (AND). Lists mean "any of".

    ``date_from``/``date_to`` bound StudyDate (``YYYY-MM-DD`` or ``YYYYMMDD``, inclusive);
    ``description_pattern`` is a case-insensitive wildcard on SeriesDescription (``*liver*``).
    """

    modality: str | Sequence[str] | None = None
    body_part: str | Sequence[str] | None = None
    date_from: str | None = None
    date_to: str | None = None
    description_pattern: str | None = None
    patient_id: str | Sequence[str] | None = None
    study_instance_uid: str | Sequence[str] | None = None
    segment_label: str | Sequence[str] | None = None
    station_name: str | Sequence[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CohortFilter:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown cohort filter keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)

    def to_query(self) -> dict[str, Any]:
        clauses: list[dict[str, Any]] = []

        def terms(field_name: str, value: str | Sequence[str] | None, upper: bool = False) -> None:
            if value is None:
                return
            values = [value] if isinstance(value, str) else list(value)
            if upper:
                values = [v.upper() for v in values]
            clauses.append({"terms": {field_name: values}})

        terms("kaapana.modality", self.modality, upper=True)
        terms("BodyPartExamined", self.body_part, upper=True)
        terms("PatientID", self.patient_id)
        terms("StudyInstanceUID", self.study_instance_uid)
        terms("kaapana.segment_labels", self.segment_label)
        terms("StationName", self.station_name)
        if self.date_from or self.date_to:
            bounds = {}
            if self.date_from:
                bounds["gte"] = _iso_day(self.date_from)
            if self.date_to:
                bounds["lte"] = _iso_day(self.date_to)
            clauses.append({"range": {"StudyDate": bounds}})
        if self.description_pattern:
            clauses.append(
                {
                    "wildcard": {
                        "SeriesDescription": {"value": self.description_pattern, "case_insensitive": True}
                    }
                }
            )
        return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


def _iso_day(value: str) -> str:
    value = str(value).strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def clean_filters(filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop empty fields (``None``, ``""``, ``[]``, ``{}``): an empty form field is no filter term."""
    return {k: v for k, v in (filters or {}).items() if v not in (None, "", [], {})}


def select_cohort(
    client: SearchClient,
    index: str = DEFAULT_INDEX,
    *,
    query: dict[str, Any] | None = None,
    filters: CohortFilter | dict[str, Any] | None = None,
    identifiers: Sequence[str] | None = None,
    limit: int | None = 100,
    page_size: int = 1000,
    find_missing: Callable[[list[str]], list[dict[str, str]]] | None = None,
    require_selection: bool = False,
) -> list[dict[str, str]]:
    """Series given by ``identifiers``, ``query`` (raw query DSL, the value of ``"query"``) or ``filters``.

    Returns ``[{"series_instance_uid", "study_instance_uid"}, ...]``, at most ``limit`` (None: all,
    paged with ``search_after``). By ``query`` or ``filters``: sorted by SeriesInstanceUID. By
    ``identifiers`` (Series Instance UIDs): these series in the given order, their Study Instance UIDs
    from the index; the UIDs the index does not know go to ``find_missing`` (e.g. a C-FIND at the
    PACS), and without it are a :class:`ValueError` naming them. Give one of the three;
    ``require_selection`` refuses none (an empty selection would otherwise take whatever the index
    holds first).
    """
    given = ["identifiers"] if identifiers else []
    given += [name for name, value in (("query", query), ("filters", filters)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give either identifiers, a raw query or filters, not {' and '.join(given)}")
    if require_selection and not given:
        raise ValueError(NOTHING_SELECTED)
    if identifiers:
        return _select_identifiers(client, index, list(identifiers), limit, page_size, find_missing)
    return _search(client, index, query=query, filters=filters, limit=limit, page_size=page_size)


def _select_identifiers(
    client: SearchClient,
    index: str,
    identifiers: list[str],
    limit: int | None,
    page_size: int,
    find_missing: Callable[[list[str]], list[dict[str, str]]] | None,
) -> list[dict[str, str]]:
    query = {"terms": {"SeriesInstanceUID": identifiers}}
    found = _search(client, index, query=query, filters=None, limit=None, page_size=page_size)
    known = {f["series_instance_uid"] for f in found}
    missing = [uid for uid in identifiers if uid not in known]
    if missing:
        if find_missing is None:
            raise ValueError(f"series {', '.join(missing)} not in the search index {index!r}")
        found += find_missing(missing)
    order = {uid: i for i, uid in enumerate(identifiers)}
    found = sorted(found, key=lambda f: order.get(f["series_instance_uid"], 0))
    return found if limit is None else found[:limit]


def _search(
    client: SearchClient,
    index: str,
    *,
    query: dict[str, Any] | None,
    filters: CohortFilter | dict[str, Any] | None,
    limit: int | None,
    page_size: int,
) -> list[dict[str, str]]:
    """Series matching ``query`` or ``filters`` (none: all), sorted by SeriesInstanceUID, paged."""
    if isinstance(filters, dict):
        filters = CohortFilter.from_dict(filters)
    if query is not None and "query" in query and len(query) == 1:
        query = query["query"]  # accept {"query": {...}} as well as the bare query
    effective = query if query is not None else (filters or CohortFilter()).to_query()
    sources = search_documents(
        client,
        index,
        effective,
        fields=("SeriesInstanceUID", "StudyInstanceUID"),
        limit=limit,
        page_size=page_size,
    )
    return [
        {
            "series_instance_uid": str(source.get("SeriesInstanceUID", "")),
            "study_instance_uid": str(source.get("StudyInstanceUID", "")),
        }
        for source in sources
    ]


def search_documents(
    client: SearchClient,
    index: str,
    query: dict[str, Any] | None = None,
    *,
    fields: Sequence[str],
    limit: int | None = None,
    page_size: int = 1000,
) -> list[dict[str, Any]]:
    """The ``_source`` (only ``fields``) of every series document matching ``query`` (None: all),
    sorted by SeriesInstanceUID and paged with ``search_after``; at most ``limit`` (None: all)."""
    out: list[dict[str, Any]] = []
    search_after: list[Any] | None = None
    while limit is None or len(out) < limit:
        size = page_size if limit is None else min(page_size, limit - len(out))
        body: dict[str, Any] = {
            "query": dict(query or {"match_all": {}}),
            "size": size,
            "sort": [{"SeriesInstanceUID": "asc"}],
            "_source": list(fields),
        }
        if search_after is not None:
            body["search_after"] = search_after
        try:
            response = client.search(index, body)
        except Exception as exc:
            raise SearchIndexError(f"{client.url}: cohort query on {index!r} failed: {exc}") from exc
        hits = response.get("hits", {}).get("hits", [])
        out.extend(dict(hit.get("_source") or {}) for hit in hits)
        if len(hits) < size or not hits:
            break
        search_after = hits[-1].get("sort")
        if not search_after:
            break
    return out


PAIR_FIELDS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "ContentLabel",
    "ManufacturerModelName",
    "ReferencedSeriesSequence.SeriesInstanceUID",
)


def _referenced(source: dict[str, Any]) -> set[str]:
    items = source.get("ReferencedSeriesSequence") or []
    items = [items] if isinstance(items, dict) else items
    return {
        str(i.get("SeriesInstanceUID")) for i in items if isinstance(i, dict) and i.get("SeriesInstanceUID")
    }


def evaluation_pairs(
    client: SearchClient,
    index: str,
    test_pattern: str,
    reference_pattern: str,
    *,
    filters: CohortFilter | dict[str, Any] | None = None,
) -> list[dict[str, dict[str, str]]]:
    """Pairs for segmentation evaluation by a rule: every SEG whose SeriesDescription, ContentLabel or
    ManufacturerModelName matches ``test_pattern`` (case-insensitive wildcard, e.g. ``*nnunet 501*``)
    against every SEG matching ``reference_pattern`` (e.g. ``*reference*``) in the same study and on the
    same image series (Referenced Series Sequence). ``filters`` narrow the SEGs (date, body part...).

    Returns ``[{"reference": {"series_instance_uid", "study_instance_uid"}, "test": {...}}]`` sorted;
    a SEG that matches both patterns is never paired with itself.
    """
    if isinstance(filters, dict):
        filters = CohortFilter.from_dict(filters)
    narrowed = replace(filters or CohortFilter(), modality="SEG")
    sources = search_documents(client, index, narrowed.to_query(), fields=PAIR_FIELDS)

    def matches(source: dict[str, Any], pattern: str) -> bool:
        texts = (source.get(k) for k in ("SeriesDescription", "ContentLabel", "ManufacturerModelName"))
        return any(fnmatch.fnmatch(str(t).lower(), pattern.lower()) for t in texts if t)

    def uids(source: dict[str, Any]) -> dict[str, str]:
        return {
            "series_instance_uid": str(source["SeriesInstanceUID"]),
            "study_instance_uid": str(source.get("StudyInstanceUID", "")),
        }

    tests = [s for s in sources if matches(s, test_pattern)]
    references = [s for s in sources if matches(s, reference_pattern)]
    pairs = []
    for test in tests:
        for reference in references:
            same_study = reference.get("StudyInstanceUID") == test.get("StudyInstanceUID")
            same_image = bool(_referenced(reference) & _referenced(test))
            if reference is not test and same_study and same_image:
                pairs.append({"reference": uids(reference), "test": uids(test)})
    return sorted(
        pairs, key=lambda p: (p["test"]["series_instance_uid"], p["reference"]["series_instance_uid"])
    )
