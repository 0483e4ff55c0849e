"""
Amplab query 2a with deferrable LambdaMR tasks: no worker slot is held while functions run.

``map`` plans the job, deploys its code (only a new version) and launches a wave of map
invocations, then defers: the triggerer watches the job's status records and resumes the
task only to act (retry a failed or lost task, start a straggler's twin, refill the
concurrency window); the task ends when the map phase committed. ``reduce`` does the same
for the reducer rounds and commits the result. Deferral needs invocations that outlive the
task process: the local function service (``runtime="service"``, started on first use and
shared by the user's tasks) or Lambda (``"aws"``, with ``role_arn``).

Needs a running ``airflow triggerer``. Without ``input``/``output`` a small sample is
generated and the result goes to a directory per run.
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

with DAG(
    dag_id="example_lambdamr_deferrable",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    params={
        "input": Param("", type="string", description="uservisits URI; empty: generate a sample"),
        "output": Param("", type="string", description="result URI; empty: a directory per run"),
        "runtime": Param("service", enum=["service", "aws"]),
    },
    tags=["example", "lambdamr"],
    doc_md=__doc__,
) as dag:

    @task
    def sample_input(params: dict | None = None) -> str:
        """The input URI: the given one, or a generated 50,000-row uservisits sample."""
        if params and params["input"]:
            return params["input"]
        from airflow_provider_lambdamr.engine import amplab_gen

        return amplab_gen.sample(os.path.join(SAMPLE_ROOT, "uservisits-small"), table="uservisits", rows=50_000)

    @task
    def output_uri(run_id: str | None = None, params: dict | None = None) -> str:
        if params and params["output"]:
            return params["output"]
        from airflow_provider_lambdamr.engine import amplab_gen

        return amplab_gen.run_directory(SAMPLE_ROOT, "deferrable", run_id)

    map_task = LambdaMapOperator(
        task_id="map",
        job="amplab-2a",
        inputs=sample_input(),
        output_uri=output_uri(),
        partitions=2,
        split_size="1MB",
        runtime="{{ params.runtime }}",
        deferrable=True,
    )
    job_dir = map_task.output["job_dir"]
    reduce_task = LambdaReduceOperator(task_id="reduce", job_dir=job_dir, deferrable=True)
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=job_dir, trigger_rule=TriggerRule.ALL_DONE
    )
    map_task >> reduce_task >> cleanup


if __name__ == "__main__":
    dag.test()
