"""``DicomDeidentifyOperator``: DICOM files -> de-identified copies under PS3.15 Table E.1-1 (the ``kaapana deid`` core)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.deid.files import deidentify_folder
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
from airflow_provider_kaapana.core.deid.safe_private import parse_safe_private, read_safe_private
from airflow_provider_kaapana.core.params import as_native, parse_bool
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import KaapanaError
from airflow_provider_kaapana.hooks import deid as deid_hook
from airflow_provider_kaapana.hooks.deid import DEFAULT_KEY_CONN_ID
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator


class DicomDeidentifyOperator(KaapanaBaseOperator):
    """De-identify DICOM files with the site key, one output file per input instance.

    :param input_dir: folder (searched recursively) or file; a receive operator's ``{"series_dir"}``
        dict works too.
    :param options: Table E.1-1 option names (``retain-longitudinal-modified-dates``,
        ``clean-descriptors``...), see :class:`~airflow_provider_kaapana.core.deid.profile.Option`.
    :param key_conn_id: Airflow connection whose *password* (or extra ``key``) is the site key (at least
        32 bytes); it comes from the secret backend, is read at run time and never logged
        (:mod:`~airflow_provider_kaapana.hooks.deid`, shared with ``kaapana listen --deid-key-conn``).
    :param safe_private: with the ``retain-safe-private`` option, the private attributes to keep: a list
        of ``{"creator", "group", "element"}`` dicts or the path of a JSON file holding one
        (:func:`~airflow_provider_kaapana.core.deid.safe_private.parse_safe_private`); default: PS3.15
        Table E.3.10-1.
    :param output_dir: default: the run workspace's ``deid`` step of the input series.
    :param quarantine_dir: where refused originals go (they hold PHI; default: not copied).
    :param allow_burned_in_annotation: write images that may show burned-in text (pixels unchanged).
    :param reid_map_dir: also write a sealed re-identification map there (keep it on the site); the
        public key it is sealed to is ``reid_public_key`` in the extras of ``key_conn_id``.

    Returns ``{"output_dir", "written", "quarantined", "failed"}``. Fails when nothing was written.
    """

    template_fields: Sequence[str] = (
        "input_dir",
        "options",
        "safe_private",
        "output_dir",
        "quarantine_dir",
        "reid_map_dir",
        "workspace_base",
    )
    ui_color = "#f3d6d6"

    def __init__(
        self,
        *,
        input_dir: str | Mapping[str, Any],
        options: Sequence[str] = (),
        key_conn_id: str = DEFAULT_KEY_CONN_ID,
        safe_private: str | Sequence[Mapping[str, Any]] | None = None,
        output_dir: str | None = None,
        quarantine_dir: str | None = None,
        allow_burned_in_annotation: bool | str = False,
        reid_map_dir: str | None = None,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dir = input_dir
        self.options = options
        self.key_conn_id = key_conn_id
        self.safe_private = safe_private
        self.output_dir = output_dir
        self.quarantine_dir = quarantine_dir
        self.allow_burned_in_annotation = allow_burned_in_annotation
        self.reid_map_dir = reid_map_dir
        self.workspace_base = workspace_base

    def site_key(self) -> bytes:
        """The key: the password of ``key_conn_id`` (read by the hook; never logged)."""
        return deid_hook.site_key(self.key_conn_id)

    def safe_private_list(self) -> frozenset[tuple[str, int, int]]:
        """``safe_private`` as ``(creator, group, element byte)`` (empty: none given)."""
        safe = as_native(self.safe_private)
        if not safe:
            return frozenset()
        if isinstance(safe, str):
            return read_safe_private(safe)
        return parse_safe_private(safe, what=f"{self.task_id} safe_private")

    def execute(self, context: Mapping[str, Any]) -> dict[str, Any]:
        source = as_native(self.input_dir)
        series_uid = None
        if isinstance(source, Mapping):
            series_uid = source.get("series_instance_uid")
            source = source["series_dir"]
        options = as_native(self.options) or []
        profile = DeidentificationProfile.from_names(
            [options] if isinstance(options, str) else list(options),
            allow_burned_in_annotation=parse_bool(self.allow_burned_in_annotation),
            safe_private=self.safe_private_list(),
        )
        if self.output_dir:
            out = Path(self.output_dir)
        elif series_uid:
            out = self.run_workspace(context).step_dir(series_uid, "deid")
        else:
            raise KaapanaError("give output_dir, or an input dict that names its series_instance_uid")
        public = None
        if self.reid_map_dir:
            public = deid_hook.reid_public_key(self.key_conn_id)
            if not public:
                raise KaapanaError(
                    f"reid_map_dir needs reid_public_key in the extras of connection {self.key_conn_id!r}"
                )
        result = deidentify_folder(
            source,
            out,
            profile,
            self.site_key(),
            quarantine_dir=self.quarantine_dir,
            reid_map_dir=self.reid_map_dir or None,
            reid_public_key=public,
        )
        self.log.info(
            "%d written to %s, %d quarantined, %d unreadable",
            len(result.written),
            out,
            len(result.quarantined),
            len(result.failed),
        )
        for path, reason in {**result.quarantined, **result.failed}.items():
            self.log.warning("%s: %s", path, reason)
        if not result.written:
            raise KaapanaError(f"{source}: nothing de-identified ({len(result.quarantined)} quarantined)")
        return {"output_dir": str(out), **result.as_dict()}
