"""Building and saving the DICOM SEG object with highdicom: segment descriptions, reproducible UIDs, atomic write."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from airflow_provider_kaapana import __version__
from airflow_provider_kaapana.core.seg.codes import AlgorithmInfo, SegmentSpec

UID_NAMESPACE = "kaapana-dicom-seg"
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (128, 128, 128),
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 255),
)
_CS_UNSAFE = re.compile(r"[^A-Z0-9 _]")


def seg_uids(source_series_instance_uid: str, model_id: str, configuration: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG: the same for the same source, model and configuration."""
    parts = [UID_NAMESPACE, source_series_instance_uid, model_id, configuration]
    return generate_uid(entropy_srcs=[*parts, "series"]), generate_uid(entropy_srcs=[*parts, "instance"])


def content_label(text: str) -> str:
    """``text`` as a ContentLabel (CS: upper case, digits, space, underscore; at most 16 characters)."""
    label = _CS_UNSAFE.sub("_", text.upper())[:16].strip()
    return label or "SEGMENTATION"


def segment_description(number: int, spec: SegmentSpec, algorithm: AlgorithmInfo) -> Any:
    """The highdicom SegmentDescription of segment ``number`` (an AUTOMATIC segment of ``algorithm``)."""
    import highdicom as hd

    rgb = spec.color_rgb or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
    algorithm_identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=algorithm.family_code(), version=algorithm.version
    )
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.name[:64],
        segmented_property_category=spec.category,
        segmented_property_type=spec.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification,
        anatomic_regions=[spec.anatomic_region] if spec.anatomic_region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    if spec.type_modifier is not None:
        modifier = hd.sr.CodedConcept(
            value=spec.type_modifier.value,
            scheme_designator=spec.type_modifier.scheme_designator,
            meaning=spec.type_modifier.meaning,
        )
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            modifier
        ]
    return description


def build_segmentation(
    source_images: Sequence[Dataset],
    pixel_array: np.ndarray,
    specs: Sequence[SegmentSpec],
    *,
    segmentation_type: str,
    algorithm: AlgorithmInfo,
    model_id: str,
    configuration: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    series_description: str | None,
    transfer_syntax_uid: str,
    max_fractional_value: int,
) -> Any:
    """The highdicom Segmentation of ``pixel_array`` (segment numbers, shape (slices, rows, columns) in the
    order of ``source_images``); segment ``n`` is described by ``specs[n - 1]``. Empty frames are omitted."""
    import highdicom as hd

    return hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=pixel_array,
        segmentation_type=segmentation_type,
        segment_descriptions=[
            segment_description(n, spec, algorithm) for n, spec in enumerate(specs, start=1)
        ],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="airflow-provider-kaapana",
        manufacturer_model_name=f"{algorithm.name} {model_id}"[:64],
        software_versions=f"airflow-provider-kaapana {__version__}",
        device_serial_number="0",
        max_fractional_value=max_fractional_value,
        content_label=content_label(model_id),
        content_description=(series_description or f"{algorithm.name} {model_id} {configuration}")[:64],
        series_description=(series_description or f"SEG {algorithm.name} {model_id}")[:64],
        transfer_syntax_uid=transfer_syntax_uid,
        omit_empty_frames=True,
    )


def write_atomically(dataset: Dataset, out_path: Path) -> None:
    """Save ``dataset`` as a Part-10 file at ``out_path``; readers never see a partial file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
