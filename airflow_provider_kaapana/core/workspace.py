"""The per-run workspace on a shared filesystem: ``<base>/<dag_id>/<run_id>/batch/<SeriesInstanceUID>/<step>``.

Images travel between tasks as files here; XCom carries only these paths and UIDs. Each run root holds a
small ``.kaapana-run.json`` naming its DAG and run, so clean-up can ask Airflow whether the run is active.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_kaapana.core.dicom.uids import uid_path
from airflow_provider_kaapana.core.paths import path_under

DEFAULT_WORKSPACE_BASE = "/tmp/kaapana-workspace"
RUN_MARKER = ".kaapana-run.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_dir_name(name: str) -> str:
    """A DAG or run id (``manual__2026-11-26T10:00:00+00:00``) as one safe path component."""
    safe = _UNSAFE.sub("_", name).strip(".")
    if not safe:
        raise ValueError(f"{name!r} gives an empty directory name")
    return safe


@dataclass(frozen=True)
class RunWorkspace:
    base: Path
    dag_id: str
    run_id: str

    @property
    def root(self) -> Path:
        return Path(self.base) / safe_dir_name(self.dag_id) / safe_dir_name(self.run_id)

    @property
    def batch(self) -> Path:
        return self.root / "batch"

    def create(self) -> RunWorkspace:
        """Make the run root and its marker (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / RUN_MARKER
        if not marker.exists():
            marker.write_text(
                json.dumps({"dag_id": self.dag_id, "run_id": self.run_id, "created": time.time()})
            )
        return self

    def series_dir(self, series_instance_uid: str) -> Path:
        return uid_path(self.batch, series_instance_uid, what="SeriesInstanceUID")

    def step_dir(self, series_instance_uid: str, step: str, create: bool = True) -> Path:
        path = path_under(self.series_dir(series_instance_uid), step, source="workspace step name")
        if create:
            self.create()
            path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class StaleWorkspace:
    path: Path
    dag_id: str
    run_id: str
    age_seconds: float


def find_stale_workspaces(
    base: str | Path, max_age_seconds: float, now: float | None = None
) -> Iterator[StaleWorkspace]:
    """Run roots under ``base`` whose newest file is older than ``max_age_seconds``.

    Only directories carrying a run marker are considered, so nothing else under ``base`` is touched.
    """
    now = time.time() if now is None else now
    for marker in sorted(Path(base).glob(f"*/*/{RUN_MARKER}")):
        root = marker.parent
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        newest = max((p.stat().st_mtime for p in root.rglob("*")), default=marker.stat().st_mtime)
        age = now - newest
        if age > max_age_seconds:
            yield StaleWorkspace(root, str(info.get("dag_id")), str(info.get("run_id")), age)


def remove_workspace(path: str | Path) -> None:
    shutil.rmtree(path)


def run_workspace(base: str | Path, dag_id: str, run_id: str) -> RunWorkspace:
    """The workspace of one DAG run, from its ids: what every operator and step writes into."""
    if not dag_id or not run_id:
        raise ValueError(f"a run workspace needs a DAG id and a run id, got {dag_id!r} and {run_id!r}")
    return RunWorkspace(Path(base), str(dag_id), str(run_id))
