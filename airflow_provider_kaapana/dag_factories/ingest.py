"""Ingest: a received series (listener-triggered, or by hand with a path) -> validate -> PACS + index.

The listener triggers one run per batch of a series with a conf naming the batch (see
:func:`airflow_provider_kaapana.core.listener.server.read_batch_files`). The landing-zone files of that batch are
removed only after both the PACS store and the indexing succeeded. Invalid files are set aside in the
run workspace (so they are neither stored nor indexed) and stay in the landing zone, never deleted.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_kaapana.dag_factories.common import SEND_METHODS, PipelineSettings, pipeline_dag
from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator
from airflow_provider_kaapana.operators.dicom_send import DicomSendOperator
from airflow_provider_kaapana.operators.elastic_index import ElasticIndexOperator

log = logging.getLogger(__name__)

DOC = """
### Ingest

Triggered by the DICOM listener (`kaapana listen`) when a series has been quiet for its quiet period,
or by hand with the path of a series folder. Validates the instances, stores them in the PACS, indexes
the series, then removes the batch from the landing zone. Example manual conf:

```json
{"series_dir": "/data/kaapana/landing/1.2.3/1.2.3.4"}
```
"""


def create_ingest_dag(
    dag_id: str = "kaapana_ingest",
    settings: PipelineSettings | None = None,
    send_method: str = "c-store",
) -> DAG:
    s = settings or PipelineSettings()
    if send_method not in SEND_METHODS:
        raise ValueError(f"send_method must be one of {SEND_METHODS}")
    with pipeline_dag(
        dag_id,
        s,
        tags=["ingest"],
        doc_md=DOC,
        max_active_runs=16,
        params={
            "series_dir": Param(
                "",
                type="string",
                minLength=1,
                title="Series folder",
                description="Folder holding the DICOM files of one series (the listener fills this in).",
            ),
            "keep_landing_files": Param(
                False,
                type="boolean",
                title="Keep the landing-zone files",
                description=(
                    "Listener runs: do not remove the batch's files after they were stored and indexed. "
                    "Runs by hand never remove anything."
                ),
            ),
        },
    ) as dag:
        received = DicomReceiveOperator(
            task_id="receive", landing_conf="{{ dag_run.conf }}", workspace_base=s.workspace_base
        )

        @task
        def validate(
            received_series: list[dict[str, str]] | dict[str, str], dag_run=None
        ) -> list[dict[str, Any]]:
            """Every file must be DICOM of the announced series; others are set aside."""
            from airflow_provider_kaapana.dag_factories.ingest import arrival_facts, validate_series

            conf = dict(dag_run.conf or {}) if dag_run is not None else {}
            items = [received_series] if isinstance(received_series, dict) else list(received_series)
            return [validate_series(item) | arrival_facts(conf) for item in items]

        valid = validate(received.output)
        store = DicomSendOperator(
            task_id="store", paths=valid, method=send_method, pacs_conn_id=s.pacs_conn_id
        )
        # A series the listener announces in several batches (late arrivals) is one document:
        # each batch's instances are merged into it, not put in its place.
        index = ElasticIndexOperator(
            task_id="index",
            series_dirs=valid,
            index=s.index,
            search_conn_id=s.search_conn_id,
            merge_instances=True,
            # the merge reads, merges and writes the series document: two batches of one series must
            # not do that at the same time, or one batch's instances drop out of the document
            max_active_tis_per_dag=1,
        )

        @task
        def remove_from_landing(
            validated: list[dict[str, Any]], dag_run=None, params: dict[str, Any] | None = None
        ) -> list[str]:
            """Only after store and index succeeded (the default trigger rule): the batch's valid files.

            A file is deleted only when it validated and is still the very file this run stored (a
            modality may resend an instance under the same name meanwhile); anything else stays in the
            landing zone, so nothing received is ever lost.
            """
            from airflow_provider_kaapana.core.listener.server import read_batch_files

            conf = dict(dag_run.conf or {}) if dag_run is not None else {}
            manifest = conf.get("batch_manifest")
            if (params and params.get("keep_landing_files")) or not manifest or not Path(manifest).is_file():
                return []  # a run by hand names someone's folder: never delete from it
            stored = {name: Path(v["series_dir"]) / name for v in validated for name in v["valid_files"]}
            removed = []
            for path in read_batch_files(conf):
                copy = stored.get(path.name)
                if copy is None:
                    log.warning("keeping %s in the landing zone: it failed validation", path)
                elif not path.exists():
                    continue
                elif not same_file_content(path, copy):
                    log.warning("keeping %s in the landing zone: it changed after this run received it", path)
                else:
                    path.unlink()
                    removed.append(str(path))
            return removed

        [store, index] >> remove_from_landing(valid)
    return dag


def arrival_facts(conf: dict[str, Any]) -> dict[str, str]:
    """What a listener batch's conf says about the arrival, under the index operator's keys.

    ``calling_ae_title``/``called_ae_title`` become the document's ``kaapana.source``, and the batch's
    creation time (from its manifest) its ``kaapana.received_at``; a run by hand has neither, and its
    document gets the indexing time.
    """
    from airflow_provider_kaapana.core.listener.server import SeriesBatch

    facts = {
        "calling_ae_title": str(conf.get("calling_ae") or ""),
        "called_ae_title": str(conf.get("called_ae") or ""),
    }
    manifest = conf.get("batch_manifest")
    created = SeriesBatch.load(manifest).created if manifest and Path(manifest).is_file() else None
    if isinstance(created, (int, float)) and created > 0:
        facts["received_at"] = datetime.fromtimestamp(created, tz=timezone.utc).isoformat(
            timespec="milliseconds"
        )
    return {k: v for k, v in facts.items() if v}


def validate_series(item: dict[str, str]) -> dict[str, Any]:
    """Check every file of a received (workspace) series; move bad ones to ``<series_dir>/../.invalid``.

    Returns the item with ``instances`` (count), ``valid_files`` (names) and ``quarantined`` (file names
    with reasons). Idempotent: a retry finds the files set aside earlier and reports them again.
    """
    import pydicom

    from airflow_provider_kaapana.core.dicom.uids import validate_uid
    from airflow_provider_kaapana.exceptions import InvalidDicomError

    series_dir = Path(item["series_dir"])
    expected = item.get("series_instance_uid")
    valid_files: list[str] = []
    quarantine = series_dir.parent / ".invalid"
    quarantined = [f"{p.name}: set aside by an earlier try" for p in sorted(quarantine.glob("*"))]
    for path in sorted(p for p in series_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            uid = validate_uid(str(ds.SeriesInstanceUID), f"SeriesInstanceUID of {path}")
            validate_uid(str(ds.SOPInstanceUID), f"SOPInstanceUID of {path}")
            if expected and uid != expected:
                raise InvalidDicomError(f"{path.name} belongs to series {uid}, not {expected}")
            expected = expected or uid
            valid_files.append(path.name)
        except Exception as exc:
            log.error("%s: not ingested: %s", path, exc)
            quarantine.mkdir(parents=True, exist_ok=True)
            path.rename(quarantine / path.name)
            quarantined.append(f"{path.name}: {exc}")
    if not valid_files:
        raise InvalidDicomError(
            f"{series_dir}: no valid DICOM instance ({'; '.join(quarantined) or 'empty'})"
        )
    return {
        **item,
        "series_instance_uid": expected,
        "instances": len(valid_files),
        "valid_files": valid_files,
        "quarantined": quarantined,
    }


def same_file_content(a: Path, b: Path) -> bool:
    """The same inode (the workspace hard-links landing files), else byte-equal content."""
    import filecmp

    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
