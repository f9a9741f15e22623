"""Configured variants of the DAG library, built with its factories, for ``tests/dag_factories/test_dag_library.py``.

Test-only code: the settings come from environment variables the tests set (``KAAPANA_TEST_LIB_*``),
with harmless defaults so the file always parses.
"""

from __future__ import annotations

import os

from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.evaluation import create_segmentation_evaluation_dag
from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag
from airflow_provider_kaapana.dag_factories.install_model import create_install_model_dag
from airflow_provider_kaapana.dag_factories.reindex import create_reindex_dag
from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag
from airflow_provider_kaapana.dag_factories.send import create_send_dag


def settings_from_env() -> PipelineSettings:
    return PipelineSettings(
        workspace_base=os.environ.get("KAAPANA_TEST_LIB_WORKSPACE", "/tmp/kaapana-test-lib/workspace"),
        pacs_conn_id="test_lib_pacs",
        search_conn_id="test_lib_search",
        index=os.environ.get("KAAPANA_TEST_LIB_INDEX", "kaapana-test-lib"),
        models_dir=os.environ.get("KAAPANA_TEST_LIB_MODELS_DIR", "/tmp/kaapana-test-lib/models"),
        predict_mode="local",
        default_args={"retries": 0},
    )


settings = settings_from_env()
ingest = create_ingest_dag(dag_id="test_lib_ingest", settings=settings)
ingest_stow = create_ingest_dag(dag_id="test_lib_ingest_stow", settings=settings, send_method="stow-rs")
reindex = create_reindex_dag(dag_id="test_lib_reindex", settings=settings)
send = create_send_dag(dag_id="test_lib_send", settings=settings)
install_model = create_install_model_dag(dag_id="test_lib_install_model", settings=settings)
segmentation = create_segmentation_dag(dag_id="test_lib_segmentation", settings=settings)
evaluation = create_segmentation_evaluation_dag(dag_id="test_lib_evaluation", settings=settings)
