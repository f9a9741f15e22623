"""Segment codes: the curated SNOMED CT table, the generic fallback pair, and algorithm families (CID 7162)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from pydicom.sr.coding import Code

from airflow_provider_kaapana.exceptions import KaapanaError


class LabelConfigError(KaapanaError, ValueError):
    """A label config or label map cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class AlgorithmInfo:
    """Algorithm identification written for AUTOMATIC segments.

    ``family`` is a keyword of DICOM CID 7162 (``ArtificialIntelligence``, ``DeformableModels``...).
    """

    name: str = "nnU-Net"
    version: str = "2"
    family: str = "ArtificialIntelligence"

    def family_code(self) -> Code:
        from pydicom.sr.codedict import codes

        try:
            return getattr(codes.cid7162, self.family)
        except AttributeError:
            raise LabelConfigError(
                f"algorithm family {self.family!r} is not a keyword of DICOM CID 7162 "
                f"(e.g. 'ArtificialIntelligence')"
            ) from None


@dataclass(frozen=True)
class SegmentSpec:
    """How one label value of the map is described in the SEG."""

    label_value: int
    name: str
    category: Code
    property_type: Code
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    color_rgb: tuple[int, int, int] | None = None
    coded_from: str = "config"  # "config", "table" or "fallback": where the codes came from


def parse_code(entry: Mapping[str, Any], where: str) -> Code:
    """``{"value", "meaning", "scheme"}`` (scheme defaults to SCT) as a pydicom :class:`Code`; ``where`` names the source."""
    try:
        return Code(
            value=str(entry["value"]),
            scheme_designator=str(entry.get("scheme", entry.get("scheme_designator", "SCT"))),
            meaning=str(entry["meaning"]),
        )
    except (KeyError, TypeError):
        raise LabelConfigError(
            f"{where}: a code needs 'value', 'meaning' and optionally 'scheme' (default SCT), got {entry!r}"
        ) from None


def normalise_structure_name(name: str) -> str:
    """``"Kidney Left"`` / ``"kidney-left"`` -> ``"kidney_left"`` (the table's key style)."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@lru_cache(maxsize=1)
def _structure_table() -> dict[str, Any]:
    text = resources.files("airflow_provider_kaapana").joinpath("data/snomed_structures.json").read_text()
    return json.loads(text)


def fallback_codes() -> tuple[Code, Code]:
    """The documented generic pair for names the table does not know: SCT 85756007 Tissue / Tissue."""
    fb = _structure_table()["fallback"]
    return parse_code(fb["category"], "fallback"), parse_code(fb["type"], "fallback")


def lookup_structure(name: str) -> tuple[Code, Code, Code | None] | None:
    """(category, type, modifier) from the curated SNOMED CT table, or ``None`` for an unknown name."""
    entry = _structure_table()["structures"].get(normalise_structure_name(name))
    if entry is None:
        return None
    modifier = parse_code(entry["modifier"], name) if "modifier" in entry else None
    return parse_code(entry["category"], name), parse_code(entry["type"], name), modifier


def known_structures() -> list[str]:
    """The structure names of the curated table (normalised)."""
    return sorted(_structure_table()["structures"])


def segment_spec_for_name(label_value: int, name: str, **extra: Any) -> SegmentSpec:
    """A segment described from its name alone: the curated table, else the generic fallback."""
    found = lookup_structure(name)
    if found is not None:
        category, property_type, modifier = found
        return SegmentSpec(label_value, name, category, property_type, modifier, coded_from="table", **extra)
    category, property_type = fallback_codes()
    return SegmentSpec(label_value, name, category, property_type, coded_from="fallback", **extra)
