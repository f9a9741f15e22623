"""Record-level egress: segment measurements leave a site only de-identified, scanned, k-anonymous and
audited record by record."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydicom.dataset import Dataset

from airflow_provider_kaapana.core.deid.deidentify import deidentify
from airflow_provider_kaapana.core.deid.profile import DeidentificationProfile
from airflow_provider_kaapana.core.federation import analyses as analyses_module
from airflow_provider_kaapana.core.federation import guard as guard_module
from airflow_provider_kaapana.core.federation import statistics as statistics_module
from airflow_provider_kaapana.core.federation.aggregate import SiteResult, aggregate_results
from airflow_provider_kaapana.core.federation.analyses import get_analysis
from airflow_provider_kaapana.core.federation.audit import read_audit_log, record_egress
from airflow_provider_kaapana.core.federation.guard import (
    collect_known_identifiers,
    guard_egress,
    register_egress_rule,
    verify_received,
)
from airflow_provider_kaapana.core.federation.jobs import FederatedJob, SitePolicy
from airflow_provider_kaapana.core.federation.measurements import (
    SEGMENT_MEASUREMENTS_V1,
    segment_measurements,
)
from airflow_provider_kaapana.core.federation.records import SCHEMA_RECORDS_V1, age_band
from airflow_provider_kaapana.core.federation.report import build_report, render_html
from airflow_provider_kaapana.core.federation.site import analyse
from airflow_provider_kaapana.core.federation.statistics import (
    AnalysisSpec,
    ColumnSpec,
    PayloadSchema,
    canonical_json_bytes,
)
from airflow_provider_kaapana.exceptions import AuditLogError, EgressRefused, PayloadSchemaError

KEY = b"site-alpha-deid-key-0123456789abcdef"
OTHER_KEY = b"site-beta--deid-key-0123456789abcdef"
POLICY = SitePolicy("alpha", {"segment_measurements": "*"}, require_approval=False, k_min=3)


def job(k: int = 3, **parameters: Any) -> FederatedJob:
    return FederatedJob.for_run(
        SEGMENT_MEASUREMENTS_V1,
        "manual__2026-12-01T10:00:00+00:00",
        parameters={"label": "liver", **parameters},
        k=k,
        created="2026-12-01T10:00:00Z",
    )


def seg_document(p: int, *, sex: str = "F", age: float = 47.0, label: str = "liver") -> dict[str, Any]:
    """One SEG series document as the index holds it: patient module, per-segment statistics."""
    return {
        "PatientID": f"ALPHA{p:04d}",
        "PatientName": f"DOE^JANE{p:04d}",
        "PatientBirthDate": "19790304",
        "PatientSex": sex,
        "StudyInstanceUID": f"1.2.826.0.1.3680043.10.1337.7.{p}.1",
        "SeriesInstanceUID": f"1.2.826.0.1.3680043.10.1337.7.{p}.2",
        "Modality": "SEG",
        "kaapana": {
            "patient_age_years": age,
            "segments": [
                {
                    "segment_number": 1,
                    "label": label,
                    "empty": False,
                    "volume_ml": 1000.0 + p,
                    "mean": 55.5,
                    "intensity_unit": "HU",
                },
                {"segment_number": 2, "label": "spleen", "empty": False, "volume_ml": 200.0},
            ],
        },
    }


def site_documents(n: int = 8) -> list[dict[str, Any]]:
    # ages 41..48 (one band), sexes alternating: groups of 4 F and 4 M
    return [seg_document(p, sex="FM"[p % 2], age=41.0 + p) for p in range(n)]


def guarded(documents, the_job=None, key=KEY, policy=POLICY):
    the_job = the_job or job()
    document = segment_measurements(
        documents, job_id=the_job.job_id, site=policy.site, parameters=the_job.parameters
    )
    return guard_egress(
        document,
        job=the_job,
        policy=policy,
        known_identifiers=collect_known_identifiers(documents),
        deid_key=key,
    )


def deidentified(document: dict[str, Any], key: bytes = KEY) -> Dataset:
    """What ``kaapana deid`` writes for an instance of that series (the default, basic profile)."""
    ds = Dataset()
    ds.PatientID = document["PatientID"]
    ds.PatientName = document["PatientName"]
    ds.StudyInstanceUID = document["StudyInstanceUID"]
    ds.SeriesInstanceUID = document["SeriesInstanceUID"]
    return deidentify(ds, DeidentificationProfile(), key)


# --------------------------------------------------------------------------------------------------


def test_released_rows_carry_the_deid_pseudonyms_and_no_original():
    documents = site_documents()
    result = guarded(documents)
    released = result.document
    assert released["schema"] == SCHEMA_RECORDS_V1
    assert released["columns"] == ["patient", "study_uid", "series_uid", "label", "volume_ml", "mean_hu"]
    assert released["suppressed"] is False and result.suppressed_cells == 0
    rows = released["records"]
    assert len(rows) == 8  # one liver per case; the spleens are not the job's label
    by_volume = {row["volume_ml"]: row for row in rows}
    for p, document in enumerate(documents):
        row, expected = by_volume[1000.0 + p], deidentified(document)
        assert row["patient"] == expected.PatientID
        assert row["study_uid"] == expected.StudyInstanceUID
        assert row["series_uid"] == expected.SeriesInstanceUID
        assert row["label"] == "LIVER" and row["mean_hu"] == 55.5
    text = result.payload.decode("ascii")
    for document in documents:
        for field in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "PatientBirthDate"):
            assert document[field] not in text
        assert "DOE" not in text and "JANE" not in text
    assert "age_band" not in text and '"sex"' not in text  # quasi-identifiers only when asked for


def test_another_key_gives_other_pseudonyms():
    documents = site_documents()
    mine = guarded(documents).document["records"]
    theirs = guarded(documents, key=OTHER_KEY).document["records"]
    for column in ("patient", "study_uid", "series_uid"):
        assert not {r[column] for r in mine} & {r[column] for r in theirs}
    assert [r["volume_ml"] for r in mine] == [r["volume_ml"] for r in theirs]
    # and the same key always gives the same bytes
    assert guarded(documents).payload == guarded(list(reversed(documents))).payload


def test_quasi_identifiers_are_coarsened_when_asked_for():
    result = guarded(site_documents(), job(quasi_identifiers=["age_band", "sex"]))
    rows = result.document["records"]
    assert result.document["columns"][3:5] == ["age_band", "sex"]
    assert {r["age_band"] for r in rows} == {"40-49"}
    assert sorted(r["sex"] for r in rows) == ["F"] * 4 + ["M"] * 4
    assert [age_band(a) for a in (0, 9.9, 47, 89.9, 90, 104, None, -1)] == [
        "0-9",
        "0-9",
        "40-49",
        "80-89",
        "90+",
        "90+",
        None,
        None,
    ]


def test_small_quasi_identifier_groups_are_suppressed():
    documents = site_documents()  # 4 F, 4 M aged 41-48
    documents.append(seg_document(50, sex="O", age=93.0))  # alone in (90+, O)
    documents.append(seg_document(51, sex="F", age=71.0))  # alone in (70-79, F)
    result = guarded(documents, job(quasi_identifiers=["age_band", "sex"]))
    rows = result.document["records"]
    assert len(rows) == 8 and result.document["suppressed"] is True
    assert {(r["age_band"], r["sex"]) for r in rows} == {("40-49", "F"), ("40-49", "M")}
    assert result.suppressed_cells == 2
    # the groups are over every offered quasi-identifier, whichever the job asked for: rows of two jobs
    # join on the pseudonym, so "sex" in one job and "age_band" in another must not single anyone out
    for asked in ([], ["sex"], ["age_band"]):
        other = guarded(documents, job(quasi_identifiers=asked)).document
        assert other["suppressed"] is True
        assert [r["patient"] for r in other["records"]] == [r["patient"] for r in rows]


def test_k_counts_patients_not_rows_and_refuses_below_k():
    documents = site_documents(2)
    documents += [
        seg_document(0, sex="F", age=41.0) | {"SeriesInstanceUID": f"1.2.3.4.{i}"} for i in range(5)
    ]
    with pytest.raises(EgressRefused) as caught:
        guarded(documents)  # 7 rows, 2 patients: below k=3
    assert caught.value.code == "k"
    with pytest.raises(EgressRefused, match="k=5"):
        guarded(site_documents(), job(k=5, quasi_identifiers=["sex"]), policy=POLICY)  # 4 F, 4 M


@pytest.mark.parametrize(
    ("field", "planted", "kind"),
    [
        ("label", "DOE^JANE0003", "person name"),
        ("label", "liver ALPHA0005", "known identifier"),  # another patient's ID, as a word
        ("label", "Doe, Jane0004", "known identifier"),  # a name, spelt differently
        ("label", "1.2.826.0.1.3680043.10.1337.7.6.1", "DICOM UID"),
        ("label", "seen 1979-03-04", "date"),
    ],
)
def test_an_identifier_in_a_free_text_field_is_refused_naming_the_field(field, planted, kind):
    documents = site_documents()
    documents[3]["kaapana"]["segments"][0][field] = planted
    # the label no longer says liver: match the segment by its code meaning instead
    documents[3]["kaapana"]["segments"][0]["code"] = {"meaning": "Liver"}
    with pytest.raises(EgressRefused) as caught:
        guarded(documents)
    assert caught.value.code == "identifier"
    message = str(caught.value)
    assert "records[3].label" in message and kind in message
    assert planted not in message and "ALPHA0005" not in message and "JANE" not in message


def test_an_identifier_planted_in_a_measurement_is_refused_naming_the_field():
    the_job = job()
    documents = site_documents()
    document = segment_measurements(
        documents, job_id=the_job.job_id, site="alpha", parameters=the_job.parameters
    )
    known = collect_known_identifiers(documents)
    for planted in ("1.2.826.0.1.3680043.10.1337.7.6.2", "DOE^JANE0001", 19790304):
        document["records"][5]["mean_hu"] = planted
        with pytest.raises(EgressRefused) as caught:
            guard_egress(document, job=the_job, policy=POLICY, known_identifiers=known, deid_key=KEY)
        assert caught.value.code == "identifier"
        assert "records[5].mean_hu" in str(caught.value) and str(planted) not in str(caught.value)
    # an extra column is refused without naming it or its value
    document["records"][5]["mean_hu"] = 1.0
    document["records"][5]["PatientName"] = "DOE^JANE0005"
    with pytest.raises(EgressRefused) as caught:
        guard_egress(document, job=the_job, policy=POLICY, known_identifiers=known, deid_key=KEY)
    assert "records[5].<key" in str(caught.value) and "PatientName" not in str(caught.value)


def test_every_records_hash_is_in_the_audit_log(tmp_path):
    result = guarded(site_documents())
    log = tmp_path / "audit.jsonl"
    payload = record_egress(log, result, recipient="https://coordinator.example.org")
    [line] = read_audit_log(log)
    records = json.loads(payload)["records"]
    assert len(line.record_sha256) == len(records) == 8
    assert list(line.record_sha256) == [hashlib.sha256(canonical_json_bytes(r)).hexdigest() for r in records]
    assert line.sha256 == hashlib.sha256(payload).hexdigest()
    # a changed record hash does not verify
    raw = json.loads(log.read_text())
    raw["record_sha256"][2] = "0" * 64
    log.write_text(json.dumps(raw) + "\n")
    with pytest.raises(Exception, match="records do not match"):
        read_audit_log(log)
    # nor does a records payload whose per-record hashes were deleted
    del raw["record_sha256"]
    log.write_text(json.dumps(raw) + "\n")
    with pytest.raises(AuditLogError, match="line 1: the payload holds records but no record_sha256"):
        read_audit_log(log)


def test_the_job_cannot_switch_the_rule_off():
    documents = site_documents()
    # parameters the analysis does not declare are refused before anything is computed
    for parameters in ({"profile": "retain-uids"}, {"raw_ids": True}, {"deidentify": False}):
        decision = POLICY.decide(job(**parameters))
        assert not decision.accepted and "takes no parameter" in decision.reason
    # quasi-identifiers beyond those on offer are refused by the guard at the site
    for asked in (["patient_id"], ["PatientID"], ["PatientBirthDate"], "age_band"):
        with pytest.raises(EgressRefused) as caught:
            guarded(documents, job(quasi_identifiers=asked))
        assert caught.value.code == "parameters"
    # no key, or a short one: refused, never released without de-identification
    for key in (None, b"short"):
        with pytest.raises(EgressRefused) as caught:
            guarded(documents, key=key)
        assert caught.value.code == "deidentification"
    # an ok outcome through the site entry point needs the site's key as well
    outcome = analyse(job(), POLICY, documents)
    assert outcome.status == "refused" and outcome.reason == "egress guard: deidentification"
    assert analyse(job(), POLICY, documents, deid_key=KEY).status == "ok"


def test_a_record_level_schema_without_a_deidentifying_rule_stays_refused(monkeypatch):
    schema_id = "kaapana.federated.test-rows/v1"
    monkeypatch.setitem(
        statistics_module._PAYLOAD_SCHEMAS, schema_id, PayloadSchema(schema_id, "rows", True, lambda *a: None)
    )
    with pytest.raises(ValueError, match="record-level"):
        register_egress_rule(schema_id, guard_module.release_aggregate)
    spec = AnalysisSpec(
        "test_rows", "1", schema_id, (), columns=(ColumnSpec("patient", "patient", "PatientID"),)
    )
    # even an aggregate rule slipped into the registry is not used for it
    monkeypatch.setitem(guard_module._EGRESS_RULES, schema_id, guard_module.release_aggregate)
    monkeypatch.setitem(analyses_module._ANALYSES, ("test_rows", "1"), spec)
    the_job = FederatedJob.for_run(spec, "manual__1", created="2026-12-01T10:00:00Z")
    policy = SitePolicy("alpha", {"test_rows": "*"}, require_approval=False, k_min=3)
    document = {
        "schema": schema_id,
        "job_id": the_job.job_id,
        "analysis": "test_rows",
        "analysis_version": "1",
        "site": "alpha",
        "records": [{"patient": "P0123456789ABCDE"}] * 5,
    }
    with pytest.raises(EgressRefused, match="no de-identifying egress rule"):
        guard_egress(
            document,
            job=the_job,
            policy=policy,
            analysis=spec,
            deid_key=KEY,
            known_identifiers=(),
        )


def test_the_coordinator_rechecks_and_pools_the_records():
    the_job = job(quasi_identifiers=["sex"])
    mine = guarded(site_documents(), the_job).document
    verify_received(mine, job=the_job, site="alpha")
    # a small group, an identifier, a raw UID and a column the job did not ask for are dropped
    small = json.loads(json.dumps(mine))
    small["records"] = small["records"][:5]  # 4 F, 1 M
    bad_label = json.loads(json.dumps(mine))
    bad_label["records"][0]["label"] = "DOE^JANE"
    raw_uid = json.loads(json.dumps(mine))
    raw_uid["records"][0]["study_uid"] = "1.2.826.0.1.3680043.10.1337.7.1.1"
    other_columns = guarded(site_documents(), job(quasi_identifiers=["sex", "age_band"])).document
    other_columns["job_id"] = the_job.job_id
    for document in (small, bad_label, raw_uid, other_columns):
        with pytest.raises(PayloadSchemaError):
            verify_received(document, job=the_job, site="alpha")
    theirs = guarded(
        site_documents(),
        the_job,
        key=OTHER_KEY,
        policy=SitePolicy("beta", {"segment_measurements": "*"}, require_approval=False, k_min=3),
    ).document
    results = {
        "alpha": SiteResult("alpha", "ok", mine),
        "beta": SiteResult("beta", "ok", theirs),
        "gamma": SiteResult("gamma", "ok", small | {"site": "gamma"}),
    }
    pooled = aggregate_results(the_job, results)
    table = pooled.statistics["records"]
    assert table["columns"][:2] == ["site", "patient"] and len(table["rows"]) == 16
    assert {row["site"] for row in table["rows"]} == {"alpha", "beta"}
    assert [s.status.value for s in pooled.sites] == ["ok", "ok", "failed"]
    report = build_report(pooled)
    assert report["records"]["units"]["volume_ml"] == "mL"
    html = render_html(report)
    assert "16 de-identified rows" in html and mine["records"][0]["patient"] in html


def test_the_analysis_is_registered_with_its_columns():
    spec = get_analysis("segment_measurements", "1")
    assert spec.payload_schema == SCHEMA_RECORDS_V1 and not spec.statistics
    assert {c.name for c in spec.columns if c.role.value == "quasi"} == {"age_band", "sex"}


def test_sealed_round_trip_from_the_sites_audit_log_to_the_coordinators_report(tmp_path):
    import datetime as dt

    from airflow_provider_kaapana.core.federation.coordinator import aggregate_answers
    from airflow_provider_kaapana.core.federation.crypto import generate_keypair
    from airflow_provider_kaapana.core.federation.exchange import record_sealed_egress, sealed_answer
    from airflow_provider_kaapana.core.federation.guard import GuardResult

    private, public = generate_keypair()
    the_job = job(quasi_identifiers=["age_band"])
    # what the site's analyse task returns (an XCom) and its respond task re-checks, logs and seals
    outcome = analyse(the_job, POLICY, site_documents(), deid_key=KEY)
    verify_received(outcome.document, job=the_job, site="alpha")
    result = GuardResult(document=outcome.document, k=outcome.k, actions=())
    answer = sealed_answer(result.payload, job_id=the_job.job_id, site="alpha", coordinator_public_key=public)
    record_sealed_egress(
        tmp_path / "audit.jsonl",
        result,
        recipient="https://coord.example.org",
        sealed_sha256=answer.sealed_sha256,
    )
    [line] = read_audit_log(tmp_path / "audit.jsonl")
    assert len(line.record_sha256) == 8
    xcom = {
        "chosen_options": [answer.chosen],
        "params_input": answer.params_input,
        "responded_by_user": {"id": "alpha", "name": "alpha"},
        "responded_at": dt.datetime.now(dt.timezone.utc),
    }
    report = aggregate_answers(the_job, ["alpha"], [xcom], private)
    assert report["sites"][0]["status"] == "ok"
    assert report["sites"][0]["payload_sha256"] == line.sha256
    rows = report["records"]["rows"]
    assert [
        hashlib.sha256(canonical_json_bytes({k: v for k, v in r.items() if k != "site"})).hexdigest()
        for r in rows
    ] == list(line.record_sha256)


@pytest.mark.parametrize("mode", ["warn", "raise"])
def test_a_non_conformant_original_uid_is_released_without_reaching_the_logs(caplog, recwarn, mode):
    from pydicom import config

    bad_uid = "1.2.03.4"  # a leading-zero component: not a valid UI value
    documents = site_documents()
    documents[0]["StudyInstanceUID"] = bad_uid
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.RAISE if mode == "raise" else config.WARN
    try:
        with caplog.at_level("DEBUG"):
            result = guarded(documents)
    finally:
        config.settings.writing_validation_mode = old
    assert bad_uid not in caplog.text
    assert all(bad_uid not in str(warning.message) for warning in recwarn)
    expected = deidentified(documents[1]).StudyInstanceUID
    assert expected in {r["study_uid"] for r in result.document["records"]}
    assert bad_uid not in json.dumps(result.document)
    assert len({r["study_uid"] for r in result.document["records"]}) == len(documents)


def test_an_unexpected_failure_building_a_record_is_refused_naming_the_field_only(monkeypatch):
    from airflow_provider_kaapana.core.federation import records as records_module

    documents = site_documents()
    real = records_module._element

    def failing(keyword, value):
        if keyword == "SeriesInstanceUID":
            raise ValueError(f"cannot use {value}")
        return real(keyword, value)

    monkeypatch.setattr(records_module, "_element", failing)
    with pytest.raises(EgressRefused) as caught:
        guarded(documents)
    assert caught.value.code == "deidentification"
    assert "records[0]: series_uid" in str(caught.value)
    assert "1.2.826" not in str(caught.value)


def test_an_unexpected_deidentification_failure_is_refused_without_its_message(monkeypatch):
    from airflow_provider_kaapana.core.deid import deidentify as deidentify_module

    def failing(dataset, profile, key):
        raise ValueError(f"bad {dataset.StudyInstanceUID}")

    monkeypatch.setattr(deidentify_module, "deidentify", failing)
    with pytest.raises(EgressRefused) as caught:
        guarded(site_documents())
    assert caught.value.code == "deidentification"
    assert str(caught.value) == "records[0]: cannot be de-identified (ValueError)"


@pytest.mark.parametrize(("volume", "refused"), [(101.37, False), (3.101, False), (101, True), (101.0, True)])
def test_a_number_is_refused_only_when_it_is_a_whole_known_identifier(volume, refused):
    the_job = job()
    documents = site_documents()
    documents[0]["StudyID"] = "101"
    documents[1]["AccessionNumber"] = "101"
    document = segment_measurements(
        documents, job_id=the_job.job_id, site="alpha", parameters=the_job.parameters
    )
    document["records"][2]["volume_ml"] = volume
    known = collect_known_identifiers(documents)
    if not refused:
        result = guard_egress(document, job=the_job, policy=POLICY, known_identifiers=known, deid_key=KEY)
        assert volume in [r["volume_ml"] for r in result.document["records"]]
        return
    with pytest.raises(EgressRefused) as caught:
        guard_egress(document, job=the_job, policy=POLICY, known_identifiers=known, deid_key=KEY)
    assert caught.value.code == "identifier"
    assert "records[2].volume_ml" in str(caught.value) and "101" not in str(caught.value)


def test_measurements_are_ordered_by_segment_number_which_the_query_fetches():
    from airflow_provider_kaapana.core.federation.measurements import (
        MEASUREMENT_SOURCE_FIELDS,
        compute_segment_measurements,
    )

    assert "kaapana.segments.segment_number" in MEASUREMENT_SOURCE_FIELDS
    document = seg_document(1)
    document["kaapana"]["segments"] = [
        {"segment_number": number, "label": "liver", "empty": False, "volume_ml": volume}
        for number, volume in ((10, 1010.0), ("2", 1002.0), (None, 1099.0))
    ]
    rows = compute_segment_measurements([document], "liver")
    assert [r["volume_ml"] for r in rows] == [1002.0, 1010.0, 1099.0]
