"""``SegmentStatisticsOperator``: per-segment statistics of a SEG or label map on its source series.

Thin: it resolves its inputs (explicit arguments, else the XComs of the SEG export and receive steps),
calls :func:`airflow_provider_kaapana.core.quant.statistics.segment_statistics`, writes the JSON into the
run workspace and returns its path and a short summary per segment. With ``sr`` it also writes the
statistics as a DICOM Measurement Report (:func:`airflow_provider_kaapana.core.quant.sr.measurement_report`),
as ``kaapana stats --sr`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.params import as_mapping, parse_bool
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator
from airflow_provider_kaapana.operators.links import ViewerLink, push_file_viewer_url, viewer_of

STATISTICS_FILE_NAME = "statistics.json"


class SegmentStatisticsOperator(KaapanaBaseOperator):
    """Measure one segmentation (``kaapana.segment-statistics/v1``, see the interfaces page).

    :param segmentation: the SEG export step's XCom ``{"seg_path", "series_instance_uid", ...}`` or the
        predict step's ``{"label_map_path", "labels_path", ...}``; supplies the defaults below.
    :param source: the receive step's XCom ``{"series_dir", ...}``; supplies the default ``source_dir``.
    :param seg: DICOM SEG or NIfTI label map (overrides ``segmentation``).
    :param source_dir: folder with the source series' DICOM files (overrides ``source``).
    :param label_config: names a label map's values (nnU-Net ``dataset.json`` or rich config).
    :param output_dir: where ``statistics.json`` goes; default the run workspace's ``stats`` step folder.
    :param sr: also write ``measurements.dcm``, the TID 1500 Measurement Report referencing the SEG's
        segments (into ``output_dir`` or the workspace's ``sr`` step folder); needs a DICOM SEG.

    Returns ``{"series_instance_uid", "statistics_path", "seg_path", "segments": [...]}`` and, with ``sr``,
    ``sr_path``, ``sr_series_instance_uid`` and ``sr_sop_instance_uid`` (the send step sends ``sr_path``;
    the index step indexes the SEG at ``seg_path`` with the statistics).
    """

    template_fields: Sequence[str] = (
        "segmentation",
        "source",
        "seg",
        "source_dir",
        "label_config",
        "output_dir",
        "sr",
        "workspace_base",
        "pacs_conn_id",
    )
    ui_color = "#d4f5e1"
    operator_extra_links = (ViewerLink(),)

    def __init__(
        self,
        *,
        segmentation: Mapping[str, Any] | str | None = None,
        source: Mapping[str, Any] | str | None = None,
        seg: str | None = None,
        source_dir: str | None = None,
        label_config: str | None = None,
        output_dir: str | None = None,
        sr: bool | str = False,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        pacs_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segmentation = segmentation
        self.source = source
        self.seg = seg
        self.source_dir = source_dir
        self.label_config = label_config
        self.output_dir = output_dir
        self.sr = sr
        self.workspace_base = workspace_base
        self.pacs_conn_id = pacs_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.files import write_atomic
        from airflow_provider_kaapana.core.quant.sr import SR_FILE_NAME, measurement_report
        from airflow_provider_kaapana.core.quant.statistics import segment_statistics

        viewer = viewer_of(self.pacs_conn_id)  # a bad template fails before any work
        segmentation = as_mapping(self.segmentation, "segmentation")
        source = as_mapping(self.source, "source")
        seg = self.seg or segmentation.get("seg_path") or segmentation.get("label_map_path")
        source_dir = self.source_dir or source.get("series_dir") or segmentation.get("series_dir")
        if not seg or not source_dir:
            missing = [n for n, v in (("seg", seg), ("source_dir", source_dir)) if not v]
            raise ValueError(
                f"{self.task_id}: no {', '.join(missing)}: pass them or the export/receive XComs"
            )
        with_sr = parse_bool(self.sr, "sr", default=False)
        label_config = self.label_config or segmentation.get("labels_path")
        document = segment_statistics(source_dir, seg, label_config=label_config)
        series_uid = document["source"]["image_series_instance_uid"]
        if self.output_dir:
            out_dir = sr_dir = Path(self.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
        else:
            workspace = self.run_workspace(context)
            out_dir = workspace.step_dir(series_uid, "stats")
            sr_dir = workspace.step_dir(series_uid, "sr") if with_sr else out_dir
        path = write_atomic(out_dir / STATISTICS_FILE_NAME, [json.dumps(document, indent=2).encode()])
        self.log.info("wrote %s: %d segments", path, len(document["segments"]))
        result: dict[str, Any] = {
            "series_instance_uid": series_uid,
            "statistics_path": str(path),
            "seg_path": str(seg),
            "segments": [
                {k: s[k] for k in ("segment_number", "label", "empty", "volume_ml", "mean")}
                for s in document["segments"]
            ],
        }
        if with_sr:
            report = measurement_report(document, seg, source_dir, sr_dir / SR_FILE_NAME)
            self.log.info(
                "wrote %s: SR %s, %d measurements",
                report.sr_path,
                report.sr_sop_instance_uid,
                report.measurements,
            )
            result.update(
                sr_path=str(report.sr_path),
                sr_series_instance_uid=report.sr_series_instance_uid,
                sr_sop_instance_uid=report.sr_sop_instance_uid,
            )
            push_file_viewer_url(context, viewer, report.sr_path)
        elif viewer is not None and not str(seg).endswith((".nii", ".nii.gz")):
            push_file_viewer_url(context, viewer, seg)
        return result
