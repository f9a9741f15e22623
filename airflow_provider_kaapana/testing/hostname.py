"""Airflow's ``[core] hostname_callable`` for the local harness: each Celery worker records its own name.

Two workers on one machine share one FQDN, so a task instance's ``hostname`` would not say which ran it.
:class:`~airflow_provider_kaapana.testing.local_airflow.LocalAirflow` sets
``AIRFLOW__CORE__HOSTNAME_CALLABLE`` to :func:`worker_hostname` and gives each worker its name in
``KAAPANA_WORKER_NAME``; the other components fall back to the FQDN, as Airflow's default does.
"""

from __future__ import annotations

import os
import socket

WORKER_NAME_ENV = "KAAPANA_WORKER_NAME"
HOSTNAME_CALLABLE = f"{__name__}.worker_hostname"


def worker_hostname() -> str:
    """``$KAAPANA_WORKER_NAME`` when set, else ``socket.getfqdn()``."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()
