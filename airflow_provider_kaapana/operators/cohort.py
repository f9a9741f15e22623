"""CohortSelectOperator: turn a query or a simple filter into the series a DAG run should process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_kaapana.core.index.client import select_cohort
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.hooks.search import SearchHook


class CohortSelectOperator(BaseOperator):
    """Select series from the DICOM metadata index.

    :param query: raw query DSL (the value of ``"query"``, or ``{"query": {...}}``) (templated).
    :param filters: a :class:`~airflow_provider_kaapana.core.index.client.CohortFilter` as a dict: ``modality``,
        ``body_part``, ``date_from``, ``date_to``, ``description_pattern``, ``patient_id``,
        ``study_instance_uid``, ``segment_label``, ``station_name`` (templated).
    :param limit: at most this many series (None: all).
    :param fail_if_empty: fail when nothing matches (default: return an empty list).

    Returns ``[{"series_instance_uid", "study_instance_uid"}, ...]`` — ready for ``.expand()``.
    """

    template_fields: Sequence[str] = ("query", "filters", "index", "limit")
    ui_color = "#fdd0a2"

    def __init__(
        self,
        *,
        query: dict[str, Any] | None = None,
        filters: dict[str, Any] | None = None,
        index: str = DEFAULT_INDEX,
        limit: int | None = 100,
        search_conn_id: str = SearchHook.default_conn_name,
        fail_if_empty: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.query = query
        self.filters = filters
        self.index = index
        self.limit = limit
        self.search_conn_id = search_conn_id
        self.fail_if_empty = fail_if_empty

    def execute(self, context: Any) -> list[dict[str, str]]:
        limit = None if self.limit in (None, "", "None") else int(self.limit)
        cohort = select_cohort(
            SearchHook(search_conn_id=self.search_conn_id).get_conn(),
            self.index,
            query=self.query or None,
            filters=self.filters or None,
            limit=limit,
        )
        self.log.info("selected %d series from %s", len(cohort), self.index)
        if not cohort and self.fail_if_empty:
            raise ValueError(
                f"no series in {self.index!r} match query={self.query!r} filters={self.filters!r}"
            )
        return cohort
