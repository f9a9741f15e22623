"""``DicomSegExportOperator``: an nnU-Net label map -> DICOM SEG referencing its source series.

Thin: it resolves its inputs (explicit arguments, else the XComs of the predict and receive steps),
calls :func:`airflow_provider_kaapana.core.seg.export.export_seg` and returns a small XCom of paths and UIDs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_provider_kaapana.core.params import as_mapping
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator
from airflow_provider_kaapana.operators.links import ViewerLink, push_file_viewer_url, viewer_of

SEG_FILE_NAME = "seg.dcm"


class DicomSegExportOperator(KaapanaBaseOperator):
    """Write a DICOM SEG for one series.

    :param prediction: the predict step's XCom ``{"series_instance_uid", "label_map_path",
        "labels_path"}`` (an XComArg, a dict or a template); supplies the defaults for ``label_map`` and
        ``label_config``.
    :param source: the receive step's XCom ``{"series_dir", ...}``; supplies the default ``source_dir``.
    :param label_map: NIfTI label map (overrides ``prediction``).
    :param source_dir: folder with the source series' DICOM files (overrides ``source``).
    :param label_config: nnU-Net ``dataset.json`` or rich label config (overrides ``prediction``).
    :param sidecar: NiftiConvert's ``<stem>.json`` of the image the model saw, to cross-check the
        slice -> SOPInstanceUID order (default: ``<label map stem>.json`` when it exists).
    :param output_dir: where ``seg.dcm`` goes; default
        ``RunWorkspace(workspace_base, dag_id, run_id).step_dir(series_instance_uid, "seg")``.
    :param segmentation_type: ``BINARY`` (default), ``FRACTIONAL`` or ``LABELMAP``.
    :param empty_label_policy: ``describe`` (default: empty labels described, no frames) or ``omit``.
    :param model_id: model identity; with ``configuration`` and the source series it fixes the SEG UIDs.
    :param algorithm_name: / ``algorithm_version`` / ``algorithm_family`` — algorithm identification;
        when ``algorithm_name`` is None, the label config's ``algorithm`` entry or nnU-Net 2 is used.
    :param pacs_conn_id: the PACS the SEG is sent to; with a ``viewer_url`` template in that connection
        the task's "Viewer" link opens the SEG's series there (once the send step stored it).

    A label map with no labelled voxel on the source grid ends the task as *skipped* with a
    "no findings" message (downstream send steps are skipped by their trigger rule), not as a failure.
    """

    template_fields: Sequence[str] = (
        "prediction",
        "source",
        "label_map",
        "source_dir",
        "label_config",
        "sidecar",
        "output_dir",
        "workspace_base",
        "model_id",
        "configuration",
        "segmentation_type",
        "empty_label_policy",
        "pacs_conn_id",
    )
    ui_color = "#e8d4f5"
    operator_extra_links = (ViewerLink(),)

    def __init__(
        self,
        *,
        prediction: Mapping[str, Any] | str | None = None,
        source: Mapping[str, Any] | str | None = None,
        label_map: str | None = None,
        source_dir: str | None = None,
        label_config: str | None = None,
        sidecar: str | None = None,
        output_dir: str | None = None,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        segmentation_type: str = "BINARY",
        empty_label_policy: str = "describe",
        model_id: str = "nnunet",
        configuration: str = "default",
        algorithm_name: str | None = None,
        algorithm_version: str = "2",
        algorithm_family: str = "ArtificialIntelligence",
        pacs_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prediction = prediction
        self.source = source
        self.label_map = label_map
        self.source_dir = source_dir
        self.label_config = label_config
        self.sidecar = sidecar
        self.output_dir = output_dir
        self.workspace_base = workspace_base
        self.segmentation_type = segmentation_type
        self.empty_label_policy = empty_label_policy
        self.model_id = model_id
        self.configuration = configuration
        self.algorithm_name = algorithm_name
        self.algorithm_version = algorithm_version
        self.algorithm_family = algorithm_family
        self.pacs_conn_id = pacs_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.seg.export import (
            AlgorithmInfo,
            export_seg,
            source_series_instance_uid,
        )
        from airflow_provider_kaapana.exceptions import NoFindingsError

        viewer = viewer_of(self.pacs_conn_id)  # a bad template fails before any work
        prediction = as_mapping(self.prediction, "prediction")
        source = as_mapping(self.source, "source")
        label_map = self.label_map or prediction.get("label_map_path")
        label_config = self.label_config or prediction.get("labels_path")
        source_dir = self.source_dir or source.get("series_dir") or prediction.get("series_dir")
        missing = [
            name
            for name, value in (
                ("label_map", label_map),
                ("label_config", label_config),
                ("source_dir", source_dir),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"{self.task_id}: no {', '.join(missing)}: pass them explicitly or as the predict/receive XComs"
            )
        expected_uid = prediction.get("series_instance_uid") or source.get("series_instance_uid")
        series_uid = expected_uid or source_series_instance_uid(source_dir)
        if self.output_dir:
            out_dir = Path(self.output_dir)
        else:
            out_dir = self.run_workspace(context).step_dir(series_uid, "seg")
        algorithm = (
            AlgorithmInfo(self.algorithm_name, self.algorithm_version, self.algorithm_family)
            if self.algorithm_name
            else None
        )
        try:
            result = export_seg(
                label_map,
                source_dir,
                label_config,
                out_dir / SEG_FILE_NAME,
                segmentation_type=self.segmentation_type,
                algorithm=algorithm,
                empty_label_policy=self.empty_label_policy,
                model_id=self.model_id,
                configuration=self.configuration,
                expected_series_instance_uid=expected_uid,
                sidecar_path=self.sidecar or prediction.get("sidecar_path") or None,
            )
        except NoFindingsError as exc:
            raise AirflowSkipException(f"no findings, no SEG written: {exc}") from exc
        self.log.info(
            "wrote %s: SEG %s, %d frames, segments %s",
            result.seg_path,
            result.seg_sop_instance_uid,
            result.number_of_frames,
            [s.label for s in result.segments],
        )
        push_file_viewer_url(context, viewer, result.seg_path)
        return {
            "series_instance_uid": result.series_instance_uid,
            "seg_path": str(result.seg_path),
            "seg_series_instance_uid": result.seg_series_instance_uid,
            "seg_sop_instance_uid": result.seg_sop_instance_uid,
            "segments": [s.as_dict() for s in result.segments],
        }
