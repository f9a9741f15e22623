"""SearchHook, ElasticIndexOperator and CohortSelectOperator in Airflow, against a real osmem-server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from airflow_provider_kaapana.exceptions import SearchIndexError
from airflow_provider_kaapana.get_provider_info import get_provider_info
from airflow_provider_kaapana.hooks.search import SearchHook, connection_url
from airflow_provider_kaapana.operators.elastic_index import series_inputs
from tests.search_proxy import SearchProxy


def _conn_env(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_connection_type_registered():
    types = {c["connection-type"]: c["hook-class-name"] for c in get_provider_info()["connection-types"]}
    assert types["kaapana_search"] == "airflow_provider_kaapana.hooks.search.SearchHook"


def test_connection_url_variants():
    from airflow.sdk import Connection

    def url(**fields):
        return connection_url(Connection(conn_id="x", **fields))

    assert url(conn_type="opensearch", host="os.example", port=9200) == "http://os.example:9200"
    assert url(conn_type="opensearch", host="os.example", port=9200, extra='{"use_ssl": true}') == (
        "https://os.example:9200"
    )
    assert url(conn_type="elasticsearch", host="https://es.example/", port=443) == "https://es.example:443"
    assert url(conn_type="kaapana_search", host="es.example", schema="https") == "https://es.example"


def test_hook_follows_official_opensearch_connection(monkeypatch, osmem):
    host, port = osmem.url.rsplit(":", 1)
    _conn_env(monkeypatch, "search_os", conn_type="opensearch", host=host.split("//")[1], port=int(port))
    hook = SearchHook(search_conn_id="search_os")
    ok, message = hook.test_connection()
    assert ok, message
    assert hook.get_conn().flavor == "opensearch" and "3.8" in message


def test_hook_test_connection_names_a_server_that_does_not_answer(monkeypatch):
    from airflow_provider_kaapana.testing.local_services import free_port

    _conn_env(monkeypatch, "search_down", conn_type="opensearch", host="127.0.0.1", port=free_port(),
              extra={"retries": 0, "timeout": 2})  # fmt: skip
    ok, message = SearchHook(search_conn_id="search_down").test_connection()
    assert not ok and message.startswith("search server: ") and "127.0.0.1" in message


def test_hook_official_elasticsearch_connection_uses_elasticsearch_client(monkeypatch, osmem):
    proxy = SearchProxy(osmem.url).start()
    try:
        _conn_env(monkeypatch, "search_es", conn_type="elasticsearch", host=proxy.url, login="elastic",
                  password="not-logged")  # fmt: skip
        hook = SearchHook(search_conn_id="search_es")
        client = hook.get_conn()
        from elasticsearch import Elasticsearch

        assert isinstance(client.raw, Elasticsearch) and client.flavor == "elasticsearch"
        assert "not-logged" not in repr(client)
        assert hook.test_connection()[0]
    finally:
        proxy.stop()


def elasticsearch_root(number: str) -> dict:
    """An Elasticsearch server's ``GET /`` answer."""
    return {
        "name": "es-node",
        "cluster_name": "es",
        "version": {"number": number, "build_flavor": "default", "lucene_version": "10.1.0"},
        "tagline": "You Know, for Search",
    }


