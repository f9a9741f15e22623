"""ElasticIndexOperator: index series folders as one search document per series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.index.client import index_series
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.exceptions import SearchIndexError
from airflow_provider_kaapana.hooks.search import SearchHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator

# keys of an upstream XCom item that become derived fields of the series document
_SOURCE_KEYS = ("calling_ae_title", "called_ae_title", "source")
_LOCATION_KEYS = ("pacs", "pacs_url", "series_url")


def series_inputs(series_dirs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Normalise the operator's input to ``(path, build kwargs)`` pairs.

    Accepts one path, a list of paths, or the receive step's XCom: a list of dicts with
    ``series_dir`` (and optionally ``series_instance_uid``, ``received_at``, ``calling_ae_title``,
    ``called_ae_title`` → ``kaapana.source``; ``pacs``, ``pacs_url``, ``series_url`` →
    ``kaapana.location``; ``statistics_path`` → ``kaapana.segments``: the statistics step's XCom indexes
    its SEG with the per-segment statistics). A dict without ``series_dir`` is an error naming it.
    """
    if series_dirs is None:
        return []
    if isinstance(series_dirs, (str, Path, dict)):
        series_dirs = [series_dirs]
    out: list[tuple[str, dict[str, Any]]] = []
    for item in series_dirs:
        if isinstance(item, dict):
            if not item.get("series_dir") and item.get("seg_path"):  # the SEG export's XCom
                item = {**item, "series_dir": item["seg_path"]}
            if not item.get("series_dir"):
                raise ValueError(f"series item without 'series_dir' (or 'seg_path'): {item!r}")
            source = {k: item[k] for k in _SOURCE_KEYS if item.get(k)}
            kwargs: dict[str, Any] = {"received_at": item.get("received_at")}
            if item.get("statistics_path"):
                kwargs["statistics"] = str(item["statistics_path"])
            if source:
                kwargs["source"] = source
            location = {k: item[k] for k in _LOCATION_KEYS if item.get(k)}
            if location:
                kwargs["location"] = {"series_dir": str(item["series_dir"]), **location}
            out.append((str(item["series_dir"]), kwargs))
        else:
            out.append((str(item), {}))
    return out


class ElasticIndexOperator(KaapanaBaseOperator):
    """Index DICOM series into Elasticsearch/OpenSearch: one document per SeriesInstanceUID.

    :param series_dirs: series folders (or files), or the receive step's list of
        ``{"series_instance_uid", "series_dir", ...}`` dicts (templated).
    :param index: index name (templated); the template ``<index>-template`` for ``<index>*`` is
        installed idempotently.
    :param search_conn_id: connection of type ``kaapana_search``, ``elasticsearch`` or ``opensearch``.
    :param workers: processes parsing headers in parallel.
    :param fail_on_rejected: fail the task (after all other series were indexed) when the server
        rejected a document; unreadable files never fail the task, they are reported.
    :param max_bytes: size of one bulk request; ``retries``/``backoff`` for 429/5xx
        answers (``None``: the connection's ``retries``/``backoff`` extras, else 5 and 0.5 s).
    :param merge_instances: merge into the already indexed document of the series (partial
        arrivals: instances united by SOPInstanceUID) instead of replacing it.

    Returns ``{"index", "indexed": [series UIDs], "failed": {uid: reason}, "file_errors": [...],
    "problems": [...], "instances"}``.
    """

    template_fields: Sequence[str] = ("series_dirs", "index")
    ui_color = "#c7e9c0"

    def __init__(
        self,
        *,
        series_dirs: Any,
        index: str = DEFAULT_INDEX,
        search_conn_id: str = SearchHook.default_conn_name,
        workers: int = 1,
        fail_on_rejected: bool = True,
        max_bytes: int = 8 * 1024 * 1024,
        retries: int | None = None,
        backoff: float | None = None,
        refresh: bool | str = "wait_for",
        merge_instances: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.series_dirs = series_dirs
        self.index = index
        self.search_conn_id = search_conn_id
        self.workers = workers
        self.fail_on_rejected = fail_on_rejected
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff = backoff
        self.refresh = refresh
        self.merge_instances = merge_instances

    def get_hook(self) -> SearchHook:
        return SearchHook(search_conn_id=self.search_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        inputs = series_inputs(self.series_dirs)
        report = index_series(
            self.hook.get_conn(),
            self.index,
            inputs,
            workers=self.workers,
            max_bytes=self.max_bytes,
            retries=self.retries,
            backoff=self.backoff,
            refresh=self.refresh,
            merge_instances=self.merge_instances,
        )
        for error in report.file_errors:
            self.log.warning("not indexed: %s", error)
        for problem in report.problems[:50]:
            self.log.warning("value problem: %s", problem)
        self.log.info(
            "indexed %d series (%d instances) into %s; %d rejected, %d unreadable files",
            len(report.indexed),
            report.instances,
            self.index,
            len(report.failed),
            len(report.file_errors),
        )
        if report.failed and self.fail_on_rejected:
            details = "; ".join(f"{uid}: {reason}" for uid, reason in list(report.failed.items())[:10])
            raise SearchIndexError(f"{len(report.failed)} series rejected by the search server: {details}")
        return report.as_dict()
