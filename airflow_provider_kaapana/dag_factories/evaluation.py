"""Segmentation evaluation: pairs of SEG series (reference, test) from the PACS -> metrics per case -> a
per-case CSV and a per-label summary JSON in the run workspace.

Each pair runs its own mapped chain: receive both SEGs, receive the image series the reference was made
on (its Referenced Series), evaluate on that grid.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task, task_group

from airflow_provider_kaapana.dag_factories.common import (
    UID_ITEMS,
    PipelineSettings,
    check_run_conf,
    pipeline_dag,
    retrieve_method_param,
)
from airflow_provider_kaapana.operators.cohort import find_series_in_pacs
from airflow_provider_kaapana.operators.dicom_receive import DicomReceiveOperator
from airflow_provider_kaapana.operators.segmentation_evaluation import SegmentationEvaluationOperator

DOC = """
### Segmentation evaluation

Compares test segmentations with reference segmentations, pair by pair (both DICOM SEG series in the
PACS, made on the same image series): Dice, Jaccard, volumes, Hausdorff, HD95, ASSD and surface Dice
per segment. Writes `evaluation_cases.csv` (one row per case and segment), `evaluation_summary.json`
(per label over all cases) and `evaluation_report.html` (table and box plots) into the run workspace,
and the summary into the `kaapana-evaluations` search index. Example conf:

