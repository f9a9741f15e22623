"""``DicomSendOperator``: send DICOM files to a PACS by C-STORE or STOW-RS, checking every instance."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_kaapana.core.net.send import collect_dicom_files, instance_uids, verify_series_stored
from airflow_provider_kaapana.operators.dicom_receive import as_native

log = logging.getLogger(__name__)


def _paths_of(value: Any) -> list[str]:
    """Paths from a path, a list of paths, or XCom dicts carrying ``series_dir`` / ``seg_path`` / ``path``."""
    value = as_native(value)
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    if isinstance(value, Mapping):
        for key in ("series_dir", "seg_path", "path", "output_dir"):
            if value.get(key):
                return [str(value[key])]
        raise ValueError(f"no series_dir/path in {value!r}")
    if isinstance(value, Iterable):
        out: list[str] = []
        for item in value:
            out += _paths_of(item)
        return out
    raise ValueError(f"cannot read paths from {value!r}")


class DicomSendOperator(BaseOperator):
    """Send files (or every ``*.dcm`` under directories) to the PACS of ``pacs_conn_id``.

    ``paths`` may be file/directory paths or the XCom of another step (dicts with ``series_dir``).
    Every instance's status is checked; a failure raises :class:`PacsError` listing the files. With
    ``verify`` the PACS is asked afterwards (QIDO-RS, or C-FIND without a DICOMweb URL) whether every
    SOP Instance UID is there. Mappable: ``.partial(...).expand(paths=...)``.

    :param method: ``c-store`` (default) or ``stow-rs``
    """

    template_fields: Sequence[str] = ("paths", "method", "pacs_conn_id", "verify")
    ui_color = "#f7e3d7"

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

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.hooks.pacs import PacsHook

        files = collect_dicom_files(_paths_of(self.paths))
        uids = [instance_uids(f) for f in files]  # also proves every file is readable before sending
        hook = PacsHook(self.pacs_conn_id)
        results = hook.send(files, method=self.method)  # raises PacsError naming failed files
        log.info("sent %d instances by %s", len(results), self.method)
        groups: dict[tuple[str, str], list[str]] = {}
        for u in uids:
            groups.setdefault((u.study_instance_uid, u.series_instance_uid), []).append(u.sop_instance_uid)
        if self.verify is True or str(self.verify).strip().lower() in ("true", "1", "yes", "on"):
            use_web = hook.has_dicomweb
            for (study, series_uid), sops in groups.items():
                verify_series_stored(
                    study,
                    series_uid,
                    sops,
                    qido=hook.dicomweb if use_web else None,
                    find=None if use_web else hook.find,
                    where=hook.dicomweb.base_url if use_web else str(hook.dimse_peer),
                )
            log.info("verified %d instances in %d series", len(files), len(groups))
        return {
            "sent": len(results),
            "method": self.method,
            "series": [{"study_instance_uid": s, "series_instance_uid": se} for s, se in sorted(groups)],
        }
