"""Imports, once, what every Kaapana task would otherwise import again: for Airflow's forkserver.

Each Airflow 3 task is a fresh process that imports the task runner, parses its DAG file (importing the
provider's operators, pydicom, pynetdicom, numpy) and imports the libraries of its step (highdicom,
SimpleITK, nibabel, the search client): about a second per task on a 2-core machine, paid by every task
of a series (see docs/guides/benchmarks_e2e.rst). Airflow 3.3 can start the LocalExecutor's workers from
a ``forkserver`` that imported a list of modules up front; each task process is then a fork of a worker
and finds these modules already imported (shared copy-on-write, not loaded again)::

    [scheduler]
    mp_start_method = forkserver
    mp_forkserver_preload = airflow_provider_kaapana.preload

(``AIRFLOW__SCHEDULER__MP_START_METHOD`` / ``AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD``; see
docs/guides/production.rst). Importing this module imports, and fills the libraries' own caches of
their static tables (:func:`warm_tables`): no configuration, no network, no threads. A library that is
not installed (an optional extra) is skipped.
"""

from __future__ import annotations

import gc
import importlib
import sys

#: Airflow's side of a task process: the worker loop, the task runner (its own import is about 0.4 s), and
#: what the shipped DAG files use of Airflow's standard provider and timetables
AIRFLOW_MODULES = (
    "airflow.executors.local_executor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.sdk.definitions.timetables.trigger",
    "airflow.sdk.bases.sensor",
    "airflow.providers.standard.operators.empty",
    "airflow.providers.standard.operators.hitl",
    "airflow.providers.standard.operators.trigger_dagrun",
    "airflow.providers.standard.decorators.branch_python",
    # what a task process itself imported beyond the above (seen with PRELOADED below): the supervisor,
    # the DAG bag and importer that parse the file, logging set-up, jinja2.ext, tabulate
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.coordinator",
    "airflow.sdk.execution_time.request_handlers",
    "airflow.sdk.execution_time.schema.migrator",
    "airflow.sdk._shared.logging.factory",
    "airflow.sdk._shared.logging.remote",
    "airflow.dag_processing.dagbag",
    "airflow.dag_processing.bundles.local",
    "airflow.dag_processing.importers.python_importer",
    "jinja2.ext",
    "tabulate",
    "wcwidth",
)

#: the libraries the DAG files and the steps import (torch and nnU-Net are left out: they are large, start
#: thread pools, and run in their own pod or subprocess)
LIBRARY_MODULES = (
    "numpy",
    "pydicom",
    "pynetdicom",
    "highdicom",
    "SimpleITK",
    "nibabel",
    "scipy.ndimage",
    "PIL.Image",
    "requests",
    "opensearchpy",
    "elasticsearch",
    "airflow.providers.cncf.kubernetes.operators.pod",
)

#: the provider's DAG factories, which import its operators, hooks and core modules
PROVIDER_MODULES = (
    "airflow_provider_kaapana.dag_factories.ingest",
    "airflow_provider_kaapana.dag_factories.segmentation",
    "airflow_provider_kaapana.dag_factories.send",
    "airflow_provider_kaapana.dag_factories.reindex",
    "airflow_provider_kaapana.dag_factories.evaluation",
    "airflow_provider_kaapana.dag_factories.install_model",
    "airflow_provider_kaapana.dag_factories.processing",
    "airflow_provider_kaapana.dag_factories.federation",
    "airflow_provider_kaapana.dag_factories.cleanup",
    "airflow_provider_kaapana.operators.nnunet_predict",
    # the core modules the operators import in execute()
    "airflow_provider_kaapana.core.index.client",
    "airflow_provider_kaapana.core.index.cohort",
    "airflow_provider_kaapana.core.index.thumbnail",
    "airflow_provider_kaapana.core.net.send",
    "airflow_provider_kaapana.core.net.viewer",
    "airflow_provider_kaapana.core.nifti.convert",
    "airflow_provider_kaapana.core.seg.export",
    "airflow_provider_kaapana.core.quant.inputs",
    "airflow_provider_kaapana.core.quant.statistics",
    "airflow_provider_kaapana.core.quant.sr",
    "airflow_provider_kaapana.core.quant.summary",
    "airflow_provider_kaapana.core.quant.evaluation",
    "airflow_provider_kaapana.core.algorithms.contract",
    "airflow_provider_kaapana.core.algorithms.measurements",
    "airflow_provider_kaapana.core.federation.site",
    "airflow_provider_kaapana.core.federation.coordinator",
)

PRELOAD_MODULES = AIRFLOW_MODULES + LIBRARY_MODULES + PROVIDER_MODULES


def preload(modules: tuple[str, ...] = PRELOAD_MODULES) -> list[str]:
    """Import ``modules``; return those that are not installed (skipped)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


#: highdicom parses its tables of the standard (IODs, modules, attributes: JSON) on first use and caches
#: them; a task that writes or reads a SEG or SR paid that in every process: 1.1 s and 110 MB here
HIGHDICOM_TABLES = (
    "get_sop_class_iod_map",
    "get_iod_module_map",
    "get_module_attribute_map",
    "get_anatomic_region_map",
)


def warm_tables() -> list[str]:
    """Fill highdicom's cached tables (private functions: one that is gone in another release is
    skipped and returned, and the task parses it itself as before)."""
    try:
        from highdicom import _standard_utils
    except ImportError:
        return list(HIGHDICOM_TABLES)
    skipped = []
    for name in HIGHDICOM_TABLES:
        table = getattr(_standard_utils, name, None)
        if table is None:
            skipped.append(name)
        else:
            table()
    return skipped


MISSING = preload()
SKIPPED_TABLES = warm_tables()
# Everything above lives as long as the process and its forks: out of the garbage collector's sight, as
# Airflow's LocalExecutor does before it forks. Else a task process's first full collection walked these
# 630,000 objects (0.27 s here), and a DAG file parse often triggers one: the ingest tasks' parse took
# 0.4-1.2 s after the preload, 5 ms in a process without the collection.
gc.freeze()
#: every module imported once the preload is done: what a task process imports beyond these, it pays for
PRELOADED = frozenset(sys.modules)
