"""Subcommands of the ``kaapana`` CLI, one module per step (discovered by :mod:`airflow_provider_kaapana.cli`)."""
