"""
Amplab query 2a in coordinator mode: one task launches the job, and its coordinator runs it.

``job`` plans the job, deploys its code and a coordinator function, launches the first map
invocations and defers until the job commits. There is no reduce task: each mapper and
reducer invocation's end invokes the coordinator (Lambda's asynchronous-invocation
destinations; the local function service emulates them), which launches the next tasks,
retries, runs the reducer rounds and commits, with no Airflow task or driver alive. The
result's ``_SUCCESS`` summary is the task's XCom. Needs ``runtime="service"`` (the local
function service) or ``"aws"`` (with a ``role_arn`` whose policy has the coordinator's
statements: ``lambdamr iam policy ... --coordinator``), and a running ``airflow triggerer``.

Without ``input``/``output`` a small sample is generated and the result goes to a directory
per run.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

SAMPLE_ROOT = os.environ.get("LAMBDAMR_SAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "lambdamr-samples")

with DAG(
    dag_id="example_lambdamr_coordinator",
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

        return amplab_gen.run_directory(SAMPLE_ROOT, "coordinator", run_id)

    LambdaMapOperator(
        task_id="job",
        job="amplab-2a",
        inputs=sample_input(),
        output_uri=output_uri(),
        partitions=2,
        split_size="1MB",
        runtime="{{ params.runtime }}",
        coordinator=True,  # the coordinator runs the job to its commit
        deferrable=True,  # one wait, in the triggerer, covers the whole job
        poll_interval=2.0,
    )


if __name__ == "__main__":
    dag.test()
