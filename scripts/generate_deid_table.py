"""Generate ``airflow_provider_kaapana/data/ps3.15_table_e1-1.json`` from a machine-readable PS3.15 Table E.1-1.

Source: the PyPI package ``dicom-standard`` 0.1.0 (innolitics), which parses the DICOM Standard's
HTML into JSON; its ``confidentiality_profile_attributes.json`` is Table E.1-1 with every option
column. Run ``pip install dicom-standard==0.1.0`` then ``python scripts/generate_deid_table.py``.
Nothing in the table is typed by hand: this script only renames columns and adds pydicom keywords.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

from pydicom.datadict import dictionary_keyword

SOURCE_PACKAGE = "dicom-standard"
SOURCE_VERSION = "0.1.0"
# dicom-standard 0.1.0 was built on 2020-04-07 from the "current" standard of that day; its wheel's
# JSON files carry that date. The package does not name the edition letter.
EDITION = "DICOM PS3.15 'current' as of 2020-04-07 (parsed by dicom-standard 0.1.0)"

# the package's column names -> the option names of our profile (PS3.15 Table E.1-1 columns)
COLUMNS = {
    "basicProfile": "basic",
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnUIDsOpt": "retain_uids",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnInstIdOpt": "retain_institution_identity",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "cleanDescOpt": "clean_descriptors",
    "cleanStructContOpt": "clean_structured_content",
    "cleanGraphOpt": "clean_graphics",
}

OUT = Path(__file__).resolve().parent.parent / "airflow_provider_kaapana" / "data" / "ps3.15_table_e1-1.json"


def source_path() -> Path:
    dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    if dist.version != SOURCE_VERSION:
        sys.exit(f"need {SOURCE_PACKAGE}=={SOURCE_VERSION}, found {dist.version}")
    for f in dist.files or []:
        if str(f).endswith("confidentiality_profile_attributes.json"):
            return Path(dist.locate_file(f)).resolve()
    sys.exit(f"{SOURCE_PACKAGE} has no confidentiality_profile_attributes.json")


def convert(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        tag = row["tag"]
        if tag.startswith("(GGGG,EEEE)"):
            mask = "private"
        else:
            mask = tag.strip("()").replace(",", "").upper()
        entry: dict = {"tag": mask, "name": row["name"]}
        if mask != "private" and "X" not in mask:
            entry["keyword"] = dictionary_keyword(int(mask, 16)) or None
        for src, dst in COLUMNS.items():
            if src in row:
                entry[dst] = row[src]
        out.append(entry)
    return sorted(out, key=lambda e: e["tag"])


def main() -> int:
    path = source_path()
    rows = json.loads(path.read_text())
    table = {
        "table": "PS3.15 Annex E Table E.1-1 Application Level Confidentiality Profile Attributes",
        "edition": EDITION,
        "source": f"PyPI {SOURCE_PACKAGE}=={SOURCE_VERSION}, standard/confidentiality_profile_attributes.json",
        "generator": "scripts/generate_deid_table.py",
        "attributes": convert(rows),
    }
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{OUT}: {len(table['attributes'])} attributes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
