"""``NiftiConvertOperator``: received DICOM series → nnU-Net input files ``<case>_<channel>.nii.gz`` + sidecars."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_kaapana.core.dicom.uids import validate_uid
from airflow_provider_kaapana.core.nifti.convert import ConvertedVolume, convert_series
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE, RunWorkspace
from airflow_provider_kaapana.exceptions import InvalidDicomError, KaapanaError

if TYPE_CHECKING:
    import pydicom

SeriesInput = Mapping[str, Any] | str
ChannelSelector = Mapping[str, str] | str


def _as_entry(item: SeriesInput) -> dict[str, Any]:
    if isinstance(item, (str, Path)):
        return {"series_dir": str(item)}
    if not isinstance(item, Mapping) or "series_dir" not in item:
        raise ValueError(f"series entries must be a directory or a dict with 'series_dir', got {item!r}")
    return dict(item)


def _first_header(series_dir: str | Path) -> pydicom.Dataset:
    """The header of the first image-like DICOM file in ``series_dir`` (for UIDs and channel selection)."""
    import pydicom  # imported on use: DAG files import this module at parse time

    for path in sorted(Path(series_dir).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: convert_series reports it with the reason
            continue
        if "SeriesInstanceUID" in ds and "Rows" in ds:
            return ds
    raise InvalidDicomError(f"{series_dir}: no DICOM image file found")


def _matches(selector: ChannelSelector, entry: Mapping[str, Any], header: pydicom.Dataset) -> bool:
    """A string is a regex on SeriesDescription; a mapping is ``{DICOM keyword: regex}``, all must match.

    A keyword is looked up in the input dict first (``series_description`` or the keyword itself), then in
    the first file's header.
    """
    from pydicom.multival import MultiValue

    rules = {"SeriesDescription": selector} if isinstance(selector, str) else dict(selector)
    for keyword, pattern in rules.items():
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", keyword).lower()
        value = entry.get(keyword, entry.get(snake))
        if value is None:
            value = header.get(keyword, "")
        if isinstance(value, (list, tuple, MultiValue)):
            value = "\\".join(str(v) for v in value)
        if not re.fullmatch(str(pattern), str(value)):
            return False
    return True


class NiftiConvertOperator(BaseOperator):
    """Convert received series to NIfTI for nnU-Net, with a geometry sidecar per volume.

    :param series: what the receive operator returns: one ``{"series_instance_uid", "series_dir", ...}``
        dict, a list of them, or plain series directories. Works with ``.partial(...).expand(series=...)``.
    :param output_dir: write every case here (an nnU-Net input folder). Default: the run workspace,
        ``RunWorkspace(workspace_base, dag_id, run_id).step_dir(<series uid>, "nifti")``.
    :param workspace_base: base of the run workspaces (used when ``output_dir`` is not given).
    :param channel_suffix: nnU-Net channel suffix of single-channel cases (``"_0000"``).
    :param channels: several series as channels of one case: ``{"0000": selector, "0001": selector}``; a
        selector is a regex on SeriesDescription or ``{DICOM keyword: regex}``; each must match exactly one
        series. Files are ``<case>_<channel>.nii.gz``; the case id defaults to the StudyInstanceUID.
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
        dag_id = context["dag"].dag_id if "dag" in context else context["dag_run"].dag_id
        return RunWorkspace(Path(self.workspace_base), dag_id, context["run_id"]).step_dir(
            series_uid, "nifti"
        )

    def execute(self, context: Mapping[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        single = isinstance(self.series, (str, Path, Mapping))
        entries = [_as_entry(s) for s in ([self.series] if single else self.series)]  # type: ignore[list-item]
        if self.channels:
            return self._channel_case(entries, context)
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
        uid = entry.get("series_instance_uid") or str(_first_header(entry["series_dir"]).SeriesInstanceUID)
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

    def _channel_case(self, entries: list[dict[str, Any]], context: Mapping[str, Any]) -> dict[str, Any]:
        headers = [_first_header(e["series_dir"]) for e in entries]
        chosen: list[tuple[str, dict[str, Any], pydicom.Dataset]] = []
        for channel, selector in self.channels.items():  # type: ignore[union-attr]
            hits = [(e, h) for e, h in zip(entries, headers) if _matches(selector, e, h)]
            if len(hits) != 1:
                described = [f"{h.get('SeriesDescription', '')!r} ({h.SeriesInstanceUID})" for h in headers]
                raise InvalidDicomError(
                    f"channel {channel} selector {selector!r} matches {len(hits)} series, needs exactly one; "
                    f"series: {', '.join(described)}"
                )
            chosen.append((channel, *hits[0]))
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
