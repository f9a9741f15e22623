"""``kaapana demo`` options that are refused before anything starts."""

from __future__ import annotations

from airflow_provider_kaapana.cli import main


def test_report_needs_federated(capsys):
    assert main(["demo", "--report", "/tmp/report.json"]) == 2
    assert "--report needs --federated" in capsys.readouterr().err


def test_federated_demo_cannot_keep(capsys):
    assert main(["demo", "--federated", "--keep"]) == 2
    assert "--keep is not supported with --federated" in capsys.readouterr().err
