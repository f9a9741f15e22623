"""Every file in dags/ loads in a DagBag with zero import errors, and parsing does nothing else.

Parsing runs in a fresh interpreter (``_parse_probe.py``) with the network refused, Variable/Connection
lookups refused, file reads outside the DAG folder recorded, and third-party library settings (logger
levels, pynetdicom's and pydicom's config) compared before and after: a DAG file is parsed every 30 s by
the dag-processor, so anything it does there it does all day.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
PROBE = Path(__file__).with_name("_parse_probe.py")

# Settings a third-party library changes by itself, not because of our code:
# the kubernetes client's Configuration() sets the urllib3 logger to WARNING whenever a V1 model
# object is built (KubernetesPodOperator builds several in its constructor).
TOLERATED_CHANGES = {"logger:urllib3"}


def parse(folder: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(PROBE), str(folder)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dags_folder_loads_without_side_effects(airflow_db):
    report = parse(DAGS_FOLDER)
    assert report["import_errors"] == {}
    assert report["network"] == [], "network access at DAG parse time"
    assert report["lookups"] == [], "Variable/Connection lookup at DAG parse time"
    assert report["reads"] == [], "file reads outside the DAG folder at parse time"
    changes = {k: v for k, v in report["config_changes"].items() if k not in TOLERATED_CHANGES}
    assert changes == {}, f"parsing changed third-party library settings: {changes}"
    files = sorted(p for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))
    assert files, "dags/ holds no DAG files"
    assert len(report["dags"]) >= len(files)
    for dag_id, tags in report["dags"].items():
        assert "kaapana" in tags, f"{dag_id} lacks the 'kaapana' tag"
        assert report["descriptions"][dag_id], f"{dag_id} has no description (the DAG list shows it)"


def test_probe_catches_a_misbehaving_dag_file(airflow_db, tmp_path):
    """The probe is not vacuous: a DAG file that reads a file, calls out and sets a log level is caught."""
    folder = tmp_path / "dags"
    shutil.copytree(DAGS_FOLDER, folder)
    (folder / "bad_dag.py").write_text(
        "import logging, socket\n"
        "from datetime import datetime\n"
        "from airflow.sdk import DAG, Variable\n"
        "open('/etc/hostname').read()\n"
        "logging.getLogger('pydicom').setLevel(logging.ERROR)\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
        "try:\n    Variable.get('x')\nexcept Exception:\n    pass\n"
        "with DAG('bad_dag', start_date=datetime(2026, 1, 1), schedule=None, tags=['kaapana']):\n    pass\n"
    )
    report = parse(folder)
    assert report["reads"] == ["/etc/hostname"]
    assert report["network"] and report["lookups"]
    assert "logger:pydicom" in report["config_changes"]
    assert "bad_dag" in report["dags"]
