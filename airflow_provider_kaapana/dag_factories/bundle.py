"""``KaapanaDagBundle``: the shipped DAG files as an Airflow 3 DAG bundle, straight from the package.

Add it to ``[dag_processor] dag_bundle_config_list`` and the DAG processor parses the installed
package's DAG files; a ``pip install --upgrade`` brings new versions of them. To change settings
(connection ids, predict mode...) copy them with ``kaapana dags install DIR`` instead and edit the copies.
"""

from __future__ import annotations

from typing import Any

from airflow.dag_processing.bundles.local import LocalDagBundle

from airflow_provider_kaapana.core.dag_files import shipped_dags_dir


class KaapanaDagBundle(LocalDagBundle):
    """A :class:`~airflow.dag_processing.bundles.local.LocalDagBundle` whose default path is the folder
    of the shipped DAG files (``kaapana dags path``)."""

    def __init__(self, *, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(path=path or str(shipped_dags_dir()), **kwargs)
