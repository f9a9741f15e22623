"""The DAG files this package ships, and placing them in a DAGs folder (``kaapana dags install``).

A wheel carries them as package data (``airflow_provider_kaapana/dags/``, copied there by setup.py); a
source checkout has them in the repository's ``dags/`` beside the package.
"""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from airflow_provider_kaapana.exceptions import KaapanaError

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def shipped_dags_dir() -> Path:
    """The folder of the shipped DAG files: the installed package's ``dags/``, else the checkout's."""
    for candidate in (_PACKAGE_DIR / "dags", _PACKAGE_DIR.parent / "dags"):
        if any(candidate.glob("kaapana_*.py")):
            return candidate
    raise KaapanaError(f"no shipped DAG files next to {_PACKAGE_DIR} (a broken installation?)")


def shipped_dag_files() -> list[Path]:
    """The shipped DAG files (``kaapana_*.py``), sorted."""
    return sorted(shipped_dags_dir().glob("kaapana_*.py"))


@dataclass
class InstallReport:
    """What :func:`install_dags` did, file by file (names relative to the target folder)."""

    installed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # differ from the shipped file and were not replaced


def install_dags(target: str | Path, *, force: bool = False, dry_run: bool = False) -> InstallReport:
    """Copy the shipped DAG files into ``target`` (created if missing).

    A file that is already there and identical is left alone; one that differs (edited there, or from
    another version) is kept unless ``force``, so a local change is never lost silently.
    """
    target_dir = Path(target).expanduser()
    if target_dir.exists() and not target_dir.is_dir():
        raise KaapanaError(f"{target_dir} exists and is not a folder")
    report = InstallReport()
    for source in shipped_dag_files():
        dest = target_dir / source.name
        if dest.exists() and filecmp.cmp(source, dest, shallow=False):
            report.unchanged.append(source.name)
            continue
        if dest.exists() and not force:
            report.kept.append(source.name)
            continue
        report.installed.append(source.name)
        if not dry_run:
            target_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    return report
