"""The wheel carries the DAG files: ``pip install`` of the wheel alone (no git checkout on the path) and
``kaapana dags install DIR`` give a DAGs folder that parses, without side effects; ``KaapanaDagBundle``
points at the same files. One test does it as a user would: a new virtual environment, ``pip install``
of the wheel and Airflow from the package index, ``kaapana dags install``, then that environment's
Airflow parses the folder and lists the provider."""

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
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout."""
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
    return wheel


@pytest.fixture(scope="module")
def installed(wheel) -> Path:
    """The wheel installed with pip into a folder of its own (its dependencies: this environment's)."""
    target = wheel.parent / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
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

    report = _parse_report(Path(sys.executable), dags, _env(installed), tmp_path)
    assert report["import_errors"] == {}
    assert {"kaapana_nnunet_segmentation", "kaapana_ingest"} <= set(report["dags"])
    assert report["network"] == [] and report["lookups"] == [] and report["reads"] == []


def _parse_report(python: Path, dags: Path, env: dict[str, str], cwd: Path) -> dict:
    parsed = subprocess.run(
        [str(python), str(PROBE), str(dags)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    return json.loads(parsed.stdout.strip().splitlines()[-1])


def test_fresh_venv_pip_install_of_the_wheel_then_dags_install_gives_working_dags(wheel, tmp_path):
    """No checkout, no test environment: ``python -m venv``, ``pip install <wheel> apache-airflow==<this
    one>`` (dependencies from the package index, as a user gets them), ``kaapana dags install``."""
    from importlib.metadata import version

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow-home"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    pip = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            str(wheel),
            f"apache-airflow=={version('apache-airflow')}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]

    dags = tmp_path / "airflow-dags"
    placed = subprocess.run(
        [str(bin_dir / "kaapana"), "dags", "install", str(dags)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert placed.returncode == 0, placed.stderr
    assert sorted(p.name for p in dags.glob("*.py")) == [p.name for p in shipped_dag_files()]
    where = subprocess.run(
        [str(python), "-c", "import airflow_provider_kaapana as p; print(p.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert where.startswith(str(venv)), f"imported {where}, not the wheel in the new environment"

    report = _parse_report(python, dags, env, tmp_path)
    assert report["import_errors"] == {}
    assert set(report["dags"]) >= {path.stem for path in shipped_dag_files()}
    assert report["network"] == [] and report["lookups"] == [] and report["reads"] == []
    # that environment's Airflow knows the provider (entry point, hooks, connection types)
    listed = subprocess.run(
        [str(bin_dir / "airflow"), "providers", "get", "airflow-provider-kaapana", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "airflow-provider-kaapana" in listed.stdout


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
