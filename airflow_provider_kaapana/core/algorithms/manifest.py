"""Algorithm manifests: load (YAML or JSON), validate against the shipped schema, install and list.

Every error names the manifest file and the field (``outputs[0].kind``), so ``kaapana algorithms
validate`` tells an author exactly what to change. Reading is cheap and local: a DAG file may list the
installed manifests at parse time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, SchemaError

from airflow_provider_kaapana.exceptions import KaapanaError

API_VERSION = "kaapana.algorithm/v1"
ALGORITHMS_DIR_ENV = "KAAPANA_ALGORITHMS_DIR"
DEFAULT_ALGORITHMS_DIR = "/algorithms"
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "manifest.json")
OUTPUT_KINDS = ("segmentation", "measurements", "dicom", "files")
# where each output kind is looked for in the output folder when the manifest gives no path
DEFAULT_OUTPUT_PATHS = {
    "segmentation": "label_map.nii.gz",
    "measurements": "measurements.json",
    "dicom": "dicom",
}
DEFAULT_LABELS_PATH = "labels.json"


class ManifestError(KaapanaError):
    """A manifest that cannot be used; ``problems`` lists ``field: what is wrong`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid algorithm manifest: " + "; ".join(problems))


@cache
def manifest_schema() -> dict[str, Any]:
    text = resources.files("airflow_provider_kaapana").joinpath("data/algorithm_manifest.schema.json")
    return json.loads(text.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Output:
    kind: str
    path: str
    labels: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; ``folder`` is where it was read from (local commands run relative to it)."""

    name: str
    version: str
    image: str
    command: list[str]
    input_format: str
    outputs: list[Output]
    data: dict[str, Any] = field(repr=False)
    folder: Path | None = None

    @property
    def dag_id(self) -> str:
        return "kaapana_algorithm_" + self.name.replace("-", "_")

    @property
    def title(self) -> str:
        return str(self.data.get("title") or self.name)

    @property
    def inputs(self) -> dict[str, Any]:
        return dict(self.data["inputs"])

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Parameter name -> its JSON Schema (title, enum, section, default ...)."""
        return dict((self.data.get("parameters") or {}).get("properties") or {})

    @property
    def resources(self) -> dict[str, Any]:
        return dict(self.data.get("resources") or {})

    @property
    def env(self) -> dict[str, str]:
        return dict(self.data.get("env") or {})

    def output(self, kind: str) -> Output | None:
        return next((o for o in self.outputs if o.kind == kind), None)

    def local_command(self) -> list[str]:
        """The command for local mode: ``local_command`` with ``./x`` paths made absolute, else ``command``."""
        command = list(self.data.get("local_command") or self.command)
        if self.folder is None:
            return command
        return [str(self.folder / c[2:]) if c.startswith("./") else c for c in command]


def _where(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validate_manifest(data: Any, source: str = "manifest") -> Manifest:
    """Check ``data`` against the schema and the rules a schema cannot say; a :class:`Manifest` or raise."""
    if not isinstance(data, dict):
        raise ManifestError(source, [f"(top level): a mapping expected, got {type(data).__name__}"])
    validator = Draft202012Validator(manifest_schema())
    problems = [
        f"{_where(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    parameters = data.get("parameters")
    if isinstance(parameters, dict):
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            problems.append(f"parameters.{_where(exc.absolute_path)}: not a valid JSON Schema: {exc.message}")
        else:
            props = parameters.get("properties") or {}
            for name, schema in props.items() if isinstance(props, dict) else ():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
                    problems.append(f"parameters.properties.{name}: not a valid parameter name")
                if isinstance(schema, dict) and "default" in schema:
                    for error in Draft202012Validator(schema).iter_errors(schema["default"]):
                        problems.append(f"parameters.properties.{name}.default: {error.message}")
    outputs = data.get("outputs")
    if isinstance(outputs, list):
        kinds = [o.get("kind") for o in outputs if isinstance(o, dict)]
        for kind in sorted({k for k in kinds if isinstance(k, str) and kinds.count(k) > 1}):
            problems.append(f"outputs: more than one output of kind {kind!r}")
    if problems:
        raise ManifestError(source, problems)
    return Manifest(
        name=data["name"],
        version=data["version"],
        image=data["image"],
        command=list(data["command"]),
        input_format=data["inputs"]["format"],
        outputs=[
            Output(
                kind=o["kind"],
                path=o.get("path") or DEFAULT_OUTPUT_PATHS.get(o["kind"], "."),
                labels=o.get("labels") or (DEFAULT_LABELS_PATH if o["kind"] == "segmentation" else None),
            )
            for o in data["outputs"]
        ],
        data=data,
    )


def manifest_file(path: str | Path) -> Path:
    """The manifest file of ``path``: the file itself, or ``manifest.yaml|yml|json`` in the folder."""
    path = Path(path)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise ManifestError(str(path), [f"no {' / '.join(MANIFEST_NAMES)} in this folder"])
    if not path.is_file():
        raise ManifestError(str(path), ["no such file"])
    return path


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file (or the manifest in a folder)."""
    file = manifest_file(path)
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ManifestError(
            str(file), [f"(file): cannot be read as {file.suffix[1:].upper()}: {exc}"]
        ) from exc
    manifest = validate_manifest(data, str(file))
    return Manifest(**{**manifest.__dict__, "folder": file.parent.resolve()})


def algorithms_dir(explicit: str | Path | None = None) -> Path:
    """The algorithms folder: ``explicit``, else ``$KAAPANA_ALGORITHMS_DIR``, else ``/algorithms``."""
    return Path(explicit or os.environ.get(ALGORITHMS_DIR_ENV) or DEFAULT_ALGORITHMS_DIR)


def install_algorithm(path: str | Path, target_dir: str | Path | None = None) -> Manifest:
    """Validate the manifest at ``path`` and copy its folder to ``<algorithms dir>/<name>/``.

    The folder holds the manifest and what a local command needs (scripts); a reinstall replaces the
    previous copy in one rename, so a DAG parsing the folder never sees half an algorithm.
    """
    manifest = load_manifest(path)
    source_folder = manifest_file(path).parent
    root = algorithms_dir(target_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / manifest.name
    staging = root / f".{manifest.name}.installing"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source_folder, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    old = root / f".{manifest.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return load_manifest(final)


def list_algorithms(directory: str | Path | None = None) -> list[Manifest | ManifestError]:
    """Every installed algorithm (one sub-folder with a manifest each), or the error that refuses it."""
    root = algorithms_dir(directory)
    if not root.is_dir():
        return []
    found: list[Manifest | ManifestError] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            found.append(load_manifest(folder))
        except ManifestError as exc:
            found.append(exc)
    return found


DAG_FILE_TEMPLATE = '''"""The DAG of the algorithm {name!r} (generated by `kaapana algorithms install`; do not edit).

One file per algorithm, so that a broken manifest is an import error of this file only.
"""

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.processing import algorithm_dag

dag = algorithm_dag({name!r}, PipelineSettings(**{settings!r}), algorithms_dir={algorithms_dir!r})
'''


def dag_file_name(manifest: Manifest) -> str:
    return f"{manifest.dag_id}.py"


def write_dag_file(
    manifest: Manifest,
    dags_folder: str | Path,
    settings: dict[str, Any] | None = None,
    algorithms_dir: str | Path | None = None,
) -> Path:
    """Write the algorithm's tiny DAG file into ``dags_folder`` (it reads the manifest when parsed).

    ``settings`` are ``PipelineSettings`` fields (JSON values: connection ids, workspace, mode...);
    ``algorithms_dir`` is baked in only when given, else the DAG file finds the folder when parsed.
    """
    from airflow_provider_kaapana.core.files import write_atomic

    settings = dict(settings or {})
    bad = [k for k in settings if not re.fullmatch(r"[a-z_]+", str(k))]
    if bad:
        raise KaapanaError(f"settings: not a settings field name: {bad}")
    folder = Path(dags_folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = DAG_FILE_TEMPLATE.format(
        name=manifest.name,
        settings=settings,
        algorithms_dir=str(Path(algorithms_dir).resolve()) if algorithms_dir else None,
    )
    return write_atomic(folder / dag_file_name(manifest), [text.encode()], fsync=False)
