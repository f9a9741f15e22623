"""``measurement_report``: segment statistics as a DICOM TID 1500 Measurement Report (Comprehensive 3D SR).

One TID 1411 volumetric ROI group per segment of the SEG, each referencing its segment (Referenced
Segment) and carrying one TID 1419 measurement per statistic. The concepts and units are listed in
``MEASUREMENTS`` and on the interfaces page; ``read_measurement_report`` reads such a report back into the
statistics' plain keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from airflow_provider_kaapana import __version__
from airflow_provider_kaapana.core.quant.inputs import SEGMENTATION_STORAGES
from airflow_provider_kaapana.exceptions import QuantificationError

SR_FILE_NAME = "measurements.dcm"
UID_NAMESPACE = "kaapana-measurement-report"
SERIES_NUMBER = 902  # the SEG export writes 901; the report of that SEG follows it
ALGORITHM_NAME = "kaapana segment statistics"

_ML = Code("ml", "UCUM", "milliliter")


@dataclass(frozen=True)
class MeasurementConcept:
    """How one statistics key is written: concept name, unit and (intensities) the TID 1419 derivation."""

    key: str
    name: Code | None  # None: the modality's intensity concept (see INTENSITY_CONCEPTS)
    unit: Code | None  # None: the modality's intensity unit
    derivation: Code | None = None


# statistics key -> TID 1419 concept; percentiles 25/75 and voxel_count have no code and stay in the JSON
MEASUREMENTS: tuple[MeasurementConcept, ...] = (
    MeasurementConcept("volume_ml", codes.SCT.Volume, _ML),
    MeasurementConcept("mesh_volume_ml", codes.IBSI.VolumeOfMesh, _ML),
    MeasurementConcept("surface_mm2", codes.IBSI.SurfaceAreaOfMesh, codes.UCUM.SquareMillimeter),
    MeasurementConcept("sphericity", codes.IBSI.Sphericity, codes.UCUM.NoUnits),
    MeasurementConcept("elongation", codes.IBSI.Elongation, codes.UCUM.NoUnits),
    MeasurementConcept("flatness", codes.IBSI.Flatness, codes.UCUM.NoUnits),
    MeasurementConcept("mean", None, None, codes.SCT.Mean),
    MeasurementConcept("sd", None, None, codes.SCT.StandardDeviation),
    MeasurementConcept("min", None, None, codes.SCT.Minimum),
    MeasurementConcept("max", None, None, codes.SCT.Maximum),
    MeasurementConcept("median", None, None, codes.SCT.Median),
    MeasurementConcept("p05", None, None, codes.SCT.FifthPercentile),
    MeasurementConcept("p95", None, None, codes.SCT.NinetyFifthPercentile),
)

# modality -> (concept name, unit) of its rescaled intensities; other modalities get no intensity items
INTENSITY_CONCEPTS: dict[str, tuple[Code, Code]] = {
    "CT": (codes.DCM.AttenuationCoefficient, codes.UCUM.HounsfieldUnit),
    "MR": (codes.DCM.MRSignalIntensity, codes.UCUM.NoUnits),
}
_PROCEDURES: dict[str, Code] = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
}


@dataclass(frozen=True)
class MeasurementReportResult:
    """Where the report went, its UIDs and how many measurements it holds."""

    sr_path: Path
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    segmentation_sop_instance_uid: str
    groups: int
    measurements: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "sr_path": str(self.sr_path),
            "sr_series_instance_uid": self.sr_series_instance_uid,
            "sr_sop_instance_uid": self.sr_sop_instance_uid,
            "segmentation_sop_instance_uid": self.segmentation_sop_instance_uid,
            "groups": self.groups,
            "measurements": self.measurements,
        }


def report_uids(segmentation_sop_instance_uid: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the report: fixed by the SEG, so a re-run replaces it."""
    parts = [UID_NAMESPACE, segmentation_sop_instance_uid]
    return generate_uid(entropy_srcs=[*parts, "series"]), generate_uid(entropy_srcs=[*parts, "instance"])


def _headers(series_dir: Path) -> list[Dataset]:
    out = []
    for path in sorted(p for p in series_dir.rglob("*") if p.is_file()):
        try:
            out.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (pydicom.errors.InvalidDicomError, OSError):
            continue  # not DICOM: the statistics were computed from the same folder, the walker skipped it too
    return out


def _check_inputs(
    statistics: Mapping[str, Any], seg: Dataset, images: Sequence[Dataset], seg_path: Path
) -> None:
    source = statistics.get("source") or {}
    wanted = source.get("segmentation_sop_instance_uid")
    if str(seg.get("SOPClassUID", "")) not in SEGMENTATION_STORAGES:
        raise QuantificationError(f"{seg_path}: not a DICOM SEG (SOP Class {seg.get('SOPClassUID')})")
    if wanted != seg.SOPInstanceUID:
        raise QuantificationError(
            f"{seg_path}: SEG {seg.SOPInstanceUID} is not the segmentation the statistics were measured on "
            f"({wanted})"
        )
    image_uid = source.get("image_series_instance_uid")
    if not images:
        raise QuantificationError(f"no DICOM image of series {image_uid} found for the report's evidence")
    found = {str(ds.SeriesInstanceUID) for ds in images}
    if found != {image_uid}:
        raise QuantificationError(
            f"the source folder holds series {sorted(found)}, the statistics were measured on {image_uid}"
        )


