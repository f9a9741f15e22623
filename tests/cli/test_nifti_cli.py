"""``kaapana nifti``: the CLI writes volume + sidecar, prints their paths, and reports bad geometry."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib


def kaapana(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_writes_volume_and_sidecar(ct_series, tmp_path):
    out = tmp_path / "out"
    proc = kaapana("nifti", str(ct_series.series_dir), "-o", str(out), "--name", "ct", "--suffix", "_0000")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / "ct_0000.nii.gz"), str(out / "ct_0000.json")]
    assert nib.load(out / "ct_0000.nii.gz").shape == (32, 32, 16)
    sidecar = json.loads((out / "ct_0000.json").read_text())
    assert sidecar["sop_instance_uids"] == ct_series.sop_instance_uids


def test_cli_reports_geometry_error(synthetic_series, tmp_path):
    series = synthetic_series(slice_offsets=[0, 2, 4, 7, 9])
    proc = kaapana("nifti", str(series.series_dir), "-o", str(tmp_path / "out"), "--no-compress")
    assert proc.returncode == 1
    assert "uneven slice spacing" in proc.stderr and series.series_instance_uid in proc.stderr
    assert proc.stdout == ""


def test_building_the_command_imports_no_heavy_library():
    # every subcommand builds the whole parser first: `kaapana nifti` must not pay for the search
    # clients, pydicom or importlib.metadata that other subcommands use (they import them when run)
    code = (
        "import sys\n"
        "from airflow_provider_kaapana.cli import build_parser\n"
        "build_parser()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    heavy = {
        "pydicom",
        "requests",
        "importlib.metadata",
        "numpy",
        "elasticsearch",
        "opensearchpy",
        "tenacity",
    }
    assert not loaded & heavy
