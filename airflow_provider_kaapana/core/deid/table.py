"""PS3.15 Table E.1-1 as generated data: the action of every listed attribute under each option."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

TABLE_FILE = "ps3.15_table_e1-1.json"

# the option columns of Table E.1-1, named as in the generated data file
OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)

# masked rows of the table: curves (50xx,xxxx), overlay data and comments (60xx,3000/4000)
CURVE_MASK = "50XXXXXX"
OVERLAY_DATA_MASK = "60XX3000"
OVERLAY_COMMENTS_MASK = "60XX4000"
PRIVATE_ROW = "private"

# A row the 2020 source gives no Retain UIDs action although every other UID row has K there: (0040,A124)
# UID, the value of UIDREF content items, which reference other instances' UIDs (TID 1500's Source Series
# for Segmentation names the image series). Mapped while the series UID is kept, the reference would
# break; under Retain UIDs it is kept like every UID.
RETAIN_UIDS_KEEPS_ALSO = frozenset({"0040A124"})


@cache
def load_table() -> dict[str, Any]:
    """The generated table document: ``edition``, ``source`` and ``attributes`` (one dict per row)."""
    data = resources.files("airflow_provider_kaapana").joinpath("data", TABLE_FILE).read_text()
    return json.loads(data)


def edition() -> str:
    """The edition of PS3.15 the table was generated from, as recorded in the data file."""
    return str(load_table()["edition"])


def resolve_actions(options: frozenset[str]) -> dict[str, str]:
    """Row tag (hex, or a mask) -> action code under the basic profile plus ``options``.

    Where options disagree on a row, retaining (K) wins over cleaning (C), and either over the basic
    profile's code: an option is chosen to keep information, so the most keeping one applies.
    """
    unknown = options - set(OPTION_COLUMNS)
    if unknown:
        raise ValueError(f"unknown Table E.1-1 option column(s): {sorted(unknown)}")
    actions: dict[str, str] = {}
    for row in load_table()["attributes"]:
        chosen = row["basic"]
        picked = [row[col] for col in OPTION_COLUMNS if col in options and col in row]
        if row["tag"] in RETAIN_UIDS_KEEPS_ALSO and "retain_uids" in options:
            picked.append("K")
        if "K" in picked:
            chosen = "K"
        elif "C" in picked:
            chosen = "C"
        elif picked:
            chosen = picked[0]
        actions[row["tag"]] = chosen
    return actions
