"""``DicomReceiveOperator``: put a run's DICOM input into its workspace.

From the listener's landing zone (runs triggered by ``kaapana listen``: pass the run's conf) or from the
PACS by Study/Series Instance UID via C-GET, C-MOVE or WADO-RS. Writes
``RunWorkspace(base, dag_id, run_id).step_dir(series_uid, "dicom")`` and returns, as XCom, one
``{"study_instance_uid", "series_instance_uid", "series_dir"}`` per series — paths, never data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.ingest import landing_series, receive_files, validate_batches
from airflow_provider_kaapana.core.params import as_native
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE, RunWorkspace
from airflow_provider_kaapana.exceptions import PacsError, RunConfError
from airflow_provider_kaapana.hooks.pacs import RETRIEVE_METHODS, PacsHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".kaapana-received.json"


class DicomReceiveOperator(KaapanaBaseOperator):
    """Fetch DICOM series into the run workspace (``<base>/<dag>/<run>/batch/<series>/dicom``).

    Give either ``landing_conf`` (the conf of a listener-triggered run: ``"{{ dag_run.conf }}"``, one
    batch or ``batches``, several; a conf
    with only ``series_dir``, as from a run by hand, gets one entry per series among the folder's DICOM
    files: any file name, subfolders, DICOM media with a DICOMDIR) or ``series``: one or a
    list of ``{"study_instance_uid", "series_instance_uid"}`` (a study UID alone fetches every series of the
    study, found by C-FIND). One series dict in gives one dict out; otherwise a list. Mappable:
    ``DicomReceiveOperator.partial(task_id=..., method="wado-rs").expand(series=[...])``.

    :param method: ``c-get`` (default), ``c-move`` or ``wado-rs`` (PACS source only)
    :param pacs_conn_id: a ``kaapana_pacs`` connection
    :param workspace_base: root of the run workspaces
    :param max_workers: series fetched in parallel (C-MOVE runs one at a time: one receive port)
    :param copy_mode: ``link`` (hard link, falls back to copy) or ``copy`` for landing-zone files
    :param validate: landing-zone input only: check every file as the ingest DAG does
        (:func:`~airflow_provider_kaapana.core.ingest.validate_batches`: files that are not DICOM of
        their series are set aside in the workspace; a series with no valid file is left out and
        pushed as XCom ``rejected``) and return the validated series (with ``valid_files``,
        ``quarantined`` and the arrival facts). One task instead of two on the ingest path.
    """

    template_fields: Sequence[str] = ("series", "landing_conf", "method", "pacs_conn_id", "workspace_base")
    ui_color = "#d7ecf7"

    def __init__(
        self,
        *,
        series: Sequence[Mapping[str, str]] | Mapping[str, str] | str | None = None,
        landing_conf: Mapping[str, Any] | str | None = None,
        method: str = "c-get",
        pacs_conn_id: str = "kaapana_pacs_default",
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        max_workers: int = 4,
        copy_mode: str = "link",
        validate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.series = series
        self.landing_conf = landing_conf
        self.method = method
        self.pacs_conn_id = pacs_conn_id
        self.workspace_base = workspace_base
        self.max_workers = max_workers
        self.copy_mode = copy_mode
        self.validate = validate

    def get_hook(self) -> PacsHook:
        return PacsHook(self.pacs_conn_id)

    def execute(self, context: Any) -> list[dict[str, str]] | dict[str, str]:
        workspace = self.run_workspace(context)
        landing_conf = as_native(self.landing_conf)
        series = as_native(self.series)
        if landing_conf is not None and series:
            raise ValueError("give either landing_conf or series, not both")
        if landing_conf is not None:  # a run's conf, even an empty one: it must name what to receive
            received = []
            for landing in self._landing_series(landing_conf):
                series_uid = validate_uid(landing.series_instance_uid, "SeriesInstanceUID")
                study_uid = validate_uid(landing.study_instance_uid, "StudyInstanceUID")
                dest = workspace.step_dir(series_uid, "dicom")
                files = receive_files(landing, dest, self.copy_mode)
                log.info(
                    "series %s: %d instances from %s into %s", series_uid, len(files), landing.base, dest
                )
                received.append(
                    {
                        "study_instance_uid": study_uid,
                        "series_instance_uid": series_uid,
                        "series_dir": str(dest),
                    }
                )
            if not self.validate:
                return received
            validated, rejected = validate_batches(received, landing_conf)
            context["ti"].xcom_push(key="rejected", value=rejected)
            return validated
        if not series:
            raise ValueError("nothing to receive: give landing_conf or series")
        if isinstance(series, Mapping):
            received = self._from_pacs(workspace, [series])
            # one series in, one dict out (what a mapped chain passes on); a whole study stays a list
            return received[0] if series.get("series_instance_uid") else received
        return self._from_pacs(workspace, list(series))

    def _landing_series(self, landing_conf: Any) -> list[Any]:
        """The series of a landing-zone conf; a conf that names none (or malformed batches) fails the
        task at once (:class:`AirflowFailException`: the same conf would fail every retry)."""
        try:
            if not isinstance(landing_conf, Mapping):
                raise RunConfError(f"landing_conf must be the run's conf (a mapping), got {landing_conf!r}")
            return landing_series(landing_conf)
        except RunConfError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _from_pacs(self, workspace: RunWorkspace, wanted: list[Mapping[str, str]]) -> list[dict[str, str]]:
        method = self.method.lower()
        if method not in RETRIEVE_METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(RETRIEVE_METHODS)}")
        hook = self.hook
        pairs: list[tuple[str, str]] = []
        for item in wanted:
            study = validate_uid(item["study_instance_uid"], "StudyInstanceUID")
            if item.get("series_instance_uid"):
                pairs.append((study, validate_uid(item["series_instance_uid"], "SeriesInstanceUID")))
            else:
                found = hook.find("series", {"StudyInstanceUID": study}, ["SeriesInstanceUID"])
                if not found:
                    raise PacsError(f"study {study} has no series in PACS {hook.dimse_peer}")
                pairs += [
                    (study, validate_uid(str(ds.SeriesInstanceUID), "SeriesInstanceUID")) for ds in found
                ]
        pairs = list(dict.fromkeys(pairs))

        def fetch(pair: tuple[str, str]) -> dict[str, str]:
            study, series_uid = pair
            dest = workspace.step_dir(series_uid, "dicom")
            marker = dest / COMPLETE_MARKER
            if marker.exists():
                log.info("series %s already in %s (re-run): not fetched again", series_uid, dest)
            else:
                result = hook.retrieve_series(study, series_uid, dest, method=method)
                marker.write_text(json.dumps({"method": method, "instances": len(result.files)}))
                log.info("series %s: %d instances by %s into %s", series_uid, len(result.files), method, dest)
            return {"study_instance_uid": study, "series_instance_uid": series_uid, "series_dir": str(dest)}

        workers = 1 if method == "c-move" else max(1, min(self.max_workers, len(pairs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-receive") as pool:
            return list(pool.map(fetch, pairs))
