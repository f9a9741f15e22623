"""Every DAG of the library, as its trigger form and its first task see a run's input.

* Unknown conf keys fail the first task at once (:class:`AirflowFailException`: no retry), naming them
  and the accepted ones; every key the DAG's callers send (the listener, the federation poll) passes.
* The form marks a field required (``*``: its type lacks ``"null"``) only where the input is required:
  a field whose default is empty or whose help says it may be left empty is nullable, and a required
  field refuses its own empty default (so the star, the default and the help agree).
* The ingest DAG's "series_dir or batches" rule fails its first task without retry, listing what the
  run gave.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import runpy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_kaapana.core.algorithms.manifest import load_manifest
from airflow_provider_kaapana.core.listener.server import LISTENER_CONF_KEYS, SeriesBatch, run_conf
from airflow_provider_kaapana.dag_factories.common import PipelineSettings
from airflow_provider_kaapana.dag_factories.ingest import create_ingest_dag
from airflow_provider_kaapana.dag_factories.processing import create_processing_dag
from airflow_provider_kaapana.exceptions import RunConfError
from tests.dag_factories.test_parse_imports import DAG_FILES

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"
ALGORITHMS = ("threshold-segmenter", "measure-intensity")
LIBRARY = [*(path.stem for path in DAG_FILES), *(f"algorithm:{name}" for name in ALGORITHMS)]

# Required inputs whose default is empty, each with the reason (dag-id pattern, param name).
REQUIRED = {
    ("kaapana_install_model", "zip_path"): "the model zip to install: there is no default",
    ("kaapana_send_series", "identifiers"): "the series to send",
    ("kaapana_send_series", "destination_conn_id"): "where to send them",
    ("kaapana_nnunet_segmentation", "model"): "no model installed when parsed: the user names one",
    ("kaapana_federated_*", "sites"): "the sites to ask (a deployment may preset them)",
    ("kaapana_federated_site_*", "job"): "filled in by the poll DAG, never by hand",
    ("kaapana_federated_site_*", "request"): "filled in by the poll DAG, never by hand",
}
OPTIONAL_HELP = re.compile(r"\boptional\b|leave (it )?empty|\bempty:|required unless", re.IGNORECASE)
EMPTY = (None, "", [], {})


@functools.cache
def library_dag(name: str) -> Any:
    """The DAG of a file in ``dags/`` (as the dag-processor parses it) or of an example algorithm."""
    if name.startswith("algorithm:"):
        manifest = load_manifest(EXAMPLES / name.split(":", 1)[1])
        return create_processing_dag(manifest, PipelineSettings(models_dir="/nonexistent"))
    (path,) = [p for p in DAG_FILES if p.stem == name]
    return runpy.run_path(str(path))["dag"]


class Run:
    def __init__(self, conf: dict[str, Any], dag_id: str = "test_dag") -> None:
        self.conf, self.dag_id, self.run_id = conf, dag_id, "manual__test"


def listener_confs(tmp_path: Path) -> list[dict[str, Any]]:
    """What ``kaapana listen`` triggers the ingest DAG with: one batch, and several in one run."""
    batches = [
        SeriesBatch(
            "1.2.3",
            f"1.2.3.{n}",
            str(tmp_path / f"1.2.3.{n}"),
            1,
            ["a.dcm"],
            "MOD",
            "KAAPANA",
            3.0,
            manifest=str(tmp_path / f"1.2.3.{n}.b0001.json"),
        )  # fmt: skip
        for n in (4, 5)
    ]
    return [batches[0].conf(), run_conf(batches)]


@pytest.mark.parametrize("name", LIBRARY)
def test_unknown_conf_keys_fail_the_first_task_at_once(name, tmp_path):
    dag = library_dag(name)
    defaults = {key: dag.params.get_param(key).value for key in dag.params}
    good = [defaults]
    if dag.dag_id == "kaapana_ingest":
        good += listener_confs(tmp_path)
        # the listener's key set is the one its confs use, and the one the DAG accepts
        assert {key for conf in good[1:] for key in conf} == set(LISTENER_CONF_KEYS)
    if fnmatch.fnmatch(dag.dag_id, "kaapana_federated_site_*"):
        good.append({"job": {"job_id": "j"}, "request": {"run_id": "r"}})  # FederatedPollOperator's conf
    assert dag.roots
    for first in dag.roots:
        check = first._pre_execute_hook
        assert check is not None, f"{dag.dag_id}.{first.task_id} does not check its run's conf"
        for conf in good:
            check({"dag_run": Run(conf, dag.dag_id), "dag": dag})
        typo = {**defaults, "lmit": 3, "zz_unknown": True}
        with pytest.raises(AirflowFailException) as refused:
            check({"dag_run": Run(typo, dag.dag_id), "dag": dag})
        message = str(refused.value)
        assert "unknown conf key(s) 'lmit', 'zz_unknown'" in message and dag.dag_id in message
        assert all(key in message for key in dag.params), message  # names what is accepted


@pytest.mark.parametrize("name", LIBRARY)
def test_the_form_stars_only_required_inputs(name):
    dag = library_dag(name)
    for key in dag.params:
        param = dag.params.get_param(key)
        schema, default, help_text = param.schema, param.value, param.description or ""
        types = schema.get("type")
        nullable = "null" in (types if isinstance(types, list) else [types])
        required = [
            why for (dag_ids, k), why in REQUIRED.items() if k == key and fnmatch.fnmatch(dag.dag_id, dag_ids)
        ]
        where = f"{dag.dag_id}.{key}"
        if required:
            assert not nullable, f"{where} is listed as required ({required[0]}) but nullable"
            with pytest.raises(jsonschema.ValidationError):  # left empty, the form refuses it
                jsonschema.validate(default, schema)
            continue
        if default in EMPTY or OPTIONAL_HELP.search(help_text):
            assert nullable, (
                f"{where}: empty default {default!r} / help {help_text!r}, but the form marks it *"
            )
        if nullable:
            assert "required" not in help_text.lower(), f"{where}: nullable, yet its help says required"


def test_ingest_without_series_dir_or_batches_fails_at_once_listing_what_was_given(tmp_path):
    dag = create_ingest_dag("test_ingest_conf", PipelineSettings(workspace_base=str(tmp_path)))
    assert dag.default_args["retries"] == 1  # so only AirflowFailException keeps it from a second try

    def receive(conf: dict[str, Any]) -> Any:
        op = dag.get_task("receive").prepare_for_execution()
        context = {"dag_run": Run(conf, dag.dag_id), "dag": dag, "run_id": "manual__test", "params": conf}
        op.render_template_fields(context)
        return op.execute(context)

    form = {"series_dir": None, "batches": None, "keep_landing_files": False}  # the form, left empty
    with pytest.raises(AirflowFailException, match="nothing to ingest") as refused:
        receive(form)
    assert "series_dir=None, batches=None, and the keys keep_landing_files" in str(refused.value)
    assert isinstance(refused.value.__cause__, RunConfError)  # the core's error, translated
    with pytest.raises(AirflowFailException, match=r"series_dir='', batches=\[\]"):
        receive({"series_dir": "", "batches": []})
    with pytest.raises(AirflowFailException, match="nothing to ingest"):
        receive({})  # an API trigger without conf
    with pytest.raises(
        AirflowFailException, match=r"each with series_dir and series_instance_uid; this run gave \['x'\]"
    ):
        receive({"batches": ["x"]})
