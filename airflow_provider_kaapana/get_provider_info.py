"""Provider metadata returned through the ``apache_airflow_provider`` entry point.

Plain data, as the official providers' generated ``get_provider_info.py``: Airflow reads it in every
process, draws the connection forms from ``conn-fields`` / ``ui-field-behaviour`` without importing a
hook, and ``airflow providers get airflow-provider-kaapana --full`` prints it. The documentation URL is
the ``Documentation`` project URL of the package metadata (setup.cfg), which Airflow adds itself.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_kaapana import __version__
from airflow_provider_kaapana.hooks.connection_forms import (
    PACS_CONN_FIELDS,
    PACS_CONN_TYPE,
    PACS_UI_FIELD_BEHAVIOUR,
    SEARCH_CONN_FIELDS,
    SEARCH_CONN_TYPE,
    SEARCH_UI_FIELD_BEHAVIOUR,
    connection_type,
)

_PKG = "airflow_provider_kaapana"
DOCS_URL = "https://github.com/kaapana-provider/airflow-provider-kaapana/blob/main/docs"

PACS = "DICOM PACS (DIMSE and DICOMweb)"
SEARCH = "Elasticsearch / OpenSearch (DICOM metadata index)"
IMAGING = "Medical image processing (NIfTI, nnU-Net, DICOM SEG)"
FEDERATION = "Kaapana federation"
PIPELINES = "Kaapana pipelines (DAG library)"

INTEGRATIONS: list[dict[str, Any]] = [
    {
        "integration-name": PACS,
        "external-doc-url": "https://www.dicomstandard.org/current",
        "how-to-guide": [f"{DOCS_URL}/connections/pacs.rst"],
        "tags": ["software"],
    },
    {
        "integration-name": SEARCH,
        "external-doc-url": "https://opensearch.org/docs/latest/",
        "how-to-guide": [f"{DOCS_URL}/connections/search.rst"],
        "tags": ["software"],
    },
    {
        "integration-name": IMAGING,
        "external-doc-url": "https://github.com/MIC-DKFZ/nnUNet",
        "how-to-guide": [f"{DOCS_URL}/dags/segmentation.rst"],
        "tags": ["software"],
    },
    {
        "integration-name": FEDERATION,
        "external-doc-url": f"{DOCS_URL}/guides/federation.rst",
        "tags": ["software"],
    },
    {
        "integration-name": PIPELINES,
        "external-doc-url": f"{DOCS_URL}/installation.rst",
        "tags": ["software"],
    },
]

OPERATORS: list[dict[str, Any]] = [
    {
        "integration-name": PACS,
        "python-modules": [
            f"{_PKG}.operators.dicom_receive",
            f"{_PKG}.operators.dicom_send",
            f"{_PKG}.operators.dicom_deidentify",
        ],
    },
    {
        "integration-name": SEARCH,
        "python-modules": [f"{_PKG}.operators.elastic_index", f"{_PKG}.operators.cohort"],
    },
    {
        "integration-name": IMAGING,
        "python-modules": [
            f"{_PKG}.operators.nifti_convert",
            f"{_PKG}.operators.nnunet_predict",
            f"{_PKG}.operators.dicom_seg_export",
            f"{_PKG}.operators.segment_statistics",
            f"{_PKG}.operators.segmentation_evaluation",
            f"{_PKG}.operators.container_processing",
            f"{_PKG}.operators.pods",
        ],
    },
    {"integration-name": FEDERATION, "python-modules": [f"{_PKG}.operators.federation"]},
]

HOOKS: list[dict[str, Any]] = [
    {"integration-name": PACS, "python-modules": [f"{_PKG}.hooks.pacs"]},
    {"integration-name": SEARCH, "python-modules": [f"{_PKG}.hooks.search"]},
    {"integration-name": FEDERATION, "python-modules": [f"{_PKG}.hooks.federation"]},
]

CONNECTION_TYPES: list[dict[str, Any]] = [
    connection_type(
        PACS_CONN_TYPE,
        f"{_PKG}.hooks.pacs.PacsHook",
        "Kaapana PACS (DIMSE + DICOMweb)",
        PACS_CONN_FIELDS,
        PACS_UI_FIELD_BEHAVIOUR,
    ),
    connection_type(
        SEARCH_CONN_TYPE,
        f"{_PKG}.hooks.search.SearchHook",
        "Kaapana search (Elasticsearch / OpenSearch)",
        SEARCH_CONN_FIELDS,
        SEARCH_UI_FIELD_BEHAVIOUR,
    ),
    {
        "connection-type": "kaapana_federation",
        "hook-class-name": f"{_PKG}.hooks.federation.FederationHook",
        "hook-name": "Kaapana federation (a site's coordinator)",
    },
    {
        "connection-type": "kaapana_federation_coordinator",
        "hook-class-name": f"{_PKG}.hooks.federation.FederationCoordinatorHook",
        "hook-name": "Kaapana federation (the coordinator's key)",
    },
]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-kaapana",
        "name": "Kaapana",
        "description": (
            "Medical-imaging processing and federated analysis: DICOM receive (DIMSE, STOW-RS) and send "
            "against a PACS, DICOM metadata search in Elasticsearch/OpenSearch, NIfTI conversion, nnU-Net "
            "and bring-your-own-algorithm containers, DICOM SEG and SR, quantification and evaluation, "
            "de-identification (PS3.15), federated statistics with a site-side egress guard."
        ),
        "versions": [__version__],
        "integrations": INTEGRATIONS,
        "operators": OPERATORS,
        "hooks": HOOKS,
        "connection-types": CONNECTION_TYPES,
        # the "Viewer" button of the send, SEG, SR and index tasks (Airflow 3 keeps each link's URL in XCom
        # when the task ends; listed here as the official providers list theirs)
        "extra-links": [f"{_PKG}.operators.links.ViewerLink"],
        "bundles": [{"integration-name": PIPELINES, "python-modules": [f"{_PKG}.dag_factories.bundle"]}],
        "config": {
            "kaapana": {
                "description": "Settings of the Kaapana provider.",
                "options": {
                    "algorithms_dir": {
                        "description": "The folder of installed bring-your-own-algorithm manifests "
                        "(overrides the KAAPANA_ALGORITHMS_DIR environment variable).",
                        "version_added": None,
                        "type": "string",
                        "example": "/algorithms",
                        "default": None,
                    }
                },
            }
        },
    }
