"""
Daily word count with LambdaMR: each logical date reads its own input partition
(``<input_root>/<ds>/``) and writes its own output (``<output_root>/<ds>/``), so backfills
run one independent job per date, and rerunning a date resumes or returns that date's job.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_lambdamr.operators.lambda_mr import (
    LambdaMapOperator,
    LambdaMapReduceCleanupOperator,
    LambdaReduceOperator,
)

SAMPLE_ROOT = os.environ.get("LAMBDAMR_SAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "lambdamr-samples")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "airflow", "schedules", "lambda", "functions"]

with DAG(
    dag_id="example_lambdamr_wordcount",
    schedule="@daily",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    params={
        "input_root": Param("", type="string", description="root of <ds>/ partitions; empty: samples"),
        "output_root": Param("", type="string", description="root of <ds>/ results; empty: samples"),
    },
    tags=["example", "lambdamr"],
    doc_md=__doc__,
) as dag:

    @task
    def partition_input(ds: str | None = None, params: dict | None = None) -> str:
        """This date's input partition; a small one is written when no input root is given."""
        if params and params["input_root"]:
            return f"{params['input_root'].rstrip('/')}/{ds}/"
        target = os.path.join(SAMPLE_ROOT, "text", ds or "undated")
        if not os.path.isdir(target):
            os.makedirs(target)
            seed = sum(map(ord, ds or ""))
            for f in range(3):
                lines = [" ".join(WORDS[(seed + f * 7 + i * j) % len(WORDS)] for j in range(9)) for i in range(500)]
                with open(os.path.join(target, f"part-{f}.txt"), "w") as fh:
                    fh.write("\n".join(lines) + "\n")
        return target

    @task
    def partition_output(ds: str | None = None, params: dict | None = None) -> str:
        root = (params or {}).get("output_root") or os.path.join(SAMPLE_ROOT, "results", "wordcount")
        return f"{root.rstrip('/')}/{ds or 'undated'}"

    count = LambdaMapOperator(
        task_id="map",
        job="wordcount",
        inputs=partition_input(),
        output_uri=partition_output(),
        partitions=2,
        job_id="wordcount-{{ ds }}",
    )
    reduce_task = LambdaReduceOperator(task_id="reduce", job_dir=count.output["job_dir"])
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=count.output["job_dir"], trigger_rule=TriggerRule.ALL_DONE
    )
    count >> reduce_task >> cleanup


if __name__ == "__main__":
    dag.test()
