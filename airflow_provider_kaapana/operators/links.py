"""The "Viewer" extra link: the series or study a task produced, opened in the PACS's viewer.

The task builds the URL while it runs (from the PACS connection's ``viewer_url`` template and the UIDs it
produced) and pushes it as the XCom ``viewer_url``; :class:`ViewerLink` only reads that XCom, so showing
the link looks up no connection. Airflow 3 calls ``get_link`` once in the worker when the task ends and
keeps the answer (XCom ``_link_ViewerLink``) for the UI; a task without a viewer template gets no link.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

    from airflow_provider_kaapana.core.net.viewer import ViewerTemplate

VIEWER_XCOM_KEY = "viewer_url"
log = logging.getLogger(__name__)


class ViewerLink(BaseOperatorLink):
    """Opens what the task produced in the viewer of its PACS connection's ``viewer_url`` template."""

    name = "Viewer"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # the configured XCom backend, as the standard provider's TriggerDagRunLink reads it
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=VIEWER_XCOM_KEY)
        return str(url) if url else ""


def viewer_of(pacs_conn_id: str | None) -> ViewerTemplate | None:
    """The viewer template of a PACS connection (None without a connection id or a ``viewer_url``)."""
    if not pacs_conn_id:
        return None
    from airflow_provider_kaapana.hooks.pacs import PacsHook

    return PacsHook(str(pacs_conn_id)).viewer


def push_file_viewer_url(
    context: Mapping[str, Any], template: ViewerTemplate | None, path: Any
) -> str | None:
    """:func:`push_viewer_url` for the DICOM file a task wrote (its Study/Series/SOP Instance UIDs)."""
    if template is None:
        return None
    from pathlib import Path

    from airflow_provider_kaapana.core.net.send import instance_uids

    uids = instance_uids(Path(path))
    return push_viewer_url(
        context, template, uids.study_instance_uid, uids.series_instance_uid, uids.sop_instance_uid
    )


def push_viewer_url(
    context: Mapping[str, Any],
    template: ViewerTemplate | None,
    study_uid: str | None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> str | None:
    """Fill ``template`` with the UIDs and push the URL as the task's XCom ``viewer_url``; the URL, or None
    (and nothing pushed) without a template or without a UID it needs."""
    if template is None:
        return None
    url = template.url_or_none(study_uid, series_uid, sop_uid)
    if url is None:
        log.info("no viewer link: the template needs UIDs this task does not know (%s)", template.template)
        return None
    ti = context.get("ti")
    if ti is not None:
        ti.xcom_push(key=VIEWER_XCOM_KEY, value=url)
    log.info("viewer: %s", url)
    return url
