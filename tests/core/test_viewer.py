"""Viewer URL templates: placeholders filled and quoted, bad templates refused, the presets."""

from __future__ import annotations

import pytest

from airflow_provider_kaapana.core.net.viewer import PRESETS, ViewerTemplate, ViewerUrlError, viewer_template

STUDY, SERIES, SOP = (
    "1.2.826.0.1.3680043.8.498.1",
    "1.2.826.0.1.3680043.8.498.2",
    "1.2.826.0.1.3680043.8.498.3",
)


def test_template_fills_every_placeholder():
    template = ViewerTemplate("https://v.example/s/{study_uid}/se/{series_uid}?i={sop_uid}")
    assert template.url(STUDY, SERIES, SOP) == f"https://v.example/s/{STUDY}/se/{SERIES}?i={SOP}"
    assert template.placeholders == {"study_uid", "series_uid", "sop_uid"}


def test_values_are_url_quoted():
    template = ViewerTemplate("https://v.example/viewer?StudyInstanceUIDs={study_uid}")
    # a UID never holds these, but the template must not let a value break out of its parameter
    assert (
        template.url("1.2&x=<y> #z/")
        == "https://v.example/viewer?StudyInstanceUIDs=1.2%26x%3D%3Cy%3E%20%23z%2F"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("https://v.example/{study}", "unknown placeholder(s) {study}"),
        ("https://v.example/{study_uid}/{patient_id}", "unknown placeholder(s) {patient_id}"),
        ("https://v.example/viewer", "names no UID"),
        ("https://v.example/{study_uid", "literal brace"),
        ("https://v.example/{study_uid:>10}", "takes no format spec"),
        ("https://v.example/{study_uid!r}", "takes no format spec"),
        ("javascript:alert({study_uid})", "not an http(s) URL"),
        ("/viewer?StudyInstanceUIDs={study_uid}", "not an http(s) URL"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template, message):
    with pytest.raises(ViewerUrlError, match="viewer") as excinfo:
        ViewerTemplate(template)
    assert message in str(excinfo.value)
    assert template in str(excinfo.value)


def test_a_uid_the_template_needs_but_is_not_known():
    template = ViewerTemplate("https://v.example/{study_uid}/{series_uid}")
    with pytest.raises(ViewerUrlError, match="needs series_uid"):
        template.url(STUDY)
    assert template.url_or_none(STUDY) is None
    assert template.url_or_none(STUDY, SERIES) == f"https://v.example/{STUDY}/{SERIES}"


def test_presets_append_their_path_to_the_base_url():
    assert viewer_template("https://ohif.example/", "ohif").url(STUDY) == (
        f"https://ohif.example/viewer?StudyInstanceUIDs={STUDY}"
    )
    assert viewer_template("http://orthanc:8042", "stone").url(STUDY, SERIES) == (
        f"http://orthanc:8042/stone-webviewer/index.html?study={STUDY}&series={SERIES}"
    )
    assert viewer_template("http://orthanc:8042", "Orthanc-Explorer-2").url(STUDY) == (
        f'http://orthanc:8042/ui/app/#/filtered-studies?StudyInstanceUID="{STUDY}"&expand=series'
    )
    dcm4chee = viewer_template("http://arc:8080", "dcm4chee").url(STUDY, SERIES)
    assert dcm4chee.startswith("http://arc:8080/dcm4chee-arc/ui2/")
    assert f"StudyInstanceUID={STUDY}" in dcm4chee and f"SeriesInstanceUID={SERIES}" in dcm4chee
    # every preset is built from UIDs only
    for path in PRESETS.values():
        assert ViewerTemplate("http://h" + path).placeholders <= {"study_uid", "series_uid"}


def test_connection_extras():
    assert viewer_template(None) is None and viewer_template("  ", "custom") is None
    custom = viewer_template("https://v.example/{study_uid}", "custom")
    assert custom is not None and custom.url(STUDY) == f"https://v.example/{STUDY}"
    with pytest.raises(ViewerUrlError, match="is not one of ohif, dcm4chee"):
        viewer_template("https://v.example", "weasis")
    with pytest.raises(ViewerUrlError, match="needs the viewer's base URL"):
        viewer_template("", "ohif")
    with pytest.raises(ViewerUrlError, match="give only the base URL"):
        viewer_template("https://v.example/viewer?StudyInstanceUIDs={study_uid}", "ohif")
