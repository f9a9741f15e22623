"""The layering of docs/architecture.rst is what the code does: contracts hold, every room is documented."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import airflow_provider_kaapana

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(airflow_provider_kaapana.__file__).parent
ARCHITECTURE = (ROOT / "docs" / "architecture.rst").read_text()


def subpackages() -> list[str]:
    return sorted(
        ".".join(p.parent.relative_to(PACKAGE.parent).parts)
        for p in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in p.parts and p.parent != PACKAGE
    )


def test_every_subpackage_says_what_it_is_for_and_is_named_in_the_architecture_page():
    for name in subpackages():
        init = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), (
            f"{name} has no docstring saying what it is for"
        )
        short = name.removeprefix("airflow_provider_kaapana.")
        assert f"``{short}``" in ARCHITECTURE or f"``{name}``" in ARCHITECTURE, (
            f"docs/architecture.rst does not name {name}"
        )


def test_core_modules_have_docstrings():
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        if path.name != "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), (
                f"{path.relative_to(ROOT)} has no docstring"
            )


def test_import_contracts_hold():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contracts = {section.split(":")[-1] for section in config.sections() if ":contract:" in section}
    assert {"layers", "core-airflow-free", "production-not-harness", "commands-no-airflow"} <= contracts
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is not installed (it is in the test extra)"
    result = subprocess.run(
        [lint_imports, "--no-logo", "--no-cache", str(ROOT / ".importlinter")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"{len(contracts)} kept, 0 broken" in result.stdout
