"""Cohort selection: which series of the DICOM metadata index a run processes.

:func:`select_cohort` is the one implementation: :class:`~airflow_provider_kaapana.operators.cohort.
CohortSelectOperator` calls it, and so does the segmentation DAG (through that operator). A cohort is
given by Series Instance UIDs, a raw query, or a :class:`CohortFilter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    out: list[dict[str, str]] = []
    search_after: list[Any] | None = None
    while limit is None or len(out) < limit:
        size = page_size if limit is None else min(page_size, limit - len(out))
        body: dict[str, Any] = {
            "query": effective,
            "size": size,
            "sort": [{"SeriesInstanceUID": "asc"}],
            "_source": ["SeriesInstanceUID", "StudyInstanceUID"],
        }
        if search_after is not None:
            body["search_after"] = search_after
        try:
            response = client.search(index, body)
        except Exception as exc:
            raise SearchIndexError(f"{client.url}: cohort query on {index!r} failed: {exc}") from exc
        hits = response.get("hits", {}).get("hits", [])
        for hit in hits:
            source = hit.get("_source", {})
            out.append(
                {
                    "series_instance_uid": str(source.get("SeriesInstanceUID", hit.get("_id"))),
                    "study_instance_uid": str(source.get("StudyInstanceUID", "")),
                }
            )
        if len(hits) < size or not hits:
            break
        search_after = hits[-1].get("sort")
        if not search_after:
            break
    return out
