"""The container contract (``kaapana.algorithm/v1``): the job folder, the environment, exit codes, outputs.

One series per job. The platform writes ``params.json`` and ``series.json`` into the job folder and
passes every path by environment variable; the algorithm reads its input folder (read-only), writes
into ``output/`` and logs to stdout. The same :func:`job_environment` serves the pod and the local
subprocess (:func:`run_local`), and :func:`collect_outputs` reads what the manifest declared.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.algorithms.manifest import Manifest
from airflow_provider_kaapana.core.files import write_atomic
from airflow_provider_kaapana.exceptions import KaapanaError

CONTRACT_VERSION = "1"
PARAMS_FILE = "params.json"
SERIES_FILE = "series.json"
OUTPUT_DIR = "output"
EXIT_OK = 0
EXIT_NO_FINDINGS = 3  # ran fine, nothing to report: the platform skips the export steps


class AlgorithmFailed(KaapanaError):
    def __init__(self, name: str, returncode: int, tail: str) -> None:
        self.returncode = returncode
        super().__init__(f"algorithm {name} failed with exit code {returncode}: {tail}")


class NoFindings(KaapanaError):
    """The algorithm exited with :data:`EXIT_NO_FINDINGS`."""


@dataclass(frozen=True)
class Job:
    """One run of an algorithm on one series: ``input_dir`` (read-only) and the job folder."""

    input_dir: Path
    job_dir: Path

    @property
    def output_dir(self) -> Path:
        return self.job_dir / OUTPUT_DIR

    @property
    def params_file(self) -> Path:
        return self.job_dir / PARAMS_FILE

    @property
    def series_file(self) -> Path:
        return self.job_dir / SERIES_FILE


def job_environment(manifest: Manifest, job: Job) -> dict[str, str]:
    """The contract's variables (the manifest's ``env`` first, so it cannot override them)."""
    return {
        **manifest.env,
        "KAAPANA_CONTRACT_VERSION": CONTRACT_VERSION,
        "KAAPANA_ALGORITHM": manifest.name,
        "KAAPANA_INPUT_DIR": str(job.input_dir),
        "KAAPANA_INPUT_FORMAT": manifest.input_format,
        "KAAPANA_OUTPUT_DIR": str(job.output_dir),
        "KAAPANA_PARAMS_FILE": str(job.params_file),
        "KAAPANA_SERIES_FILE": str(job.series_file),
    }


def prepare_job(
    manifest: Manifest, job: Job, params: Mapping[str, Any], series: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``params.json`` (only the manifest's parameters) and ``series.json``; make ``output/``.

    Idempotent: a retry rewrites both files and starts from an empty output folder.
    """
    if not job.input_dir.is_dir():
        raise KaapanaError(f"algorithm {manifest.name}: input folder {job.input_dir} does not exist")
    known = manifest.parameters
    values = {name: params[name] for name in known if name in params}
    for name, schema in known.items():
        values.setdefault(name, schema.get("default"))
    job.job_dir.mkdir(parents=True, exist_ok=True)
    if job.output_dir.exists():
        shutil.rmtree(job.output_dir)
    job.output_dir.mkdir()
    write_atomic(job.params_file, [json.dumps(values, indent=2, default=str).encode()])
    write_atomic(job.series_file, [json.dumps(dict(series), indent=2, default=str).encode()])
    return values


def run_local(
    manifest: Manifest, job: Job, log: Callable[[str], None] = lambda line: None, timeout: float | None = None
) -> None:
    """Run the manifest's local command with the contract's environment; stdout/stderr go to ``log``."""
    command = manifest.local_command()
    if command[0] in ("python", "python3"):  # the worker's interpreter, with the libraries it has
        command[0] = sys.executable
    env = {**os.environ, **job_environment(manifest, job)}
    timeout = timeout or manifest.resources.get("timeout_seconds")
    try:
        process = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=job.job_dir, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise KaapanaError(f"algorithm {manifest.name}: command not found: {command[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise KaapanaError(f"algorithm {manifest.name}: no result after {timeout} s") from exc
    for line in (process.stdout + process.stderr).splitlines()[-200:]:
        log(line)
    check_exit(manifest.name, process.returncode, process.stderr)


def check_exit(name: str, returncode: int, stderr: str = "") -> None:
    if returncode == EXIT_OK:
        return
    if returncode == EXIT_NO_FINDINGS:
        raise NoFindings(f"algorithm {name}: no findings (exit code {EXIT_NO_FINDINGS})")
    tail = (stderr.strip().splitlines() or ["(no output on stderr)"])[-1]
    raise AlgorithmFailed(name, returncode, tail)


def collect_outputs(manifest: Manifest, job: Job) -> dict[str, Any]:
    """The declared outputs as paths (``None`` where the worker cannot see them); checks measurements."""
    out: dict[str, Any] = {"output_dir": str(job.output_dir)}
    seg = manifest.output("segmentation")
    if seg is not None:
        out["label_map_path"] = str(job.output_dir / seg.path)
        out["labels_path"] = str(job.output_dir / (seg.labels or ""))
    measurements = manifest.output("measurements")
    if measurements is not None:
        out["measurements_path"] = str(job.output_dir / measurements.path)
    dicom = manifest.output("dicom")
    if dicom is not None:
        out["dicom_dir"] = str(job.output_dir / dicom.path)
    return out


def load_measurements(path: str | Path) -> dict[str, Any]:
    """A measurements file: one JSON object of name -> number, string or boolean (flat; finite numbers)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KaapanaError(f"{path}: measurements cannot be read: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise KaapanaError(f"{path}: measurements must be a non-empty JSON object of name -> value")
    for key, value in data.items():
        if not isinstance(value, (int, float, str, bool)) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise KaapanaError(
                f"{path}: measurement {key!r}: a finite number, string or boolean expected, got {value!r}"
            )
    return data
