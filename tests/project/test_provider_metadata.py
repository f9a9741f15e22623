"""What Airflow itself shows of the provider: ``airflow providers get --full`` (the real CLI) and the
connection forms it draws from ``conn-fields`` / ``ui-field-behaviour``."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from importlib import import_module

import pytest

from airflow_provider_kaapana import operators
from airflow_provider_kaapana.get_provider_info import get_provider_info


@pytest.fixture(scope="module")
def provider_cli(airflow_db) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow",
            "providers",
            "get",
            "airflow-provider-kaapana",
            "--full",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Airflow may log a line to stdout before the JSON (unit test configuration loaded ...)
    (info,) = json.loads(result.stdout[result.stdout.index("[{") :])
    return info


def test_airflow_lists_forms_documentation_operators_and_hooks(provider_cli):
    forms = {c["connection-type"]: c for c in provider_cli["connection-types"]}
    pacs, search = forms["kaapana_pacs"], forms["kaapana_search"]
    assert {"called_ae", "calling_ae", "dicomweb_url", "auth_type", "move_destination"} <= set(
        pacs["conn-fields"]
    )
    assert {"flavor", "verify_certs", "ca_certs", "api_key", "timeout"} <= set(search["conn-fields"])
    assert pacs["ui-field-behaviour"]["relabeling"]["port"] == "DIMSE port"
    assert "schema" in pacs["ui-field-behaviour"]["hidden-fields"]
    assert pacs["hook-name"] == "Kaapana PACS (DIMSE + DICOMweb)"
    assert provider_cli["documentation-url"].startswith("https://")
    operator_modules = {m for entry in provider_cli["operators"] for m in entry["python-modules"]}
    assert "airflow_provider_kaapana.operators.nnunet_predict" in operator_modules
    hook_modules = {m for entry in provider_cli["hooks"] for m in entry["python-modules"]}
    assert {"airflow_provider_kaapana.hooks.pacs", "airflow_provider_kaapana.hooks.search"} <= hook_modules
    integrations = {i["integration-name"] for i in provider_cli["integrations"]}
    for entry in provider_cli["operators"] + provider_cli["hooks"]:
        assert entry["integration-name"] in integrations


def test_every_operator_module_is_listed_and_every_listed_module_imports():
    info = get_provider_info()
    listed = {m for entry in info["operators"] for m in entry["python-modules"]}
    shipped = {
        f"{operators.__name__}.{m.name}"
        for m in pkgutil.iter_modules(operators.__path__)
        if m.name not in {"base", "links"} and not m.name.startswith("_")  # shared: base class, extra links
    }
    assert listed == shipped
    for module in listed | {m for entry in info["hooks"] for m in entry["python-modules"]}:
        import_module(module)


def test_hook_names_and_forms_have_one_source():
    from airflow_provider_kaapana.hooks.federation import FederationCoordinatorHook, FederationHook
    from airflow_provider_kaapana.hooks.pacs import PacsHook
    from airflow_provider_kaapana.hooks.search import SearchHook

    by_type = {c["connection-type"]: c for c in get_provider_info()["connection-types"]}
    for hook in (PacsHook, SearchHook, FederationHook, FederationCoordinatorHook):
        entry = by_type[hook.conn_type]
        assert entry["hook-name"] == hook.hook_name
        assert entry["hook-class-name"] == f"{hook.__module__}.{hook.__name__}"
    for hook in (PacsHook, SearchHook):
        legacy = hook.get_ui_field_behaviour()
        assert legacy["relabeling"] == by_type[hook.conn_type]["ui-field-behaviour"]["relabeling"]
        assert legacy["hidden_fields"] == by_type[hook.conn_type]["ui-field-behaviour"]["hidden-fields"]


def test_airflow_builds_the_forms_from_provider_info():
    """The providers manager (what the UI's connection form endpoint reads) has our fields, prefixed,
    with labels as titles, and the api_key marked sensitive."""
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    widgets = manager.connection_form_widgets
    called_ae = widgets["extra__kaapana_pacs__called_ae"]
    assert called_ae.field["schema"]["title"] == "Called AE title"
    assert called_ae.field["value"] == "DCM4CHEE"
    assert widgets["extra__kaapana_search__api_key"].is_sensitive
    behaviour = manager.field_behaviours["kaapana_search"]
    assert behaviour["relabeling"]["host"] == "Host or URL"


def test_package_metadata_names_changelog_and_bug_tracker():
    from importlib.metadata import metadata

    urls = dict(u.split(", ", 1) for u in metadata("airflow-provider-kaapana").get_all("Project-URL") or [])
    assert {"Documentation", "Changelog", "Bug Tracker"} <= set(urls)


def test_installation_page_names_every_connection_field_and_the_test_button():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "installation.rst").read_text()
    for entry in get_provider_info()["connection-types"]:
        missing = [name for name in entry.get("conn-fields", {}) if f"``{name}``" not in text]
        assert not missing, (
            f"docs/installation.rst does not describe {entry['connection-type']} fields {missing}"
        )
        default_id = entry["connection-type"] + (
            "" if "coordinator" in entry["connection-type"] else "_default"
        )
        assert f"``{default_id}``" in text
    assert "test_connection = Enabled" in text and "kaapana dags install" in text


def test_pacs_form_timeouts_default_to_the_dimse_default():
    """The form cannot import core.net.dimse (pynetdicom is heavy for provider info): its literal
    defaults must stay those of the DIMSE code."""
    from airflow_provider_kaapana.core.net.dimse import DEFAULT_TIMEOUT
    from airflow_provider_kaapana.hooks.connection_forms import PACS_CONN_FIELDS

    for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
        assert PACS_CONN_FIELDS[name]["schema"]["default"] == DEFAULT_TIMEOUT
