"""Install an nnU-Net model from an export zip into the model store shared by workers and GPU pods."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_kaapana.dag_factories.common import PipelineSettings, check_run_conf, pipeline_dag

DOC = """
### Install an nnU-Net model

Unpacks a zip made by `nnUNetv2_export_model_to_zip` (on a path the workers can read) into the model
store, validates it, and lists what was installed. Installing the same zip again replaces the model.
The segmentation DAG's model list is re-read when its file is next parsed. Example conf:

```json
{"zip_path": "/data/kaapana/uploads/Dataset017_Liver.zip"}
```
"""


def create_install_model_dag(
    dag_id: str = "kaapana_install_model", settings: PipelineSettings | None = None
) -> DAG:
    s = settings or PipelineSettings()
    with pipeline_dag(
        dag_id,
        s,
        tags=["nnunet", "maintenance"],
        description="Install an exported nnU-Net model (zip) into the model store",
        doc_md=DOC,
        params={
            "zip_path": Param(
                "",
                type="string",
                minLength=1,
                pattern=r"\.zip$",
                title="Model zip",
                description="Path readable by the workers.",
            ),
        },
    ) as dag:

        @task(pre_execute=check_run_conf)
        def install(params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
            from airflow_provider_kaapana.core.nnunet.models import install_model

            return [
                info.to_dict() | {"path": str(info.path)}
                for info in install_model(params["zip_path"], s.models_dir)
            ]

        install()
    return dag
