"""Sphinx configuration for airflow-provider-kaapana."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_kaapana import __version__  # noqa: E402

project = "airflow-provider-kaapana"
author = "airflow-provider-kaapana contributors"
copyright = "2026, " + author
version = release = __version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_typehints = "description"
autodoc_mock_imports = ["torch", "nnunetv2"]
nitpicky = False
