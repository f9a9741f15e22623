"""``SegmentationEvaluationOperator``: overlap and surface-distance metrics of a test against a reference.

Thin: it calls :func:`airflow_provider_kaapana.core.quant.evaluation.segmentation_evaluation`, writes the
JSON (into ``output_dir`` or the run workspace) and returns its path and the Dice per segment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.params import as_mapping, as_native
from airflow_provider_kaapana.core.workspace import DEFAULT_WORKSPACE_BASE
from airflow_provider_kaapana.operators.base import KaapanaBaseOperator

EVALUATION_FILE_NAME = "evaluation.json"


def _received(value: Any) -> dict[str, Any]:
    """A plain path as ``{"path"}``, a receive step's XCom (one series, or a list of one) as it is."""
    value = as_native(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, Mapping):
        if not value.get("series_dir"):
            raise ValueError(f"no series_dir in {value!r}")
        return dict(value)
    if not value:
        raise ValueError("no segmentation given")
    return {"path": str(value)}


class SegmentationEvaluationOperator(KaapanaBaseOperator):
    """Compare a test segmentation with a reference, per segment number.

    :param reference: reference DICOM SEG or NIfTI label map, or the receive step's XCom of a SEG series
        (``{"series_dir", "series_instance_uid", ...}``: the one SEG in that folder).
    :param test: test DICOM SEG or NIfTI label map, or a receive XCom likewise; with an XCom the result
        goes to the workspace folder of the *test* series (several tests of one source never collide).
    :param source: the receive step's XCom ``{"series_dir", "series_instance_uid"}``.
    :param source_dir: the source series folder (overrides ``source``; required for SEGs).
    :param tolerance_mm: the surface Dice tolerance (templated).
    :param label_config: names a label map's values.
    :param output_dir: where ``evaluation.json`` goes; default the run workspace's ``evaluation`` step
        folder of the test series (a received test) or else of the source series (a source is then
        required).

    Returns ``{"evaluation_path", "reference_series_instance_uid", "test_series_instance_uid",
    "source_series_instance_uid", "segments": [{segment_number, label, dice}]}`` (UIDs ``None`` where an
    input was a plain path).
    """

    template_fields: Sequence[str] = (
        "reference",
        "test",
        "source",
        "source_dir",
        "tolerance_mm",
        "label_config",
        "output_dir",
        "workspace_base",
    )
    ui_color = "#d4e8f5"

    def __init__(
        self,
        *,
        reference: Mapping[str, Any] | str,
        test: Mapping[str, Any] | str,
        source: Mapping[str, Any] | str | None = None,
        source_dir: str | None = None,
        tolerance_mm: float | str = 1.0,
        label_config: str | None = None,
        output_dir: str | None = None,
        workspace_base: str = DEFAULT_WORKSPACE_BASE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.test = test
        self.source = source
        self.source_dir = source_dir
        self.tolerance_mm = tolerance_mm
        self.label_config = label_config
        self.output_dir = output_dir
        self.workspace_base = workspace_base

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_kaapana.core.files import write_atomic
        from airflow_provider_kaapana.core.quant.evaluation import segmentation_evaluation
        from airflow_provider_kaapana.core.quant.inputs import segmentation_file
        from airflow_provider_kaapana.core.seg.export import source_series_instance_uid

        source = as_mapping(self.source, "source")
        source_dir = self.source_dir or source.get("series_dir") or None
        reference, test = (_received(v) for v in (self.reference, self.test))
        document = segmentation_evaluation(
            segmentation_file(reference.get("series_dir") or reference["path"]),
            segmentation_file(test.get("series_dir") or test["path"]),
            series_dir=source_dir,
            tolerance_mm=float(self.tolerance_mm),
            label_config=self.label_config,
        )
        source_uid = source.get("series_instance_uid") or (
            source_series_instance_uid(source_dir) if source_dir else None
        )
        if self.output_dir:
            out_dir = Path(self.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
        elif test.get("series_instance_uid") or source_uid:
            out_dir = self.run_workspace(context).step_dir(
                test.get("series_instance_uid") or source_uid, "evaluation"
            )
        else:
            raise ValueError(f"{self.task_id}: pass output_dir or a source series to place the result")
        path = write_atomic(out_dir / EVALUATION_FILE_NAME, [json.dumps(document, indent=2).encode()])
        self.log.info("wrote %s: %d segments", path, len(document["segments"]))
        return {
            "evaluation_path": str(path),
            "reference_series_instance_uid": reference.get("series_instance_uid"),
            "test_series_instance_uid": test.get("series_instance_uid"),
            "source_series_instance_uid": source_uid,
            "segments": [
                {"segment_number": s["segment_number"], "label": s["label"], "dice": s["dice"]}
                for s in document["segments"]
            ],
        }
