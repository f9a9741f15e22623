"""Provider metadata returned through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_kaapana import __version__

# Each hook module that defines a connection type is listed here; Airflow uses it for the
# connection form and ``airflow providers hooks``.
CONNECTION_TYPES: list[dict[str, str]] = [
    {"connection-type": "kaapana_pacs", "hook-class-name": "airflow_provider_kaapana.hooks.pacs.PacsHook"},
    {
        "connection-type": "kaapana_search",
        "hook-class-name": "airflow_provider_kaapana.hooks.search.SearchHook",
    },
    {
        "connection-type": "kaapana_federation",
        "hook-class-name": "airflow_provider_kaapana.hooks.federation.FederationHook",
    },
    {
        "connection-type": "kaapana_federation_coordinator",
        "hook-class-name": "airflow_provider_kaapana.hooks.federation.FederationCoordinatorHook",
    },
]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-kaapana",
        "name": "Kaapana",
        "description": (
            "Medical-imaging processing: DICOM receive/send against a PACS, DICOM metadata search in "
            "Elasticsearch/OpenSearch, NIfTI conversion, nnU-Net inference and DICOM SEG export."
        ),
        "versions": [__version__],
        "connection-types": list(CONNECTION_TYPES),
    }