@pytest.fixture
def es_server(osmem):
    """osmem behind the proxy, answering ``GET /`` as an Elasticsearch server of ``root_answer``."""
    proxy = SearchProxy(osmem.url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("conn", [{"conn_type": "elasticsearch"}, {"conn_type": "kaapana_search"}])
def test_elasticsearch_client_of_another_major_is_refused_naming_the_extra(monkeypatch, es_server, conn):
    """A plain install used to pull the newest client (9.x), which an 8.x server refuses with an error
    that does not say why: the hook's Test button and its first request say it, with the extra."""
    import elasticsearch

    client_version = elasticsearch.__versionstr__
    other = 8 if not client_version.startswith("8.") else 9
    es_server.root_answer = elasticsearch_root(f"{other}.17.3")
    _conn_env(monkeypatch, "search_es_other", host=es_server.url, **conn)
    ok, message = SearchHook(search_conn_id="search_es_other").test_connection()
    assert not ok
    assert f"is version {other}.17.3 but the installed elasticsearch client is {client_version}" in message
    assert f"pip install 'airflow-provider-kaapana[elasticsearch{other}]'" in message
    with pytest.raises(SearchIndexError, match=rf"\[elasticsearch{other}\]"):
        SearchHook(search_conn_id="search_es_other").get_conn()
    # a server of the client's own major: accepted, and the first request goes through
    es_server.root_answer = elasticsearch_root(f"{client_version.split('.')[0]}.1.0")
    ok, message = SearchHook(search_conn_id="search_es_other").test_connection()
    assert ok and message.startswith(f"elasticsearch {client_version.split('.')[0]}.1.0 at "), message


def test_elasticsearch_client_one_major_below_the_server_is_accepted(monkeypatch, es_server):
    """A server accepts ``compatible-with`` of its own major and the one before: an 8.x client works
    with a 9.x server; a 9.x client with an 8.x server, or an 8.x client with a 10.x server, does not."""
    import elasticsearch

    _conn_env(monkeypatch, "search_es_below", host=es_server.url, conn_type="elasticsearch")
    monkeypatch.setattr(elasticsearch, "__versionstr__", "8.19.0")
    es_server.root_answer = elasticsearch_root("9.1.0")
    ok, message = SearchHook(search_conn_id="search_es_below").test_connection()
    assert ok and message.startswith("elasticsearch 9.1.0 at "), message
    es_server.root_answer = elasticsearch_root("10.0.0")
    ok, message = SearchHook(search_conn_id="search_es_below").test_connection()
    assert not ok and "is version 10.0.0 but the installed elasticsearch client is 8.19.0" in message
    monkeypatch.setattr(elasticsearch, "__versionstr__", "9.1.0")
    es_server.root_answer = elasticsearch_root("8.17.3")
    ok, message = SearchHook(search_conn_id="search_es_below").test_connection()
    assert not ok and "is version 8.17.3 but the installed elasticsearch client is 9.1.0" in message


def test_elasticsearch_server_without_the_client_names_the_extra(monkeypatch, es_server):
    es_server.root_answer = elasticsearch_root("8.19.0")
    monkeypatch.setitem(sys.modules, "elasticsearch", None)  # not installed: a plain install has none
    _conn_env(monkeypatch, "search_es_none", conn_type="elasticsearch", host=es_server.url)
    ok, message = SearchHook(search_conn_id="search_es_none").test_connection()
    assert not ok and "(version 8.19.0) but the elasticsearch client is not installed" in message
    assert message.endswith("pip install 'airflow-provider-kaapana[elasticsearch8]'")


def test_hook_auto_flavor_probes_once_at_use(monkeypatch, osmem):
    _conn_env(monkeypatch, "search_auto", conn_type="kaapana_search", host=osmem.url)
    hook = SearchHook(search_conn_id="search_auto")  # no network here
    assert "client" not in hook.__dict__
    assert hook.get_conn().flavor == "opensearch"


def test_series_inputs_accepts_xcom_dicts_and_paths(tmp_path):
    items = series_inputs(
        [{"series_instance_uid": "1.2.3", "series_dir": str(tmp_path), "calling_ae_title": "CT1"}, "/x/y"]
    )
    assert items == [
        (str(tmp_path), {"received_at": None, "source": {"calling_ae_title": "CT1"}}),
        ("/x/y", {}),
    ]
    ((_, kwargs),) = series_inputs([{"series_dir": "/s", "pacs": "KAAPANA", "called_ae_title": "KAAPANA"}])
    assert kwargs["location"] == {"series_dir": "/s", "pacs": "KAAPANA"}
    assert kwargs["source"] == {"called_ae_title": "KAAPANA"}
    with pytest.raises(ValueError, match="series_dir"):
        series_inputs([{"series_instance_uid": "1.2.3"}])


def test_dag_indexes_selects_and_maps(airflow_db, monkeypatch, osmem, synthetic_series, tmp_path):
    from tests.dags.search_index import dag

    host, port = osmem.url.rsplit(":", 1)
    _conn_env(
        monkeypatch, "kaapana_search_test", conn_type="opensearch", host=host.split("//")[1], port=int(port)
    )
    ct = synthetic_series("ct", seed=51, slices=4)
    mr = synthetic_series("mr", seed=52, slices=4, modality="MR")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.dcm").write_bytes(b"not dicom")
    index = f"kaapana-dag-{uuid.uuid4().hex[:8]}"
    series_dirs = [
        {
            "series_instance_uid": ct.series_instance_uid,
            "series_dir": str(ct.series_dir),
            "calling_ae_title": "CT1",
        },
        str(mr.series_dir),
        str(junk),
    ]
    dag_run = dag.test(run_conf={"series_dirs": series_dirs, "index": index, "modality": "CT"})
    assert dag_run.state == "success"
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances() if ti.map_index < 1}
    report = tis["index"].xcom_pull(task_ids="index")
    assert sorted(report["indexed"]) == sorted([ct.series_instance_uid, mr.series_instance_uid])
    assert len(report["file_errors"]) == 1 and "x.dcm" in report["file_errors"][0]
    cohort = tis["cohort"].xcom_pull(task_ids="cohort")
    assert cohort == [
        {"series_instance_uid": ct.series_instance_uid, "study_instance_uid": ct.study_instance_uid}
    ]
    mapped = [ti for ti in dag_run.get_task_instances() if ti.task_id == "process"]
    assert len(mapped) == 1 and mapped[0].state == "success"
    # the source AE from the receive step's XCom became a derived field
    hook = SearchHook(search_conn_id="kaapana_search_test")
    assert hook.get_conn().get(index, ct.series_instance_uid)["kaapana"]["source_aes"] == ["CT1"]


def test_cli_index(osmem, synthetic_series):
    series = synthetic_series(seed=61, slices=3)
    index = f"kaapana-cli-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "index", str(series.series_dir), "--url", osmem.url,
         "--index", index, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["indexed"] == [series.series_instance_uid] and report["instances"] == 3
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_provider_kaapana", "index", str(series.series_dir), "--url",
         "http://127.0.0.1:9", "--index", index],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "127.0.0.1:9" in bad.stderr
