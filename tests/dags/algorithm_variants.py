"""The example algorithms' DAGs, for ``tests/dag_factories/test_processing_dag.py`` (``dag.test()`` finds
its DAGs in the configured DAG folder). Settings from ``KAAPANA_TEST_ALG_*`` variables, harmless defaults."""

from __future__ import annotations

import os
from pathlib import Path

from airflow_provider_kaapana.core.algorithms.manifest import load_manifest
from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.processing import create_processing_dag

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"

settings = PipelineSettings(
    workspace_base=os.environ.get("KAAPANA_TEST_ALG_WORKSPACE", "/tmp/kaapana-test-alg/workspace"),
    pacs_conn_id="test_alg_pacs",
    search_conn_id="test_alg_search",
    index=os.environ.get("KAAPANA_TEST_ALG_INDEX", "kaapana-test-alg"),
    predict_mode="local",
    default_args={"retries": 0},
)
threshold = create_processing_dag(
    load_manifest(EXAMPLES / "threshold-segmenter"), settings, dag_id="test_alg_threshold"
)
measure = create_processing_dag(
    load_manifest(EXAMPLES / "measure-intensity"), settings, dag_id="test_alg_measure"
)
