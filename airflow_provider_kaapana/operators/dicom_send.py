"""``DicomSendOperator``: send DICOM files to a PACS by C-STORE or STOW-RS, checking every instance."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.net.send import send
from airflow_provider_kaapana.core.params import as_native, parse_bool
from airflow_provider_kaapana.hooks.pacs import PacsHook
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator
from airflow_provider_kaapana.operators.links import ViewerLink, push_viewer_url

log = logging.getLogger(__name__)


def _paths_of(value: Any) -> list[str]:
    """Paths from a path, a list of paths, or XCom dicts carrying ``sr_path`` / ``series_dir`` / ``seg_path`` /
    ``path`` (the first present: the statistics step's XCom names its SEG too, but what it adds is the SR)."""
    value = as_native(value)
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, Mapping):
        for key in ("sr_path", "series_dir", "seg_path", "path", "output_dir"):
            if value.get(key):
                return [str(value[key])]
        raise ValueError(f"no sr_path/series_dir/seg_path/path in {value!r}")
    if isinstance(value, Iterable):
        out: list[str] = []
        for item in value:
            out += _paths_of(item)
        return out
    raise ValueError(f"cannot read paths from {value!r}")


class DicomSendOperator(KaapanaBaseOperator):
    """Send files (or the DICOM files under directories: ``*.dcm`` or any Part-10 file; DICOMDIR media by
    their records) to the PACS of ``pacs_conn_id``.

    ``paths`` may be file/directory paths or the XCom of another step (dicts with ``series_dir``).
    Every instance's status is checked; a failure raises :class:`PacsError` listing the files. With
    ``verify`` the PACS is asked afterwards (QIDO-RS, or C-FIND without a DICOMweb URL) whether every
    SOP Instance UID is there. Mappable: ``.partial(...).expand(paths=...)``.

    :param method: ``c-store`` (default) or ``stow-rs``
    :param verify: a boolean or its text (true/false, yes/no, on/off, 1/0); other text fails the task

    The work is :func:`airflow_provider_kaapana.core.net.send.send`, as for ``kaapana send``. With a
    ``viewer_url`` template in the connection, the task's "Viewer" link opens the (first) series sent.
    """

    template_fields: Sequence[str] = ("paths", "method", "pacs_conn_id", "verify")
    ui_color = "#f7e3d7"
    operator_extra_links = (ViewerLink(),)

    def __init__(
        self,
        *,
        paths: Any,
        method: str = "c-store",
        pacs_conn_id: str = "kaapana_pacs_default",
        verify: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.paths = paths
        self.method = method
        self.pacs_conn_id = pacs_conn_id
        self.verify = verify

    def get_hook(self) -> PacsHook:
        return PacsHook(self.pacs_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        method = str(self.method).lower()
        verify = parse_bool(self.verify, "verify", default=False)
        hook = self.hook
        viewer = hook.viewer  # a bad template fails here, before anything is sent
        report = send(  # raises PacsError naming failed files
            _paths_of(self.paths),
            peer=hook.dimse_peer if method == "c-store" else None,
            # verification asks DICOMweb (QIDO-RS) whenever the connection has it, else C-FIND
            dicomweb=hook.dicomweb if method == "stow-rs" or hook.has_dicomweb else None,
            verify=verify,
            method=method,
        )
        log.info("sent %d instances by %s", len(report.results), self.method)
        if report.verified_at:
            log.info("verified %d instances in %d series", len(report.results), len(report.series))
        if report.series:
            study_uid, series_uid = report.series[0]
            push_viewer_url(context, viewer, study_uid, series_uid)
        return {
            "sent": len(report.results),
            "method": self.method,
            "series": [{"study_instance_uid": s, "series_instance_uid": se} for s, se in report.series],
        }
