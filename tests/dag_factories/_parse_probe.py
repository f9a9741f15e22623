"""Parse the shipped DAG folder in a fresh interpreter and report what parsing did besides building DAGs.

Run by test_dag_integrity.py as ``python _parse_probe.py DAGS_FOLDER``; prints one JSON object:
``network`` (attempted connections), ``lookups`` (Variable/Connection reads), ``reads`` (files opened
outside the DAG folder and Python's own install), ``config_changes`` (third-party library settings that
differ after parsing: logger levels, pynetdicom's and pydicom's config modules), ``import_errors``,
``dags``. A fresh interpreter, so an import-time side effect cannot hide behind an earlier import.
"""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import socket
import sys
import sysconfig
from pathlib import Path

DAGS_FOLDER = Path(sys.argv[1]).resolve()
found: dict[str, list[str]] = {"network": [], "lookups": [], "reads": []}

# Reading Python itself (stdlib, site-packages, this checkout's modules) is importing, not I/O of a DAG.
ALLOWED_ROOTS = [DAGS_FOLDER, Path(sysconfig.get_paths()["stdlib"]).resolve(), Path(sys.prefix).resolve()]
ALLOWED_ROOTS += [Path(p).resolve() for p in sys.path if p and Path(p).is_dir()]
ALLOWED_ROOTS += [Path(os.environ["AIRFLOW_HOME"]).resolve()]  # Airflow's own config and DB
ALLOWED_FILES = {Path("/dev/null"), Path("/etc/localtime")}


def _allowed(path: Path) -> bool:
    if path in ALLOWED_FILES or path.suffix in {".py", ".pyc", ".so", ".pth", ".typed"}:
        return True
    return any(path == root or root in path.parents for root in ALLOWED_ROOTS)


_real_open = builtins.open


def guarded_open(file, *args, **kwargs):
    if isinstance(file, (str, os.PathLike)):
        path = Path(os.fspath(file)).resolve()
        if not _allowed(path):
            found["reads"].append(str(path))
    return _real_open(file, *args, **kwargs)


def refuse_network(*args, **kwargs):
    found["network"].append(repr(args)[:200])
    raise OSError("network access at DAG parse time")


def snapshot() -> dict[str, object]:
    state: dict[str, object] = {}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and not name.startswith("airflow"):
            state[f"logger:{name}"] = logger.level
    for module_name in ("pynetdicom._config", "pydicom.config"):
        module = sys.modules.get(module_name)
        if module is not None:
            for key, value in vars(module).items():
                if key.isupper() or key.islower() and not key.startswith("_"):
                    if isinstance(value, (bool, int, float, str, type(None))):
                        state[f"{module_name}.{key}"] = value
    return state


# The libraries a DAG could configure are imported first, so a change made while parsing shows as a diff.
import pydicom.config  # noqa: E402,F401
import pynetdicom._config  # noqa: E402,F401
from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import BaseHook, Variable  # noqa: E402


def no_lookup(*args, **kwargs):
    found["lookups"].append(repr(args)[:200])
    raise RuntimeError("Variable/Connection lookup at DAG parse time")


before = snapshot()
socket.socket.connect = refuse_network  # type: ignore[method-assign]
socket.socket.connect_ex = refuse_network  # type: ignore[method-assign]
socket.create_connection = refuse_network  # type: ignore[assignment]
Variable.get = no_lookup  # type: ignore[method-assign]
BaseHook.get_connection = no_lookup  # type: ignore[method-assign]
builtins.open = guarded_open
io.open = guarded_open
try:
    bag = DagBag(dag_folder=str(DAGS_FOLDER))
finally:
    builtins.open = _real_open
    io.open = _real_open
after = snapshot()
changes = {
    key: [before.get(key), after.get(key)] for key in after if key in before and before[key] != after[key]
}
print(
    json.dumps(
        {
            **found,
            "config_changes": changes,
            "import_errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
            "dags": {dag_id: sorted(dag.tags or []) for dag_id, dag in bag.dags.items()},
            "descriptions": {dag_id: dag.description for dag_id, dag in bag.dags.items()},
        }
    )
)
