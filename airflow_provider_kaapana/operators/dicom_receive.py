"""``DicomReceiveOperator``: put a run's DICOM input into its workspace.

From the listener's landing zone (runs triggered by ``kaapana listen``: pass the run's conf) or from the
PACS by Study/Series Instance UID via C-GET, C-MOVE or WADO-RS. Writes
``RunWorkspace(base, dag_id, run_id).step_dir(series_uid, "dicom")`` and returns, as XCom, one
``{"study_instance_uid", "series_instance_uid", "series_dir"}`` per series — paths, never data.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.listener.server import read_batch_files
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE, RunWorkspace
from airflow_provider_kaapana.exceptions import PacsError

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".kaapana-received.json"


def as_native(value: Any) -> Any:
    """A templated field rendered to a string (``"{{ dag_run.conf }}"``) back into its Python value."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or text[0] not in "[{":
        return value
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value


def _link_or_copy(src: Path, dst: Path, mode: str) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return  # idempotent re-run
    tmp = dst.with_name(f".{dst.name}.part")
    tmp.unlink(missing_ok=True)
    if mode == "link":
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem: copy
            shutil.copyfile(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def receive_from_landing(conf: Mapping[str, Any], dest_dir: Path, mode: str = "link") -> list[Path]:
    """Bring one listener batch (``conf`` of a listener-triggered run) into ``dest_dir``."""
    files = read_batch_files(dict(conf))
    missing = [f for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(files)} files of series {conf.get('series_instance_uid')} are missing "
            f"from the landing zone, e.g. {missing[0]}"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in files:
        dst = dest_dir / src.name
        _link_or_copy(src, dst, mode)
        out.append(dst)
    return out


def _with_uids(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A conf naming only ``series_dir`` (an ingest run by hand) gets its UIDs from the first file."""
    conf = dict(conf)
    if conf.get("series_instance_uid") and conf.get("study_instance_uid"):
        return conf
    from collections import Counter

    from airflow_provider_kaapana.core.net.send import instance_uids
    from airflow_provider_kaapana.exceptions import InvalidDicomError

    files = read_batch_files(conf)
    if not files:
        raise FileNotFoundError(f"no DICOM file (*.dcm) in {conf['series_dir']}")
    # The folder's series is the one most of its files belong to: an unreadable or stray file that
    # happens to sort first must not decide it (it is set aside later, the rest goes on).
    votes: Counter[tuple[str, str]] = Counter()
    for path in files:
        try:
            uids = instance_uids(path)
        except InvalidDicomError as exc:
            log.warning("%s", exc)
            continue
        votes[(uids.study_instance_uid, uids.series_instance_uid)] += 1
    if not votes:
        raise InvalidDicomError(f"{conf['series_dir']}: none of its {len(files)} files is readable DICOM")
    (study_uid, series_uid), _ = votes.most_common(1)[0]
    conf.setdefault("series_instance_uid", series_uid)
    conf.setdefault("study_instance_uid", study_uid)
    return conf


class DicomReceiveOperator(BaseOperator):
    """Fetch DICOM series into the run workspace (``<base>/<dag>/<run>/batch/<series>/dicom``).

    Give either ``landing_conf`` (the conf of a listener-triggered run: ``"{{ dag_run.conf }}"``; a conf
    with only ``series_dir``, as from a run by hand, gets its UIDs from the files) or ``series``: one or a
    list of ``{"study_instance_uid", "series_instance_uid"}`` (a study UID alone fetches every series of the
    study, found by C-FIND). One series dict in gives one dict out; otherwise a list. Mappable:
    ``DicomReceiveOperator.partial(task_id=..., method="wado-rs").expand(series=[...])``.

    :param method: ``c-get`` (default), ``c-move`` or ``wado-rs`` (PACS source only)
    :param pacs_conn_id: a ``kaapana_pacs`` connection
    :param workspace_base: root of the run workspaces
    :param max_workers: series fetched in parallel (C-MOVE runs one at a time: one receive port)
    :param copy_mode: ``link`` (hard link, falls back to copy) or ``copy`` for landing-zone files
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

    def _workspace(self, context: Any) -> RunWorkspace:
        return RunWorkspace(Path(self.workspace_base), context["dag_run"].dag_id, context["run_id"])

    def execute(self, context: Any) -> list[dict[str, str]] | dict[str, str]:
        workspace = self._workspace(context)
        landing_conf = as_native(self.landing_conf)
        series = as_native(self.series)
        if landing_conf and series:
            raise ValueError("give either landing_conf or series, not both")
        if landing_conf:
            if not isinstance(landing_conf, Mapping) or "series_dir" not in landing_conf:
                raise ValueError(
                    f"landing_conf needs the listener's conf with series_dir, got {landing_conf!r}"
                )
            landing_conf = _with_uids(landing_conf)
            series_uid = validate_uid(landing_conf["series_instance_uid"], "SeriesInstanceUID")
            study_uid = validate_uid(landing_conf["study_instance_uid"], "StudyInstanceUID")
            dest = workspace.step_dir(series_uid, "dicom")
            files = receive_from_landing(landing_conf, dest, self.copy_mode)
            log.info("series %s: %d instances from the landing zone into %s", series_uid, len(files), dest)
            return [
                {"study_instance_uid": study_uid, "series_instance_uid": series_uid, "series_dir": str(dest)}
            ]
        if not series:
            raise ValueError("nothing to receive: give landing_conf or series")
        if isinstance(series, Mapping):
            received = self._from_pacs(workspace, [series])
            # one series in, one dict out (what a mapped chain passes on); a whole study stays a list
            return received[0] if series.get("series_instance_uid") else received
        return self._from_pacs(workspace, list(series))

    def _from_pacs(self, workspace: RunWorkspace, wanted: list[Mapping[str, str]]) -> list[dict[str, str]]:
        from airflow_provider_kaapana.hooks.pacs import RETRIEVE_METHODS, PacsHook

        method = self.method.lower()
        if method not in RETRIEVE_METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(RETRIEVE_METHODS)}")
        hook = PacsHook(self.pacs_conn_id)
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
