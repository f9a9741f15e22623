"""The wheel carries the DAG files: ``pip install`` of the wheel alone (no git checkout on the path) and
``kaapana dags install DIR`` give a DAGs folder that parses, without side effects; ``KaapanaDagBundle``
points at the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from airflow_provider_kaapana.core.dag_files import install_dags, shipped_dag_files

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "dag_factories" / "_parse_probe.py"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed with pip into a folder of its own."""
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(ROOT), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("airflow_provider_kaapana-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"airflow_provider_kaapana/dags/{p.name}" for p in shipped_dag_files()} <= set(names)
    target = out / "site"
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def _env(site: Path) -> dict[str, str]:
    """The installed wheel first on the path, and not this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return env


def test_kaapana_dags_install_from_the_wheel_gives_a_dags_folder_that_parses(installed, tmp_path, airflow_db):
    dags = tmp_path / "airflow-dags"
    script = installed / "bin" / "kaapana"
    result = subprocess.run(
        [sys.executable, str(script), "dags", "install", str(dags)],
        capture_output=True,
        text=True,
        env=_env(installed),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(shipped_dag_files())} installed" in result.stdout
    assert sorted(p.name for p in dags.glob("*.py")) == [p.name for p in shipped_dag_files()]
    where = subprocess.run(
        [sys.executable, "-c", "import airflow_provider_kaapana as p; print(p.__file__)"],
        capture_output=True,
        text=True,
        env=_env(installed),
        cwd=tmp_path,
        check=True,
    ).stdout
    assert where.startswith(str(installed)), f"imported {where}, not the installed wheel"

    parsed = subprocess.run(
        [sys.executable, str(PROBE), str(dags)],
        capture_output=True,
        text=True,
        env=_env(installed),
        cwd=tmp_path,
        timeout=300,
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    report = json.loads(parsed.stdout.strip().splitlines()[-1])
    assert report["import_errors"] == {}
    assert {"kaapana_nnunet_segmentation", "kaapana_ingest"} <= set(report["dags"])
    assert report["network"] == [] and report["lookups"] == [] and report["reads"] == []


def test_install_keeps_local_edits_unless_forced(tmp_path):
    first = install_dags(tmp_path)
    assert first.installed and not first.kept
    edited = tmp_path / first.installed[0]
    edited.write_text(edited.read_text() + "\n# a local setting\n")
    again = install_dags(tmp_path)
    assert again.kept == [edited.name] and not again.installed
    assert "# a local setting" in edited.read_text()
    forced = install_dags(tmp_path, force=True)
    assert forced.installed == [edited.name]
    assert "# a local setting" not in edited.read_text()


def test_the_dag_bundle_serves_the_shipped_files():
    from airflow_provider_kaapana.dag_factories.bundle import KaapanaDagBundle

    bundle = KaapanaDagBundle(name="kaapana")
    assert sorted(bundle.path.glob("kaapana_*.py")) == shipped_dag_files()
    assert KaapanaDagBundle(name="mine", path="/srv/dags").path == Path("/srv/dags")