```json
{"pairs": [{"reference": "1.2.826.0.1.3680043.8.498.1", "test": "1.2.826.0.1.3680043.8.498.2"}],
 "tolerance_mm": 2.0}
```
"""


# Its own name, not the series index's with a suffix: the dashboards' index pattern ("<index>*") must
# not match evaluation documents.
EVALUATIONS_INDEX = "kaapana-evaluations"


def create_segmentation_evaluation_dag(
    dag_id: str = "kaapana_segmentation_evaluation",
    settings: PipelineSettings | None = None,
    evaluations_index: str = EVALUATIONS_INDEX,
) -> DAG:
    s = settings or PipelineSettings()
    with pipeline_dag(
        dag_id,
        s,
        tags=["evaluation", "segmentation"],
        description="Compare test with reference segmentations (Dice, distances, volumes): tables, report, index",
        doc_md=DOC,
        max_active_runs=4,
        params={
            "pairs": Param(
                None,
                type=["null", "array"],
                minItems=0,
                maxItems=1000,
                items={
                    "type": "object",
                    "properties": {"reference": UID_ITEMS, "test": UID_ITEMS},
                    "required": ["reference", "test"],
                    "additionalProperties": False,
                },
                title="Pairs of SEG series",
                description=(
                    'Series Instance UIDs of a reference and a test SEG each, e.g. {"reference": "1.2.3", '
                    '"test": "1.2.4"}; both made on the same image series. Give pairs or a test rule '
                    "(below), not both."
                ),
                section="Input data",
            ),
            "test_pattern": Param(
                None,
                type=["null", "string"],
                title="Test SEGs by rule",
                description=(
                    "Instead of pairs: every SEG whose series description, content label or model name "
                    "matches this wildcard (e.g. *nnunet*) is evaluated against the reference SEGs of "
                    "the same study and image series (search index)."
                ),
                section="Input data",
            ),
            "reference_pattern": Param(
                "*reference*",
                type="string",
                title="Reference SEGs by rule",
                description="With a test rule: the wildcard that marks reference SEGs.",
                section="Input data",
            ),
            "tolerance_mm": Param(
                1.0,
                type="number",
                exclusiveMinimum=0,
                maximum=100,
                title="Surface Dice tolerance (mm)",
                section="Metrics",
            ),
            "retrieve_method": retrieve_method_param(section="PACS"),
        },
    ) as dag:

        @task(pre_execute=check_run_conf)
        def lookup_pairs(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            """Each pair's two SEG series with their Study Instance UIDs (C-FIND at the PACS); pairs given
            in the form, or found by the test/reference rule in the search index."""
            from airflow.sdk.exceptions import AirflowFailException

            params = params or {}
            pairs = list(params.get("pairs") or [])
            if bool(pairs) == bool(params.get("test_pattern")):
                raise AirflowFailException(
                    "give either pairs or a test rule (test_pattern), not both and not neither: "
                    f"pairs={len(pairs)}, test_pattern={params.get('test_pattern')!r}"
                )
            if not pairs:
                from airflow_provider_kaapana.core.index.cohort import evaluation_pairs
                from airflow_provider_kaapana.hooks.search import SearchHook

                found = evaluation_pairs(
                    SearchHook(s.search_conn_id).get_conn(),
                    s.index,
                    str(params["test_pattern"]),
                    str(params.get("reference_pattern") or "*reference*"),
                )
                if not found:
                    raise AirflowFailException(
                        f"no SEG matching {params['test_pattern']!r} has a reference SEG matching "
                        f"{params.get('reference_pattern')!r} on the same image series in {s.index!r}"
                    )
                pairs = [
                    {
                        "reference": p["reference"]["series_instance_uid"],
                        "test": p["test"]["series_instance_uid"],
                    }
                    for p in found
                ]
            uids = list(dict.fromkeys(u for p in pairs for u in (p["reference"], p["test"])))
            found = {d["series_instance_uid"]: d for d in find_series_in_pacs(uids, s.pacs_conn_id)}
            return [{"reference": found[p["reference"]], "test": found[p["test"]]} for p in pairs]

        evaluations = []

        @task_group(group_id="per_pair")
        def per_pair(pair: dict[str, Any]) -> None:
            @task
            def reference_of(pair: dict[str, Any]) -> dict[str, str]:
                return pair["reference"]

            @task
            def test_of(pair: dict[str, Any]) -> dict[str, str]:
                return pair["test"]

            def receive(task_id: str, series: Any) -> DicomReceiveOperator:
                return DicomReceiveOperator(
                    task_id=task_id,
                    series=series,
                    method="{{ params.retrieve_method }}",
                    pacs_conn_id=s.pacs_conn_id,
                    workspace_base=s.workspace_base,
                )

            reference = receive("receive_reference", reference_of(pair))
            test = receive("receive_test", test_of(pair))

            @task
            def source_of(received: dict[str, Any]) -> dict[str, str]:
                """The image series the reference SEG was made on (its Referenced Series Sequence)."""
                from airflow_provider_kaapana.core.quant.inputs import referenced_source_series

                return referenced_source_series(received["series_dir"])

            source = receive("receive_source", source_of(reference.output))
            evaluate = SegmentationEvaluationOperator(
                task_id="evaluate",
                reference=reference.output,
                test=test.output,
                source=source.output,
                tolerance_mm="{{ params.tolerance_mm }}",
                workspace_base=s.workspace_base,
            )
            evaluations.append(evaluate)

        per_pair.expand(pair=lookup_pairs())

        @task
        def summary(results: Any, dag_run: Any = None) -> dict[str, Any]:
            """The per-case CSV, the per-label JSON and the HTML report of every evaluated pair in the
            run's folder; the summary also in the evaluations index (keyed by run: a re-run replaces it)."""
            from airflow_provider_kaapana.core.index.client import bulk_index
            from airflow_provider_kaapana.core.quant.summary import (
                evaluation_index_document,
                write_evaluation_summary,
            )
            from airflow_provider_kaapana.core.workspace import run_workspace
            from airflow_provider_kaapana.exceptions import KaapanaError
            from airflow_provider_kaapana.hooks.search import SearchHook

            workspace = run_workspace(s.workspace_base, dag_run.dag_id, dag_run.run_id)
            title = f"Segmentation evaluation {dag_run.run_id}"
            written = write_evaluation_summary([r for r in results if r], workspace.root, title)
            doc = evaluation_index_document(
                written["summary"],
                dag_id=dag_run.dag_id,
                run_id=dag_run.run_id,
                created=str(dag_run.run_after),
            )
            indexed = bulk_index(SearchHook(s.search_conn_id).get_conn(), evaluations_index, [doc])
            if indexed.failed:
                raise KaapanaError(f"the evaluations index refused the summary: {indexed.failed}")
            return {k: written[k] for k in ("cases_path", "summary_path", "report_path")} | {
                "cases": written["summary"]["cases"],
                "evaluations_index": evaluations_index,
            }

        summary(evaluations[0].output)
    return dag
