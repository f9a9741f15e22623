"""The index template for series documents, generated from pydicom's DICOM data dictionary.

Every DICOM keyword is typed from its VR. A template that lists all ~5,000 keywords as explicit
``properties`` works (osmem accepts it) but makes every index carry thousands of empty fields and
needs ``index.mapping.total_fields.limit`` raised far beyond the 1,000 default. So by default the
template has two parts (``explicit="core"``):

* explicit ``properties`` for the attributes that queries, cohorts and dashboards rely on (patient,
  study, series, equipment, image geometry) and for every derived ``kaapana.*`` field, so these exist
  and are typed even in an empty index;
* ``dynamic_templates`` that type every other keyword when it first occurs, at any depth (inside
  sequence items too), so the mapping only grows with what was really indexed: the DA, DT and PN
  keywords of the dictionary are listed by one regular expression per type (dates, date-times,
  person names); numbers follow their JSON type (the document builder writes floats for DS/FL/FD and
  integers for IS/SL/SS/UL/US); every other string is an exact keyword with a ``.text`` subfield.
  (Listing all ~1,800 string keywords by regex as well works, but osmem re-evaluates the regexes on
  every new field and took seconds per mapping update; plain keyword+text is as useful.)

``explicit="all"`` lists every non-retired keyword as a property instead (for servers where dynamic
mapping is disabled). Date and numeric detection are off: nothing is guessed from values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydicom.datadict import DicomDictionary, RepeatersDictionary

from airflow_provider_kaapana.core.index import DEFAULT_INDEX
from airflow_provider_kaapana.core.index.document import BINARY_VRS, DEFAULT_PRIVATE_KEY, SEGMENT_NUMBER_KEYS

TEMPLATE_VERSION = 4  # 3: kaapana.segments (nested per-segment statistics); 4: viewer_url, thumbnail

_KEYWORD = {"type": "keyword", "ignore_above": 1024}
_TEXTUAL_KEYWORD = {"type": "keyword", "ignore_above": 2048, "fields": {"text": {"type": "text"}}}

# field type name -> mapping; the VR -> field type table follows
FIELD_MAPPINGS: dict[str, dict[str, Any]] = {
    "date": {"type": "date", "format": "yyyy-MM-dd"},
    "datetime": {"type": "date", "format": "strict_date_optional_time"},
    # DICOM TM has no date part; values are normalised to "HH:MM:SS[.ffffff]", which sorts and
    # range-queries correctly as a keyword.
    "time": {"type": "keyword", "ignore_above": 32},
    "double": {"type": "double"},
    "long": {"type": "long"},
    "person_name": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
    "keyword": _KEYWORD,
    "text_keyword": _TEXTUAL_KEYWORD,
    "object": {"type": "object"},
}

VR_FIELD_TYPES: dict[str, str] = {
    "DA": "date",
    "DT": "datetime",
    "TM": "time",
    "DS": "double",
    "FL": "double",
    "FD": "double",
    "IS": "long",
    "SL": "long",
    "SS": "long",
    "UL": "long",
    "US": "long",
    "SV": "long",
    "UV": "long",
    "US or SS": "long",
    "PN": "person_name",
    "CS": "keyword",
    "UI": "keyword",
    "AE": "keyword",
    "AS": "keyword",
    "AT": "keyword",
    "UR": "keyword",
    "LO": "text_keyword",
    "SH": "text_keyword",
    "ST": "text_keyword",
    "LT": "text_keyword",
    "UT": "text_keyword",
    "UC": "text_keyword",
    "SQ": "object",
}

# Field types whose keywords are listed (by regex) in dynamic templates; all other field types
# follow from the JSON value type (numbers) or are plain keywords (strings).
REGEX_FIELD_TYPES = frozenset({"date", "datetime", "person_name"})

# Attributes mapped explicitly even by the default "core" template.
CORE_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "SeriesInstanceUID",
    "SeriesDate", "SeriesTime", "SeriesNumber", "SeriesDescription", "Modality", "BodyPartExamined",
    "ProtocolName", "Laterality", "PatientPosition", "FrameOfReferenceUID", "Manufacturer",
    "ManufacturerModelName", "InstitutionName", "StationName", "DeviceSerialNumber",
    "SoftwareVersions", "SOPClassUID", "SOPInstanceUID", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceNumber", "ImageType", "Rows",
    "Columns", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient",
    "ImageOrientationPatient", "NumberOfFrames", "MagneticFieldStrength", "KVP",
    "ContrastBolusAgent", "ScanningSequence", "SequenceName", "RepetitionTime", "EchoTime",
    "SegmentSequence", "StructureSetROISequence",
)  # fmt: skip


def keyword_field_types(include_retired: bool = True) -> dict[str, str]:
    """``{keyword: field type}`` for every dictionary keyword whose values we index."""
    out: dict[str, str] = {}
    for entries in (DicomDictionary, RepeatersDictionary):
        for vr, _vm, _name, retired, keyword in entries.values():
            if not keyword or vr in BINARY_VRS or (retired and not include_retired):
                continue
            field_type = VR_FIELD_TYPES.get(vr)
            if field_type is None:
                # composite VRs such as "OB or OW" carry binary data; "US or SS" handled above
                continue
            out.setdefault(keyword, field_type)
    return out


def _segments_mapping() -> dict[str, Any]:
    """``kaapana.segments``: nested, so label and volume of the *same* segment can be asked together."""
    double, long_, keyword = {"type": "double"}, {"type": "long"}, _KEYWORD
    properties: dict[str, Any] = {
        "segment_number": long_,
        "label": {"type": "keyword", "ignore_above": 256, "fields": {"text": {"type": "text"}}},
        "code": {"properties": {"scheme": keyword, "value": keyword, "meaning": _TEXTUAL_KEYWORD}},
        "empty": {"type": "boolean"},
        "voxel_count": long_,
        "centroid_lps_mm": double,
        "intensity_unit": keyword,
        "image_series_instance_uid": keyword,
    }
    properties.update({key: double for key in SEGMENT_NUMBER_KEYS})
    return {"type": "nested", "properties": properties}


def _kaapana_properties() -> dict[str, Any]:
    long_, double, keyword, boolean = {"type": "long"}, {"type": "double"}, _KEYWORD, {"type": "boolean"}
    date = FIELD_MAPPINGS["datetime"]
    return {
        "properties": {
            "received_at": date,
            "indexed_at": date,
            "study_datetime": date,
            "instance_count": long_,
            "instance_number": {
                "properties": {
                    "min": long_,
                    "max": long_,
                    "missing": long_,
                    "missing_count": long_,
                    "missing_value_count": long_,
                    "duplicate_count": long_,
                    "complete": boolean,
                }
            },
            "slice_spacing": {
                "properties": {
                    "positions": long_,
                    "duplicate_positions": long_,
                    "min": double,
                    "max": double,
                    "mean": double,
                    "extent": double,
                    "uniform": boolean,
                    "mixed_orientation": boolean,
                }
            },
            "acquisition": {"properties": {"start": date, "end": date}},
            "sop_class_uids": keyword,
            # per-instance facts for merging partial arrivals: stored, never indexed
            "instances": {"type": "object", "enabled": False},
            "orientation": double,
            "merged_arrivals": long_,
            "transfer_syntax_uids": keyword,
            "varying_keywords": keyword,
            "modality": keyword,
            "patient_age_years": double,
            "segment_labels": {
                "type": "keyword",
                "ignore_above": 256,
                "fields": {"text": {"type": "text"}},
            },
            "segments": _segments_mapping(),
            "source": {"type": "object", "dynamic": True},
            "source_aes": keyword,
            "location": {"type": "object", "dynamic": True},
            # the series in the PACS's viewer: shown (a link in Dashboards), aggregatable, never searched
            "viewer_url": {"type": "keyword", "index": False},
            # a PNG data URL (up to ~30 kB) and what it shows: kept in _source for display only
            "thumbnail": {"type": "keyword", "index": False, "doc_values": False},
            "thumbnail_of": {"type": "object", "enabled": False},
            # raw text of malformed values: always keyword, never typed
            "invalid": {"type": "object", "dynamic": True},
            "problems": {"type": "text"},
            "problem_count": long_,
        }
    }


def build_index_template(
    index_patterns: str | list[str] = f"{DEFAULT_INDEX}*",
    *,
    explicit: Literal["core", "all"] = "core",
    private_key: str = DEFAULT_PRIVATE_KEY,
    priority: int = 200,
    number_of_shards: int = 1,
    number_of_replicas: int | None = None,
) -> dict[str, Any]:
    """The body of ``PUT _index_template/<name>`` for series documents.

    ``explicit="core"`` (default): core attributes as properties + dictionary-generated dynamic
    templates; ``explicit="all"``: every non-retired keyword as a property (plus the same dynamic
    templates for retired keywords and sequence items).
    """
    if explicit not in ("core", "all"):
        raise ValueError(f"explicit must be 'core' or 'all', not {explicit!r}")
    types = keyword_field_types()
    by_type: dict[str, list[str]] = {}
    for keyword, field_type in sorted(types.items()):
        if field_type != "object":
            by_type.setdefault(field_type, []).append(keyword)

    dynamic_templates: list[dict[str, Any]] = [
        # private/unknown tags keyed by tag: text values, never typed by guess
        {"kaapana_private": {"path_match": f"*{private_key}.*", "mapping": dict(_KEYWORD)}},
        {"kaapana_invalid": {"path_match": "kaapana.invalid.*", "mapping": dict(_KEYWORD)}},
    ]
    for field_type, keywords in sorted(by_type.items()):
        if field_type not in REGEX_FIELD_TYPES:
            continue
        dynamic_templates.append(
            {
                f"dicom_{field_type}": {
                    "match_pattern": "regex",
                    "match": "^(" + "|".join(keywords) + ")$",
                    "mapping": FIELD_MAPPINGS[field_type],
                }
            }
        )
    # numbers are typed by their JSON type: the builder writes floats for DS/FL/FD and integers for
    # IS/SL/SS/UL/US, so no name list is needed (and none is matched by regex: cheaper mapping updates)
    dynamic_templates.append(
        {"dicom_double": {"match_mapping_type": "double", "mapping": {"type": "double"}}}
    )
    dynamic_templates.append({"dicom_long": {"match_mapping_type": "long", "mapping": {"type": "long"}}})
    # every other string (CS/UI/LO/SH/ST/LT/UT/TM..., or a keyword newer than this pydicom): exact
    # keyword plus a word-searchable ``.text`` subfield
    dynamic_templates.append(
        {"other_strings": {"match_mapping_type": "string", "mapping": dict(_TEXTUAL_KEYWORD)}}
    )

    if explicit == "all":
        non_retired = keyword_field_types(include_retired=False)
        selected = sorted(non_retired)
    else:
        selected = [kw for kw in CORE_KEYWORDS if kw in types]
    properties: dict[str, Any] = {kw: FIELD_MAPPINGS[types[kw]] for kw in selected}
    properties["kaapana"] = _kaapana_properties()
    properties[private_key] = {"type": "object", "dynamic": True}

    settings: dict[str, Any] = {
        "index.number_of_shards": number_of_shards,
        "index.mapping.total_fields.limit": 20000 if explicit == "all" else 5000,
    }
    if number_of_replicas is not None:
        settings["index.number_of_replicas"] = number_of_replicas
    patterns = [index_patterns] if isinstance(index_patterns, str) else list(index_patterns)
    return {
        "index_patterns": patterns,
        "priority": priority,
        "version": TEMPLATE_VERSION,
        "_meta": {"managed_by": "airflow-provider-kaapana", "template_version": TEMPLATE_VERSION},
        "template": {
            "settings": settings,
            "mappings": {
                "date_detection": False,
                "numeric_detection": False,
                "dynamic_templates": dynamic_templates,
                "properties": properties,
            },
        },
    }
