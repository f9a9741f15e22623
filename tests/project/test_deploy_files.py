"""The production deployment files: the compose file validates, the Helm values hold what the docs promise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose" / "docker-compose.yml"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "airflow-values.yaml"
K8S_MANIFESTS = [
    REPO_ROOT / "deploy" / "helm" / "kaapana-secrets.example.yaml",
    REPO_ROOT / "deploy" / "helm" / "kaapana-data-pvc.yaml",
]
DATA_MOUNT = "/data/kaapana"
COMPOSE_ENV = {
    "DCM4CHEE_LDAP_PASSWORD": "ldap-pw",
    "DCM4CHEE_DB_PASSWORD": "db-pw",
    "OPENSEARCH_ADMIN_PASSWORD": "Os-admin-pw-1!",
    "AIRFLOW_URL": "https://airflow.example.org",
    "KAAPANA_LISTENER_PASSWORD": "listener-pw",
    "KAAPANA_DATA_DIR": "/srv/kaapana",
}


def compose_config(docker_compose: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    empty_env_file = tmp_path / "empty.env"  # a developer's deploy/compose/.env must not change the result
    empty_env_file.write_text("")
    return subprocess.run(
        [docker_compose, "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
    )


@pytest.fixture
def compose(tool, tmp_path) -> dict:
    result = compose_config(tool("docker-compose"), tmp_path, COMPOSE_ENV)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_has_pacs_search_and_listener_services(compose):
    services = compose["services"]
    assert set(services) == {"ldap", "db", "arc", "opensearch", "opensearch-dashboards", "listener"}
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":[0-9][\w.-]*$", image) and not image.endswith(":latest"), (
            f"{name}: unpinned {image}"
        )
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    arc = services["arc"]
    assert {(p["published"], p["target"]) for p in arc["ports"]} >= {(8080, 8080), (11112, 11112)}
    assert "DCM4CHEE/rs" in " ".join(arc["healthcheck"]["test"])
    assert set(arc["depends_on"]) == {"ldap", "db"}
    assert services["opensearch-dashboards"]["depends_on"]["opensearch"]["condition"] == "service_healthy"
    # the stateful services keep their data in named volumes (Dashboards keeps its objects in OpenSearch)
    for name in ("ldap", "db", "arc", "opensearch"):
        named = {v.split(":")[0] for v in services[name]["volumes"]} & set(compose["volumes"])
        assert named, f"{name} keeps its state in no named volume"


def test_compose_listener_runs_kaapana_listen_triggering_ingest(compose):
    listener = compose["services"]["listener"]
    assert listener["entrypoint"] == ["kaapana"]  # the Airflow image would prefix `airflow` otherwise
    command = listener["command"]
    assert command[0] == "listen"
    options = dict(zip(command[1::2], command[2::2]))
    assert options["--airflow-url"] == COMPOSE_ENV["AIRFLOW_URL"]
    assert options["--dag-id"] == "kaapana_ingest"
    assert options["--ae-title"] == "KAAPANA"
    assert options["--landing"].startswith(DATA_MOUNT + "/")
    assert f"{COMPOSE_ENV['KAAPANA_DATA_DIR']}:{DATA_MOUNT}:rw" in listener["volumes"]
    assert listener["environment"]["KAAPANA_AIRFLOW_PASSWORD"] == COMPOSE_ENV["KAAPANA_LISTENER_PASSWORD"]
    assert {(p["published"], p["target"]) for p in listener["ports"]} == {(11113, int(options["--port"]))}


def test_compose_refuses_to_run_without_the_secrets(tool, tmp_path):
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "OPENSEARCH_ADMIN_PASSWORD"}
    result = compose_config(tool("docker-compose"), tmp_path, env)
    assert result.returncode != 0
    assert "set OPENSEARCH_ADMIN_PASSWORD" in result.stderr


def test_helm_values_hold_what_the_production_guide_documents():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["allowPodLaunching"] is True
    assert values["airflowVersion"].startswith("3.")
    assert values["images"]["airflow"]["tag"].startswith(values["airflowVersion"] + "-kaapana")
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    assert values["config"]["core"]["auth_manager"].endswith("FabAuthManager")
    secrets = {s["envName"]: (s["secretName"], s["secretKey"]) for s in values["secret"]}
    assert secrets == {
        "AIRFLOW_CONN_KAAPANA_PACS": ("kaapana-connections", "kaapana_pacs"),
        "AIRFLOW_CONN_KAAPANA_SEARCH": ("kaapana-connections", "kaapana_search"),
    }
    workers = values["workers"]
    mount = {m["name"]: m["mountPath"] for m in workers["extraVolumeMounts"]}
    volume = {v["name"]: v for v in workers["extraVolumes"]}
    assert mount == {"kaapana-data": DATA_MOUNT}
    claim = volume["kaapana-data"]["persistentVolumeClaim"]["claimName"]

    manifests = {doc["kind"]: doc for path in K8S_MANIFESTS for doc in yaml.safe_load_all(path.read_text())}
    assert manifests["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert manifests["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    connections = manifests["Secret"]["stringData"]
    assert set(connections) == {key for _, key in secrets.values()}
    pacs = json.loads(connections["kaapana_pacs"])
    assert pacs["port"] == 11112 and pacs["extra"]["called_aet"] == "DCM4CHEE"
    assert pacs["extra"]["dicomweb_url"].endswith("/dcm4chee-arc/aets/DCM4CHEE/rs")
    assert json.loads(connections["kaapana_search"])["extra"]["flavor"] in {"opensearch", "elasticsearch"}


def test_kubernetes_manifests_validate_strictly():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *map(str, K8S_MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_guide_includes_the_deploy_files():
    guide = (REPO_ROOT / "docs" / "guides" / "production.rst").read_text()
    for path in (COMPOSE_FILE, HELM_VALUES, *K8S_MANIFESTS):
        assert f".. literalinclude:: ../../{path.relative_to(REPO_ROOT)}" in guide


CELERY_VALUES = REPO_ROOT / "deploy" / "helm" / "airflow-values-celery.yaml"
POD_TEMPLATE = REPO_ROOT / "deploy" / "helm" / "kaapana-pod-template.yaml"


def test_celery_overlay_serves_both_queues_on_the_shared_workspace():
    base = yaml.safe_load(HELM_VALUES.read_text())
    celery = yaml.safe_load(CELERY_VALUES.read_text())
    assert celery["executor"] == "CeleryExecutor" and celery["redis"]["enabled"] is True
    workers = celery["workers"]
    assert "--queues default,gpu" in " ".join(workers["args"])
    # the same claim at the same path as the KubernetesExecutor's workers (absolute paths in confs)
    assert workers["extraVolumes"] == base["workers"]["extraVolumes"]
    assert workers["extraVolumeMounts"] == base["workers"]["extraVolumeMounts"]
    # the overlay changes the executor, never where secrets or the metadata DB come from
    assert not {"secret", "data", "images", "postgresql"} & set(celery)


def test_pod_template_mounts_the_shared_workspace():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(POD_TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pod = yaml.safe_load(POD_TEMPLATE.read_text())
    base = pod["spec"]["containers"][0]
    assert base["name"] == "base"  # the KubernetesExecutor runs the task in the container named base
    assert {m["name"]: m["mountPath"] for m in base["volumeMounts"]} == {"kaapana-data": DATA_MOUNT}
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert pod["spec"]["volumes"] == values["workers"]["extraVolumes"]


def test_scale_out_guide_includes_its_deploy_files():
    guide = (REPO_ROOT / "docs" / "guides" / "scale_out.rst").read_text()
    for path in (CELERY_VALUES, POD_TEMPLATE):
        assert f".. literalinclude:: ../../{path.relative_to(REPO_ROOT)}" in guide
