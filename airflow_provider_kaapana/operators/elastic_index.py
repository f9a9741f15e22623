"""ElasticIndexOperator: index series folders as one search document per series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.index.client import index_series
from airflow_provider_kaapana.core.index.template import DEFAULT_INDEX
from airflow_provider_kaapana.core.net.viewer import ViewerTemplate
from airflow_provider_kaapana.core.params import parse_bool
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import SearchIndexError
from airflow_provider_kaapana.hooks.search import SearchHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator
from airflow_provider_kaapana.operators.links import VIEWER_XCOM_KEY, ViewerLink, viewer_of

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
    :param pacs_conn_id: the PACS holding the series; its ``viewer_url`` template gives each document
        ``kaapana.viewer_url`` and the task's "Viewer" link (the first series indexed).
    :param viewer_url: a viewer URL template instead of the connection's.
    :param thumbnails: write each series' thumbnail (middle slice, windowed PNG) into the run workspace
        (``<workspace_base>/<dag>/<run>/batch/<series>/index/thumbnail.png``) and into its document as
        ``kaapana.thumbnail``; a series that is no image (SEG, SR...) or cannot be decoded gets none.
    :param refresh: ``"wait_for"`` (default): the task ends once the documents are searchable, waiting
        for the index's next periodic refresh (``refresh_interval``, 1 s by default: up to a second per
        task); ``True``: refresh now (searchable at once; a small segment per request, fine for a few
        requests a minute, as the pipeline DAGs make, not for a bulk re-index); ``False``: don't wait.

    Returns ``{"index", "indexed": [series UIDs], "failed": {uid: reason}, "file_errors": [...],
    "problems": [...], "instances", "thumbnails": {uid: png path}, "no_thumbnail": {uid: why},
    "viewer_urls": {uid: url}}``.
    """

    template_fields: Sequence[str] = ("series_dirs", "index", "pacs_conn_id", "viewer_url", "thumbnails")
    ui_color = "#c7e9c0"
    operator_extra_links = (ViewerLink(),)

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
        pacs_conn_id: str | None = None,
        viewer_url: str | None = None,
        thumbnails: bool | str = False,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
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
        self.pacs_conn_id = pacs_conn_id
        self.viewer_url = viewer_url
        self.thumbnails = thumbnails
        self.workspace_base = workspace_base

    def get_hook(self) -> SearchHook:
        return SearchHook(search_conn_id=self.search_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        inputs = series_inputs(self.series_dirs)
        viewer = ViewerTemplate(self.viewer_url) if self.viewer_url else viewer_of(self.pacs_conn_id)
        with_thumbnails = parse_bool(self.thumbnails, "thumbnails", default=False)
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
            viewer_url=viewer.template if viewer else None,
            thumbnails=self.run_workspace(context) if with_thumbnails else None,
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
        for uid, why in report.no_thumbnail.items():
            self.log.info("no thumbnail of %s: %s", uid, why)
        first_link = next(
            (report.viewer_urls[uid] for uid in report.indexed if uid in report.viewer_urls), None
        )
        if first_link:
            context["ti"].xcom_push(key=VIEWER_XCOM_KEY, value=first_link)
        if report.failed and self.fail_on_rejected:
            details = "; ".join(f"{uid}: {reason}" for uid, reason in list(report.failed.items())[:10])
            raise SearchIndexError(f"{len(report.failed)} series rejected by the search server: {details}")
        return report.as_dict()
