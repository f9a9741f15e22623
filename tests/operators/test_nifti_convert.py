"""NiftiConvertOperator: nnU-Net names in the run workspace via dag.test(), mapping, channels, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from airflow_provider_kaapana.core.nifti.convert import read_sidecar
from airflow_provider_kaapana.core.workspace import RunWorkspace
from airflow_provider_kaapana.exceptions import InvalidDicomError, KaapanaError
from airflow_provider_kaapana.operators.nifti_convert import NiftiConvertOperator


def test_dag_converts_received_series_into_the_workspace(airflow_db, synthetic_series, tmp_path):
    from tests.dags.nifti_convert_test import dag

    ct = synthetic_series("ct")
    mr = synthetic_series("mr", modality="MR", orientation="sagittal", seed=5, series_number=2)
    received = [
        {"series_instance_uid": s.series_instance_uid, "series_dir": str(s.series_dir), "modality": m}
        for s, m in ((ct, "CT"), (mr, "MR"))
    ]
    base = tmp_path / "ws"
    report = tmp_path / "report.json"
    dag_run = dag.test(run_conf={"series": received, "workspace_base": str(base), "report": str(report)})
    assert dag_run.state == "success"
    xcoms = json.loads(report.read_text())
    ws = RunWorkspace(base, dag.dag_id, dag_run.run_id)
    for series, plain, mapped in zip((ct, mr), xcoms["plain"], xcoms["mapped"]):
        uid = series.series_instance_uid
        step = ws.step_dir(uid, "nifti", create=False)
        assert plain == {
            "series_instance_uid": uid,
            "case_id": uid,
            "nifti_dir": str(step),
            "nifti_paths": [str(step / f"{uid}_0000.nii.gz")],
            "sidecars": [str(step / f"{uid}_0000.json")],
        }
        assert mapped["nifti_paths"] == [str(step / f"{uid}_0001.nii.gz")]
        img = nib.load(plain["nifti_paths"][0])
        assert img.shape == (32, 32, 16)
        assert read_sidecar(plain["sidecars"][0])["sop_instance_uids"] == series.sop_instance_uids


def test_plain_directory_input_and_idempotent_rerun(ct_series, tmp_path):
    op = NiftiConvertOperator(task_id="n", series=str(ct_series.series_dir), output_dir=str(tmp_path / "in"))
    first = op.execute({})
    uid = ct_series.series_instance_uid
    assert first["case_id"] == uid and first["nifti_paths"] == [str(tmp_path / "in" / f"{uid}_0000.nii.gz")]
    content = Path(first["nifti_paths"][0]).read_bytes()
    assert op.execute({}) == first
    assert Path(first["nifti_paths"][0]).read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [f"{uid}_0000.json", f"{uid}_0000.nii.gz"]


def test_channels_select_series_by_description(synthetic_series, tmp_path):
    study = generate_uid()
    t2 = synthetic_series(modality="MR", study_instance_uid=study, series_description="t2_tse_tra", seed=1)
    adc = synthetic_series(
        modality="MR", study_instance_uid=study, series_description="ep2d_diff_ADC", seed=2, series_number=2
    )
    entries = [
        {"series_instance_uid": s.series_instance_uid, "series_dir": str(s.series_dir)} for s in (adc, t2)
    ]
    op = NiftiConvertOperator(
        task_id="n",
        series=entries,
        output_dir=str(tmp_path / "in"),
        channels={"0000": "t2.*", "0001": {"SeriesDescription": ".*ADC", "Modality": "MR"}},
    )
    case = op.execute({})
    assert case["case_id"] == study
    assert case["series_instance_uid"] == t2.series_instance_uid
    assert case["nifti_paths"] == [str(tmp_path / "in" / f"{study}_{c}.nii.gz") for c in ("0000", "0001")]
    for path, series in zip(case["nifti_paths"], (t2, adc)):
        np.testing.assert_array_equal(
            np.asanyarray(nib.load(path).dataobj).transpose(2, 1, 0)[:, ::-1, :], series.volume
        )
    ambiguous = NiftiConvertOperator(
        task_id="m", series=entries, output_dir=str(tmp_path / "x"), channels={"0000": ".*"}
    )
    with pytest.raises(InvalidDicomError, match="channel 0000 selector '.*' matches 2 series"):
        ambiguous.execute({})


def test_one_bad_series_does_not_stop_the_others(ct_series, synthetic_series, tmp_path):
    bad = synthetic_series("bad", slice_offsets=[0, 2, 5, 7], seed=9, series_number=3)
    entries = [str(bad.series_dir), str(ct_series.series_dir)]
    op = NiftiConvertOperator(task_id="n", series=entries, output_dir=str(tmp_path / "in"))
    with pytest.raises(KaapanaError, match="1 of 2 series could not be converted.*uneven slice spacing"):
        op.execute({})
    assert (tmp_path / "in" / f"{ct_series.series_instance_uid}_0000.nii.gz").exists()
    assert not list((tmp_path / "in").glob(f"{bad.series_instance_uid}*"))


def test_split_series_gives_one_case_per_volume(synthetic_series, tmp_path):
    uid = generate_uid()
    merged = tmp_path / "merged"
    merged.mkdir()
    for echo in (1, 2):
        series = synthetic_series(
            modality="MR", series_instance_uid=uid, seed=echo, extra={"EchoNumbers": str(echo)}
        )
        for f in series.files:
            f.rename(merged / f"e{echo}_{f.name}")
    op = NiftiConvertOperator(
        task_id="n",
        series={"series_instance_uid": uid, "series_dir": str(merged)},
        output_dir=str(tmp_path / "in"),
    )
    cases = op.execute({})
    assert [c["case_id"] for c in cases] == [f"{uid}_e1", f"{uid}_e2"]
    assert [Path(c["nifti_paths"][0]).name for c in cases] == [
        f"{uid}_e1_0000.nii.gz",
        f"{uid}_e2_0000.nii.gz",
    ]
    assert all(c["series_instance_uid"] == uid for c in cases)


def test_series_uid_mismatch_is_an_error_and_leaves_nothing(ct_series, tmp_path):
    wrong = generate_uid()
    op = NiftiConvertOperator(
        task_id="n",
        series={"series_instance_uid": wrong, "series_dir": str(ct_series.series_dir)},
        output_dir=str(tmp_path / "in"),
    )
    with pytest.raises(
        InvalidDicomError, match=f"holds series {ct_series.series_instance_uid}, expected {wrong}"
    ):
        op.execute({})
    assert list((tmp_path / "in").iterdir()) == []
