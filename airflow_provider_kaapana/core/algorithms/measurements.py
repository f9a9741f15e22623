"""Measurements of an algorithm -> fields of the source series' index document.

The fields go under ``kaapana.algorithms.<name>`` (with ``version``), beside what the document already
holds; a series not yet indexed is indexed from its DICOM files first, so no measurement is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_provider_kaapana.core.index.client import SearchClient, bulk_index, ensure_index_template
from airflow_provider_kaapana.core.index.document import build_series_document
from airflow_provider_kaapana.exceptions import KaapanaError, SearchIndexError


def index_measurements(
    client: SearchClient,
    index: str,
    series_instance_uid: str,
    algorithm: str,
    version: str,
    measurements: dict[str, Any],
    series_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Merge ``measurements`` into the series' document; returns the ``kaapana.algorithms`` entry written."""
    document = client.get(index, series_instance_uid)
    if document is None:
        if series_dir is None:
            raise KaapanaError(
                f"series {series_instance_uid} is not in index {index} and no series folder was given to index it"
            )
        ensure_index_template(client, index)  # the same mapping as a series the ingest DAG indexed
        doc_id, document, _problems = build_series_document(series_dir)
        if doc_id != series_instance_uid:
            raise KaapanaError(f"{series_dir} holds series {doc_id}, not {series_instance_uid}")
    entry = {"version": version, **measurements}
    kaapana = document.setdefault("kaapana", {})
    kaapana.setdefault("algorithms", {})[algorithm] = entry
    result = bulk_index(client, index, [(series_instance_uid, document)], refresh="wait_for")
    if result.failed:
        raise SearchIndexError(f"index {index} refused series {series_instance_uid}: {result.failed}")
    return entry
