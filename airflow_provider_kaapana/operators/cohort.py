"""CohortSelectOperator: turn UIDs, a query or a simple filter into the series a DAG run should process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_provider_kaapana.core.index.cohort import NOTHING_SELECTED, clean_filters, select_cohort
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.core.params import as_list, as_native, optional_int, parse_bool
from airflow_provider_kaapana.hooks.pacs import PacsHook
from airflow_provider_kaapana.hooks.search import SearchHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator


def find_series_in_pacs(
    series_uids: list[str], pacs_conn_id: str, also_looked_in: str = ""
) -> list[dict[str, str]]:
    """``{"series_instance_uid", "study_instance_uid"}`` for each series, by C-FIND at series level."""
    hook = PacsHook(pacs_conn_id)
    out: list[dict[str, str]] = []
    for uid in series_uids:
        found = hook.find("series", {"SeriesInstanceUID": uid}, ["StudyInstanceUID"])
        if not found:
            elsewhere = f" (nor in the {also_looked_in})" if also_looked_in else ""
            raise ValueError(f"series {uid} is not in the PACS of connection {pacs_conn_id}{elsewhere}")
        out.append({"series_instance_uid": uid, "study_instance_uid": str(found[0].StudyInstanceUID)})
    return out


class CohortSelectOperator(KaapanaBaseOperator):
    """Select series from the DICOM metadata index (:func:`~airflow_provider_kaapana.core.index.cohort.select_cohort`).

    :param identifiers: Series Instance UIDs (a list, or text with one per line or comma): these series,
        in this order (templated). Their Study Instance UIDs come from the index; with ``pacs_conn_id``,
        UIDs the index does not know are looked up by C-FIND at that PACS, else they fail the task.
    :param query: raw query DSL (the value of ``"query"``, or ``{"query": {...}}``) (templated).
    :param filters: a :class:`~airflow_provider_kaapana.core.index.cohort.CohortFilter` as a dict: ``modality``,
        ``body_part``, ``date_from``, ``date_to``, ``description_pattern``, ``patient_id``,
        ``study_instance_uid``, ``segment_label``, ``station_name``; empty values are dropped (templated).
    :param limit: at most this many series (None: all) (templated).
    :param pacs_conn_id: a ``kaapana_pacs`` connection for identifiers the index lacks (None: none).
    :param require_selection: fail when no identifiers, query or (non-empty) filter is given, instead
        of selecting whatever the index holds: at once, before connecting, without retries
        (:class:`AirflowFailException`), naming what the run gave.
    :param skip_if_empty: end as *skipped* when nothing matches (downstream tasks are skipped too).
    :param fail_if_empty: fail when nothing matches (default: return an empty list).

    The first given of ``identifiers``, ``query``, ``filters`` is used (a form may fill in several: the
    UIDs win, then the raw query). Returns ``[{"series_instance_uid", "study_instance_uid"}, ...]`` —
    ready for ``.expand()``.
    """

    template_fields: Sequence[str] = ("identifiers", "query", "filters", "index", "limit")
    ui_color = "#fdd0a2"

    def __init__(
        self,
        *,
        identifiers: Sequence[str] | str | None = None,
        query: dict[str, Any] | str | None = None,
        filters: dict[str, Any] | str | None = None,
        index: str = DEFAULT_INDEX,
        limit: int | str | None = 100,
        search_conn_id: str = SearchHook.default_conn_name,
        pacs_conn_id: str | None = None,
        require_selection: bool = False,
        skip_if_empty: bool = False,
        fail_if_empty: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.identifiers = identifiers
        self.query = query
        self.filters = filters
        self.index = index
        self.limit = limit
        self.search_conn_id = search_conn_id
        self.pacs_conn_id = pacs_conn_id
        self.require_selection = require_selection
        self.skip_if_empty = skip_if_empty
        self.fail_if_empty = fail_if_empty

    def get_hook(self) -> SearchHook:
        return SearchHook(search_conn_id=self.search_conn_id)

    def _find_missing(self, uids: list[str]) -> list[dict[str, str]]:
        assert self.pacs_conn_id
        return find_series_in_pacs(uids, self.pacs_conn_id, also_looked_in=f"search index {self.index}")

    def execute(self, context: Any) -> list[dict[str, str]]:
        identifiers = [str(uid) for uid in as_list(as_native(self.identifiers))]
        query = as_native(self.query) or None
        filters = clean_filters(as_native(self.filters)) or None
        if parse_bool(self.require_selection, "require_selection") and not (identifiers or query or filters):
            given = {"identifiers": as_native(self.identifiers), "query": as_native(self.query)}
            raw_filters = as_native(self.filters)
            given.update(raw_filters if isinstance(raw_filters, dict) else {"filters": raw_filters})
            raise AirflowFailException(
                f"{NOTHING_SELECTED}; this run gave {', '.join(f'{k}={v!r}' for k, v in given.items())}"
            )
        cohort = select_cohort(
            self.hook.get_conn(),
            self.index,
            identifiers=identifiers or None,
            query=None if identifiers else query,
            filters=None if identifiers or query else filters,
            limit=optional_int(self.limit, "limit"),
            find_missing=self._find_missing if self.pacs_conn_id else None,
            require_selection=parse_bool(self.require_selection, "require_selection"),
        )
        self.log.info("selected %d series from %s", len(cohort), self.index)
        if not cohort and parse_bool(self.skip_if_empty, "skip_if_empty"):
            raise AirflowSkipException("no series matched the input selection")
        if not cohort and parse_bool(self.fail_if_empty, "fail_if_empty"):
            raise ValueError(
                f"no series in {self.index!r} match query={self.query!r} filters={self.filters!r}"
            )
        return cohort
