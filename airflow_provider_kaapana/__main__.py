"""``python -m airflow_provider_kaapana`` is the ``kaapana`` command."""

from airflow_provider_kaapana.cli import main

raise SystemExit(main())
