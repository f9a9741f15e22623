"""Links into a DICOM viewer: a URL template with ``{study_uid}``, ``{series_uid}`` and ``{sop_uid}``.

The PACS connection's ``viewer_url`` extra holds the template (or a base URL with a named ``viewer``
preset); the send, SEG, SR and index steps fill it with the UIDs they produced, for the task's "Viewer"
link in Airflow and the series document's ``kaapana.viewer_url`` in Dashboards. Values are URL-quoted;
a template naming any other placeholder is refused when it is read, not when a link is clicked.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from urllib.parse import quote

from airflow_provider_kaapana.exceptions import KaapanaError

PLACEHOLDERS = ("study_uid", "series_uid", "sop_uid")

# Path and query after the viewer's base URL, by preset name. Every one is built from DICOM UIDs only.
PRESETS: dict[str, str] = {
    # OHIF v3 (also the Orthanc OHIF plugin at <orthanc>/ohif): the study, by StudyInstanceUID
    "ohif": "/viewer?StudyInstanceUIDs={study_uid}",
    # dcm4chee-arc-light UI (ui2): the series tab, filtered by both UIDs; webApp names the archive's
    # QIDO-RS web application (DCM4CHEE by default) and makes the UI run the query on opening
    "dcm4chee": "/dcm4chee-arc/ui2/en/study/series?StudyInstanceUID={study_uid}"
    "&SeriesInstanceUID={series_uid}&webApp=DCM4CHEE",
    # Orthanc Explorer 2 (<orthanc>/ui): the study list filtered to the study (quoted: exact match),
    # its series expanded
    "orthanc-explorer-2": '/ui/app/#/filtered-studies?StudyInstanceUID="{study_uid}"&expand=series',
    # Orthanc's Stone Web Viewer: the series, within its study (it addresses both by DICOM UID)
    "stone": "/stone-webviewer/index.html?study={study_uid}&series={series_uid}",
}
# Orthanc's legacy explorer (app/explorer.html#series?uuid=...) addresses resources by Orthanc ids, SHA-1
# hashes that include the PatientID: a link to it cannot be built from UIDs, so there is no preset.


class ViewerUrlError(KaapanaError, ValueError):
    """A viewer URL template that cannot be used (unknown placeholder, unknown preset, bad syntax)."""


@dataclass(frozen=True)
class ViewerTemplate:
    """A checked viewer URL template; :meth:`url` fills it with URL-quoted UIDs."""

    template: str

    def __post_init__(self) -> None:
        names = _placeholders(self.template)
        unknown = sorted(names - set(PLACEHOLDERS))
        if unknown:
            raise ViewerUrlError(
                f"viewer URL template {self.template!r}: unknown placeholder(s) "
                f"{', '.join('{' + n + '}' for n in unknown)}; use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        if not names:
            raise ViewerUrlError(
                f"viewer URL template {self.template!r} names no UID: add {{study_uid}} (and {{series_uid}}), "
                f"or give a base URL with a viewer preset ({', '.join(PRESETS)})"
            )
        if not self.template.lower().startswith(("http://", "https://")):
            raise ViewerUrlError(f"viewer URL template {self.template!r} is not an http(s) URL")

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_placeholders(self.template))

    def url(
        self, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None
    ) -> str:
        """The viewer's URL for these UIDs; :class:`ViewerUrlError` when the template needs one not given."""
        values = {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid}
        missing = sorted(name for name in self.placeholders if not values[name])
        if missing:
            raise ViewerUrlError(f"viewer URL template {self.template!r} needs {', '.join(missing)}")
        return self.template.format(**{k: quote(str(v or ""), safe="") for k, v in values.items()})

    def url_or_none(
        self, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None
    ) -> str | None:
        """:meth:`url`, or None when a UID the template needs is not known."""
        try:
            return self.url(study_uid, series_uid, sop_uid)
        except ViewerUrlError:
            return None


def _placeholders(template: str) -> set[str]:
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:  # a lone "{" or "}"
        raise ViewerUrlError(
            f"viewer URL template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from exc
    for name, spec, conv in fields:
        if spec or conv:
            raise ViewerUrlError(
                f"viewer URL template {template!r}: {{{name}}} takes no format spec or conversion"
            )
    return {name for name, _, _ in fields}


def viewer_template(viewer_url: str | None, preset: str | None = None) -> ViewerTemplate | None:
    """The template of a PACS connection's ``viewer_url`` (and ``viewer`` preset) extras; None when unset.

    With a preset (``ohif``, ``dcm4chee``, ``orthanc-explorer-2``, ``stone``), ``viewer_url`` is the viewer's
    base URL (``https://pacs.example.org:8042``) and the preset's path and query are appended; without
    one it is the whole template (``https://ohif.example.org/viewer?StudyInstanceUIDs={study_uid}``).
    """
    base = (viewer_url or "").strip()
    name = (preset or "").strip().lower()
    if not name or name == "custom":
        return ViewerTemplate(base) if base else None
    if name not in PRESETS:
        raise ViewerUrlError(f"viewer preset {preset!r} is not one of {', '.join(PRESETS)} (or custom)")
    if not base:
        raise ViewerUrlError(f"viewer preset {name!r} needs the viewer's base URL in viewer_url")
    if _placeholders(base):
        raise ViewerUrlError(
            f"viewer_url {base!r} is a template: with the preset {name!r} give only the base URL "
            "(or set the preset to custom)"
        )
    return ViewerTemplate(base.rstrip("/") + PRESETS[name])
