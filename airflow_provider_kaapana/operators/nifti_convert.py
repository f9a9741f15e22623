"""``NiftiConvertOperator``: received DICOM series → nnU-Net input files ``<case>_<channel>.nii.gz`` + sidecars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.nifti.convert import ConvertedVolume, convert_series
from airflow_provider_kaapana.core.nifti.select import ChannelSelector, first_header, select_channels
from airflow_provider_kaapana.core.params import as_native
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.exceptions import InvalidDicomError, KaapanaError
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator

SeriesInput = Mapping[str, Any] | str


def _as_entry(item: SeriesInput) -> dict[str, Any]:
    if isinstance(item, (str, Path)):
        return {"series_dir": str(item)}
    if not isinstance(item, Mapping) or "series_dir" not in item:
        raise ValueError(f"series entries must be a directory or a dict with 'series_dir', got {item!r}")
    return dict(item)


class NiftiConvertOperator(KaapanaBaseOperator):
    """Convert received series to NIfTI for nnU-Net, with a geometry sidecar per volume.

    :param series: what the receive operator returns: one ``{"series_instance_uid", "series_dir", ...}``
        dict, a list of them, or plain series directories. Works with ``.partial(...).expand(series=...)``.
    :param output_dir: write every case here (an nnU-Net input folder). Default: the run workspace,
        ``RunWorkspace(workspace_base, dag_id, run_id).step_dir(<series uid>, "nifti")``.
    :param workspace_base: base of the run workspaces (used when ``output_dir`` is not given).
    :param channel_suffix: nnU-Net channel suffix of single-channel cases (``"_0000"``).
    :param channels: several series as channels of one case: ``{"0000": selector, "0001": selector}``; a
        selector is a regex on SeriesDescription or ``{DICOM keyword: regex}``; each must match exactly one
        series (:func:`~airflow_provider_kaapana.core.nifti.select.select_channels`). Files are
        ``<case>_<channel>.nii.gz``; the case id defaults to the StudyInstanceUID.
    :param case_id: case id for a single series or a channel set (default: SeriesInstanceUID / StudyInstanceUID).
    :param compress: ``.nii.gz`` (default) or ``.nii``.

    Returns one XCom dict per case, ``{"series_instance_uid", "case_id", "nifti_dir", "nifti_paths",
    "sidecars"}`` (``nifti_paths``/``sidecars`` in channel order); a dict for a single input that gives
    one case, else a list. A series split into several volumes (echoes...) gives a case each,
    ``<case>_<part>``. Re-running overwrites the same files (idempotent).
    """

    template_fields: Sequence[str] = ("series", "output_dir", "workspace_base", "case_id", "channels")
    ui_color = "#cfe8d5"

    def __init__(
        self,
        *,
        series: SeriesInput | Sequence[SeriesInput],
        output_dir: str | None = None,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        channel_suffix: str = "_0000",
        channels: Mapping[str, ChannelSelector] | None = None,
        case_id: str | None = None,
        compress: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.series = series
        self.output_dir = output_dir
        self.workspace_base = workspace_base
        self.channel_suffix = channel_suffix
        self.channels = channels
        self.case_id = case_id
        self.compress = compress

    def _out_dir(self, series_uid: str, context: Mapping[str, Any]) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return self.run_workspace(context).step_dir(series_uid, "nifti")

    def execute(self, context: Mapping[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        series = as_native(self.series)
        single = isinstance(series, (str, Path, Mapping))
        entries = [_as_entry(s) for s in ([series] if single else series)]
        channels = as_native(self.channels)
        if channels:
            return self._channel_case(entries, channels, context)
        if self.case_id and len(entries) > 1:
            raise ValueError("case_id names one case: give one series, or use channels for several")
        cases: list[dict[str, Any]] = []
        failures: list[str] = []
        for entry in entries:
            try:
                cases.extend(self._series_cases(entry, context))
            except KaapanaError as exc:
                if single:
                    raise
                self.log.error(
                    "series %s failed: %s", entry.get("series_instance_uid", entry["series_dir"]), exc
                )
                failures.append(str(exc))
        if failures:
            raise KaapanaError(
                f"{len(failures)} of {len(entries)} series could not be converted (the others were): "
                + " | ".join(failures)
            )
        return cases[0] if single and len(cases) == 1 else cases

    # (no "_convert_<field>" method names: Airflow treats those as setattr converters of that field)
    def _series_cases(self, entry: dict[str, Any], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = entry.get("series_instance_uid") or str(first_header(entry["series_dir"]).SeriesInstanceUID)
        uid = validate_uid(uid, "SeriesInstanceUID")
        case = self.case_id or uid
        out = self._out_dir(uid, context)
        volumes = convert_series(
            entry["series_dir"], out, name=case, suffix=self.channel_suffix, compress=self.compress
        )
        foreign = [v for v in volumes if v.series_instance_uid != uid]
        if foreign:
            for v in volumes:  # written under names that do not follow the case naming: remove them
                v.nifti_path.unlink(missing_ok=True)
                v.sidecar_path.unlink(missing_ok=True)
            raise InvalidDicomError(
                f"{entry['series_dir']}: holds series {foreign[0].series_instance_uid}, expected {uid}"
            )
        for v in volumes:
            self.log.info("series %s -> %s %s", uid, v.nifti_path, v.shape)
        return [
            self._case_dict(uid, "_".join(filter(None, [case, v.split_suffix])), out, [v]) for v in volumes
        ]

    def _channel_case(
        self,
        entries: list[dict[str, Any]],
        channels: Mapping[str, ChannelSelector],
        context: Mapping[str, Any],
    ) -> dict[str, Any]:
        chosen = select_channels(entries, channels)
        first_uid = validate_uid(str(chosen[0][2].SeriesInstanceUID), "SeriesInstanceUID")
        case = self.case_id or validate_uid(str(chosen[0][2].StudyInstanceUID), "StudyInstanceUID")
        out = self._out_dir(first_uid, context)
        volumes: list[ConvertedVolume] = []
        for channel, entry, header in chosen:
            got = convert_series(
                entry["series_dir"], out, name=case, suffix=f"_{channel}", compress=self.compress
            )
            if len(got) != 1:
                for v in got:
                    v.nifti_path.unlink(missing_ok=True)
                    v.sidecar_path.unlink(missing_ok=True)
                raise InvalidDicomError(
                    f"channel {channel}: series {header.SeriesInstanceUID} gives {len(got)} volumes "
                    f"({', '.join(v.split_suffix for v in got)}); a channel must be one volume"
                )
            volumes.extend(got)
        return self._case_dict(first_uid, case, out, volumes)

    @staticmethod
    def _case_dict(uid: str, case: str, out: Path, volumes: list[ConvertedVolume]) -> dict[str, Any]:
        return {
            "series_instance_uid": uid,
            "case_id": case,
            "nifti_dir": str(out),
            "nifti_paths": [str(v.nifti_path) for v in volumes],
            "sidecars": [str(v.sidecar_path) for v in volumes],
        }
