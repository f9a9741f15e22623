"""Shared fixtures: real Orthanc, real osmem-server, an Airflow home with a migrated DB, synthetic series.

Services run on free ports and are ended by their own pid. A test that needs a missing tool FAILS with
the install hint (CI must never silently skip), unless it is marked ``optional``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: point it at a private home before any test
# module imports airflow. Nothing here touches the user's ~/airflow.
_LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="kaapana-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
# dag.test() looks DAGs up through the configured bundles: the shipped dags/ and the tests' own DAG files.
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(
    [
        {"name": "dags-folder", "classpath": _LOCAL_BUNDLE, "kwargs": {"path": str(REPO_ROOT / "dags")}},
        {
            "name": "test-dags",
            "classpath": _LOCAL_BUNDLE,
            "kwargs": {"path": str(REPO_ROOT / "tests" / "dags")},
        },
    ]
)
# subprocesses (airflow CLI, kaapana CLI) import this checkout, not another copy of the package
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

from airflow_provider_kaapana.testing.local_services import (  # noqa: E402
    Orthanc,
    Osmem,
    ServiceError,
    find_tool,
)
from airflow_provider_kaapana.testing.synthetic import SyntheticSeries, generate_series  # noqa: E402


def require_tool(name: str, request: pytest.FixtureRequest | None = None) -> str:
    """Path of a tool; a missing tool fails the test with its install hint (skips only ``optional`` tests)."""
    try:
        return find_tool(name)
    except ServiceError as exc:
        if request is not None and request.node.get_closest_marker("optional"):
            pytest.skip(str(exc))
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def tool(request: pytest.FixtureRequest):
    """``tool("storescu")`` -> path, failing with the install hint when it is missing."""
    return lambda name: require_tool(name, request)


def _start(service):
    try:
        return service.start()
    except ServiceError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc + DICOMweb, shared by the session (tests use their own UIDs or ``clear()`` it)."""
    server = _start(Orthanc(workdir=tmp_path_factory.mktemp("orthanc")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_auth(tmp_path_factory: pytest.TempPathFactory):
    """A real Orthanc that demands HTTP basic auth (user ``kaapana``, password ``s3cret-pw``)."""
    server = _start(
        Orthanc(workdir=tmp_path_factory.mktemp("orthanc-auth"), username="kaapana", password="s3cret-pw")
    )
    yield server
    server.stop()


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory):
    """Start extra Orthancs with custom settings (modalities, AE title); all stopped after the test."""
    started: list[Orthanc] = []

    def make(**kwargs) -> Orthanc:
        server = _start(Orthanc(workdir=tmp_path_factory.mktemp("orthanc-x"), **kwargs))
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def osmem():
    """A real osmem-server (OpenSearch-compatible)."""
    server = _start(Osmem())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """An Airflow home whose metadata DB is migrated, so ``dag.test()`` runs. Returns the home path."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return _AIRFLOW_HOME


@pytest.fixture
def synthetic_series(tmp_path: Path):
    """``synthetic_series(**SeriesSpec fields)`` -> :class:`SyntheticSeries` written under tmp_path."""
    counter = iter(range(10_000))

    def make(subdir: str | None = None, **kwargs) -> SyntheticSeries:
        return generate_series(tmp_path / (subdir or f"series{next(counter)}"), **kwargs)

    return make


@pytest.fixture
def ct_series(synthetic_series) -> SyntheticSeries:
    """A small axial CT with a sphere of label 1."""
    return synthetic_series("ct")


@pytest.fixture(scope="session")
def pydicom_test_files() -> list[Path]:
    """pydicom's bundled test files, as paths: read from its package folder, never downloaded.

    (``pydicom.data.get_testdata_files`` would try to download the external ones first.)
    """
    import pydicom.data

    root = Path(pydicom.data.__file__).parent
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in {".dcm", ""} and p.parent.name != "__pycache__"
    )
    return [p for p in files if p.name not in {"README", "LICENSE"}]


def pytest_collection_modifyitems(config, items):
    """Tests under tests/e2e/ carry the ``e2e`` marker, so ``-m "not e2e"`` is the fast loop."""
    e2e_root = Path(__file__).parent / "e2e"
    for item in items:
        if e2e_root in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


# --- issue 6 fixtures ---
@pytest.fixture(scope="session")
def tiny_nnunet_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real nnU-Net model (fold 0, labels background/sphere) trained on synthetic spheres, on CPU.

    Cached in ``$KAAPANA_TINY_MODEL_CACHE`` or ``~/.cache/kaapana/tiny-model``: the first session trains
    for about 1.5 minutes, later sessions reuse it.
    """
    from airflow_provider_kaapana.testing.tiny_model import train_tiny_model

    return train_tiny_model(
        tmp_path_factory.mktemp("tiny-model-work"), cache_dir=os.environ.get("KAAPANA_TINY_MODEL_CACHE")
    )


# --- issue 8 fixtures ---

E2E_LISTENER_USER = ("listener", "listener-pw")  # role USER: may trigger DAG runs
E2E_VIEWER_USER = ("viewer", "viewer-pw")  # role VIEWER: may read, may not trigger


@pytest.fixture(scope="session")
def airflow_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real Airflow 3 (api-server + scheduler + dag-processor, LocalExecutor) on a fresh PostgreSQL DB.

    DAG bundles: the repo's ``dags/`` (``dags-folder``), ``tests/dags/`` and an empty scratch folder,
    ``airflow_cluster.dag_folders[-1]``, for DAG files a test writes at run time. Call
    ``airflow_cluster.wait_for_dag(dag_id)`` (parsed + unpaused) before ``trigger(dag_id, conf)``; then
    ``wait_for_run(dag_id, run_id)``. Besides the admin (``airflow_cluster.token``) it knows the users
    ``E2E_LISTENER_USER`` (role USER) and ``E2E_VIEWER_USER`` (role VIEWER). The database is dropped
    afterwards.
    """
    from airflow_provider_kaapana.testing.local_airflow import (
        LocalAirflow,
        create_postgres_database,
        drop_postgres_database,
    )

    try:
        db_url = create_postgres_database()
    except Exception as exc:  # psycopg2.OperationalError and friends
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 (user postgres) is needed for the e2e Airflow: {exc}")
    cluster = LocalAirflow(
        home=tmp_path_factory.mktemp("airflow-e2e"),
        dags_folder=[
            REPO_ROOT / "dags",
            REPO_ROOT / "tests" / "dags",
            tmp_path_factory.mktemp("scratch-dags"),
        ],
        db_url=db_url,
        users={
            E2E_LISTENER_USER[0]: ("user", E2E_LISTENER_USER[1]),
            E2E_VIEWER_USER[0]: ("viewer", E2E_VIEWER_USER[1]),
        },
    )
    try:
        try:
            cluster.start()
        except ServiceError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield cluster
    finally:
        cluster.stop()
        drop_postgres_database(db_url)