def _segment_codes(seg: Dataset) -> dict[int, tuple[Dataset | None, Dataset | None]]:
    out = {}
    for item in seg.get("SegmentSequence", []):
        category = item.get("SegmentedPropertyCategoryCodeSequence")
        prop = item.get("SegmentedPropertyTypeCodeSequence")
        out[int(item.SegmentNumber)] = (category[0] if category else None, prop[0] if prop else None)
    return out


def _concept(item: Dataset | None) -> Any:
    """The code of a SEG's code item without its modifiers (an SR concept carries none)."""
    import highdicom as hd

    if item is None:
        return None
    return hd.sr.CodedConcept(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def build_measurement_report(
    statistics: Mapping[str, Any],
    seg: Dataset,
    images: Sequence[Dataset],
    *,
    series_number: int = SERIES_NUMBER,
) -> Dataset:
    """The Comprehensive 3D SR of ``statistics`` (``kaapana.segment-statistics/v1``) measured on ``seg``.

    ``images`` are the source series' headers (the evidence). Empty segments are reported with their
    volume 0 and no intensity items; a ``null`` value is never written.
    """
    import highdicom as hd

    modality = str((statistics.get("image") or {}).get("modality") or "")
    intensity = INTENSITY_CONCEPTS.get(modality)
    image_series_uid = str(statistics["source"]["image_series_instance_uid"])
    seg_uid = str(seg.SOPInstanceUID)
    codes_by_number = _segment_codes(seg)
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=__version__)
    groups = []
    for segment in statistics.get("segments") or []:
        number = int(segment["segment_number"])
        if number not in codes_by_number:
            raise QuantificationError(f"SEG {seg_uid} has no segment {number} (statistics name it)")
        category, prop = codes_by_number[number]
        measurements = []
        for concept in MEASUREMENTS:
            value = segment.get(concept.key)
            if value is None:
                continue
            name, unit = concept.name, concept.unit
            if name is None:
                if intensity is None:
                    continue
                name, unit = intensity
            measurements.append(
                hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=concept.derivation)
            )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(entropy_srcs=[UID_NAMESPACE, seg_uid, "segment", str(number)]),
                    identifier=f"segment {number} {segment.get('label') or ''}".strip()[:64],
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=str(seg.SOPClassUID),
                    sop_instance_uid=seg_uid,
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(image_series_uid),
                ),
                finding_type=_concept(prop),
                finding_category=_concept(category),
                algorithm_id=algorithm,
                measurements=measurements,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[UID_NAMESPACE, "device"]),
            name="airflow-provider-kaapana",
            manufacturer_name="airflow-provider-kaapana",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=groups,
    )
    series_uid, sop_uid = report_uids(seg_uid)
    return hd.sr.Comprehensive3DSR(
        evidence=[seg, *images],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="airflow-provider-kaapana",
        is_complete=True,
        series_description="Segment statistics"[:64],
    )


def measurement_report(
    statistics: Mapping[str, Any],
    seg_path: str | Path,
    series_dir: str | Path,
    output_path: str | Path,
) -> MeasurementReportResult:
    """Write the TID 1500 report of ``statistics`` on the SEG at ``seg_path`` to ``output_path`` (atomically).

    Refuses statistics of a label map (no segments to reference), of another SEG, or of another series.
    """
    from airflow_provider_kaapana.core.seg.writer import write_atomically

    seg_path, series_dir, output_path = Path(seg_path), Path(series_dir), Path(output_path)
    if not (statistics.get("source") or {}).get("segmentation_sop_instance_uid"):
        raise QuantificationError(
            f"{seg_path}: the statistics were measured on a label map, not a DICOM SEG: a measurement report "
            "references a SEG's segments, so export the SEG and measure that"
        )
    try:
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise QuantificationError(f"{seg_path}: cannot read the SEG: {exc}") from exc
    images = _headers(series_dir)
    _check_inputs(statistics, seg, images, seg_path)
    dataset = build_measurement_report(statistics, seg, images)
    write_atomically(dataset, output_path)
    [container] = [  # the Imaging Measurements container (DCM 126010) holds the groups
        item for item in dataset.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    groups = list(container.get("ContentSequence", []))
    count = sum(
        1 for group in groups for item in group.get("ContentSequence", []) if item.get("ValueType") == "NUM"
    )
    return MeasurementReportResult(
        sr_path=output_path,
        sr_series_instance_uid=str(dataset.SeriesInstanceUID),
        sr_sop_instance_uid=str(dataset.SOPInstanceUID),
        segmentation_sop_instance_uid=str(seg.SOPInstanceUID),
        groups=len(groups),
        measurements=count,
    )


def read_measurement_report(path: str | Path) -> dict[int, dict[str, float]]:
    """``{segment_number: {statistics key: value}}`` from a report written by :func:`measurement_report`."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    by_name = {(c.name.value, c.name.scheme_designator): c.key for c in MEASUREMENTS if c.name is not None}
    by_derivation = {
        (c.derivation.value, c.derivation.scheme_designator): c.key for c in MEASUREMENTS if c.derivation
    }
    out: dict[int, dict[str, float]] = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        number = int(group.referenced_segment.referenced_segment_numbers[0])  # type: ignore[union-attr]
        values = out.setdefault(number, {})
        for item in group.get_measurements():
            derivation = item.derivation
            if derivation is not None:
                key = by_derivation.get((derivation.value, derivation.scheme_designator))
            else:
                key = by_name.get((item.name.value, item.name.scheme_designator))
            if key is not None:
                values[key] = float(item.value)
    return out
