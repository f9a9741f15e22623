"""Algorithm manifests (validation naming the field, install, list) and the contract's local runner."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from airflow_provider_kaapana.cli import main
from airflow_provider_kaapana.core.algorithms.contract import (
    AlgorithmFailed,
    Job,
    NoFindings,
    collect_outputs,
    load_measurements,
    prepare_job,
    run_local,
)
from airflow_provider_kaapana.core.algorithms.manifest import (
    ManifestError,
    install_algorithm,
    list_algorithms,
    load_manifest,
)
from airflow_provider_kaapana.exceptions import KaapanaError

EXAMPLES = Path(__file__).resolve().parents[2] / "operators_images"
THRESHOLD = EXAMPLES / "threshold-segmenter"
MEASURE = EXAMPLES / "measure-intensity"


def broken(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((THRESHOLD / "manifest.yaml").read_text())
    change(data)
    folder = tmp_path / "alg"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_examples_are_valid_and_name_their_dag():
    seg = load_manifest(THRESHOLD)
    assert seg.dag_id == "kaapana_algorithm_threshold_segmenter"
    assert seg.output("segmentation").labels == "labels.json"
    assert seg.parameters["label_name"]["enum"] == ["lesion", "bone", "organ"]
    assert load_manifest(MEASURE / "manifest.yaml").input_format == "dicom"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["outputs"].append({"kind": "hologram"}), "outputs[1].kind"),
        (lambda d: d.pop("image"), "'image' is a required property"),
        (lambda d: d.__setitem__("image", "no-tag"), "image:"),
        (lambda d: d["parameters"]["properties"]["lower"].__setitem__("type", "numbr"), "parameters"),
        (lambda d: d["parameters"]["properties"]["lower"].__setitem__("default", "low"), "lower.default"),
        (lambda d: d["parameters"]["properties"]["upper"].__setitem__("minimum", "x"), "parameters"),
        (lambda d: d["resources"].__setitem__("gpus", -1), "resources.gpus"),
        (lambda d: d["outputs"].append({"kind": "segmentation"}), "more than one output of kind"),
        (lambda d: d["inputs"].__setitem__("format", "png"), "inputs.format"),
    ],
)
def test_a_broken_manifest_is_refused_naming_the_field(tmp_path, capsys, change, field):
    folder = broken(tmp_path, change)
    with pytest.raises(ManifestError) as caught:
        load_manifest(folder)
    assert any(field in p for p in caught.value.problems), caught.value.problems
    assert main(["algorithms", "validate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert field in err and "manifest.yaml" in err


def test_unreadable_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match="manifest.yaml"):
        load_manifest(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path / "empty")


def test_install_list_and_reinstall(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAAPANA_ALGORITHMS_DIR", str(tmp_path / "algorithms"))
    assert main(["algorithms", "install", str(THRESHOLD)]) == 0
    assert main(["algorithms", "install", str(MEASURE)]) == 0
    assert main(["algorithms", "install", str(THRESHOLD)]) == 0  # replaces, idempotent
    assert sorted(p.name for p in (tmp_path / "algorithms").iterdir()) == [
        "measure-intensity",
        "threshold-segmenter",
    ]
    capsys.readouterr()
    assert main(["algorithms", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["measure-intensity", "threshold-segmenter"]
    # a manifest broken after installation is listed as refused; the others stay listed
    (tmp_path / "algorithms" / "measure-intensity" / "manifest.yaml").write_text("name: x\n")
    found = list_algorithms()
    assert isinstance(found[0], ManifestError) and found[1].name == "threshold-segmenter"
    assert main(["algorithms", "list"]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_install_refuses_an_invalid_manifest_and_keeps_the_old_copy(tmp_path):
    install_algorithm(THRESHOLD, tmp_path / "algs")
    folder = broken(tmp_path, lambda d: d["outputs"][0].__setitem__("kind", "video"))
    with pytest.raises(ManifestError):
        install_algorithm(folder, tmp_path / "algs")
    assert load_manifest(tmp_path / "algs" / "threshold-segmenter").version == "1.0.0"


def write_script(tmp_path: Path, body: str, outputs: list) -> Path:
    folder = tmp_path / "algo"
    folder.mkdir()
    (folder / "run.py").write_text(body)
    data = {
        "apiVersion": "kaapana.algorithm/v1",
        "name": "probe",
        "version": "0.1",
        "image": "example.org/probe:0.1",
        "command": ["python", "/app/run.py"],
        "local_command": ["python", "./run.py"],
        "inputs": {"format": "dicom"},
        "outputs": outputs,
        "parameters": {"type": "object", "properties": {"k": {"type": "integer", "default": 2}}},
        "env": {"KAAPANA_OUTPUT_DIR": "/not/this", "MODE": "probe"},
    }
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_local_runner_keeps_the_contract(tmp_path):
    script = (
        "import json, os, pathlib\n"
        "p = json.load(open(os.environ['KAAPANA_PARAMS_FILE']))\n"
        "s = json.load(open(os.environ['KAAPANA_SERIES_FILE']))\n"
        "out = pathlib.Path(os.environ['KAAPANA_OUTPUT_DIR'])\n"
        "files = sorted(os.listdir(os.environ['KAAPANA_INPUT_DIR']))\n"
        "json.dump({'k': p['k'], 'uid': s['series_instance_uid'], 'n': len(files), 'mode': os.environ['MODE']},"
        " open(out / 'measurements.json', 'w'))\n"
        "print('done')\n"
    )
    manifest = load_manifest(write_script(tmp_path, script, [{"kind": "measurements"}]))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"x")
    job = Job(tmp_path / "in", tmp_path / "job")
    values = prepare_job(manifest, job, {"k": 5, "unknown": 1}, {"series_instance_uid": "1.2.3"})
    assert values == {"k": 5}
    lines: list[str] = []
    run_local(manifest, job, lines.append)
    assert lines == ["done"]
    result = collect_outputs(manifest, job)
    assert load_measurements(result["measurements_path"]) == {"k": 5, "uid": "1.2.3", "n": 1, "mode": "probe"}
    # a retry starts from an empty output folder; defaults fill missing parameters
    prepare_job(manifest, job, {}, {"series_instance_uid": "1.2.3"})
    assert list(job.output_dir.iterdir()) == [] and json.loads(job.params_file.read_text()) == {"k": 2}


@pytest.mark.parametrize(("code", "error"), [(3, NoFindings), (7, AlgorithmFailed)])
def test_exit_codes(tmp_path, code, error):
    script = f"import sys\nprint('bad input', file=sys.stderr)\nsys.exit({code})\n"
    manifest = load_manifest(write_script(tmp_path, script, [{"kind": "files"}]))
    (tmp_path / "in").mkdir()
    job = Job(tmp_path / "in", tmp_path / "job")
    prepare_job(manifest, job, {}, {})
    with pytest.raises(error, match="bad input" if code == 7 else "no findings"):
        run_local(manifest, job)


@pytest.mark.parametrize("content", ['{"a": NaN}', "[1]", "{}", '{"a": {"b": 1}}', "nope"])
def test_bad_measurements_are_refused(tmp_path, content):
    path = tmp_path / "measurements.json"
    path.write_text(content)
    with pytest.raises(KaapanaError, match="measurements"):
        load_measurements(path)


def test_missing_input_folder_is_named(tmp_path):
    manifest = load_manifest(THRESHOLD)
    with pytest.raises(KaapanaError, match="does not exist"):
        prepare_job(manifest, Job(tmp_path / "nope", tmp_path / "job"), {}, {})


def test_measurements_go_into_the_series_document_indexed_first_if_needed(osmem, ct_series):
    from airflow_provider_kaapana.core.algorithms.measurements import index_measurements
    from airflow_provider_kaapana.core.index.client import make_search_client

    client = make_search_client(f"http://127.0.0.1:{osmem.port}", "opensearch")
    index = f"kaapana-test-measure-{uuid.uuid4().hex[:8]}"
    uid = ct_series.series_instance_uid
    with pytest.raises(KaapanaError, match="not in index"):
        index_measurements(client, index, uid, "probe", "1", {"a": 1})
    index_measurements(client, index, uid, "probe", "1", {"a": 1.5}, series_dir=ct_series.series_dir)
    index_measurements(client, index, uid, "other", "2", {"b": "x"})  # merges, keeps the first
    document = client.get(index, uid)
    assert document["SeriesInstanceUID"] == uid and document["Modality"] == "CT"
    assert document["kaapana"]["algorithms"] == {
        "probe": {"version": "1", "a": 1.5},
        "other": {"version": "2", "b": "x"},
    }
