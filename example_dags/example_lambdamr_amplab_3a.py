"""
Amplab query 3a as a LambdaMR job: a join of two named inputs, then two more MapReduce steps.

The query: the visits of 1980-01-01 to 1980-04-01 joined with the rankings of the pages
they visited, revenue summed and page rank averaged per source IP, the top IP by revenue.
Its SQL and its three steps are in the job's docstring (``Query3a`` in
``lambda_src/jobs/amplab.py``, built-in job ``amplab-3a``).

``map`` fans out over both inputs (the mapper sees which input a line came from);
``reduce`` runs the join's reducer rounds, then the map and reduce phases of the later steps
(totals per sourceIP, then the top row), and commits. Runs on the embedded default when
``uservisits``, ``rankings`` and ``output`` are left empty: a joinable sample is generated.
"""

from __future__ import annotations

import os
import re
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
    dag_id="example_lambdamr_amplab_3a",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    params={
        "uservisits": Param("", type="string", description="uservisits URI; empty: generate a sample"),
        "rankings": Param("", type="string", description="rankings URI; empty: generate a sample"),
        "output": Param("", type="string", description="result URI; empty: a directory per run"),
        "runtime": Param("local", enum=["local", "aws"]),
    },
    tags=["example", "lambdamr"],
    doc_md=__doc__,
) as dag:

    @task
    def sample_inputs(params: dict | None = None) -> dict[str, str]:
        """The two inputs: the given ones, or a generated sample whose URLs join."""
        if params and params["uservisits"] and params["rankings"]:
            return {"uservisits": params["uservisits"], "rankings": params["rankings"]}
        from airflow_provider_lambdamr.engine import amplab_gen

        root = os.path.join(SAMPLE_ROOT, "amplab-3a")
        paths = {table: os.path.join(root, table) for table in ("uservisits", "rankings")}
        if not all(os.path.isdir(p) for p in paths.values()):
            amplab_gen.generate(paths["rankings"], table="rankings", rows=20_000, files=2, seed=42)
            amplab_gen.generate(paths["uservisits"], table="uservisits", rows=200_000, files=4, seed=42,
                                rankings_rows=20_000)
        return paths

    @task
    def output_uri(run_id: str | None = None, params: dict | None = None) -> str:
        if params and params["output"]:
            return params["output"]
        return os.path.join(SAMPLE_ROOT, "results", "amplab-3a", re.sub(r"[^\w.-]+", "_", run_id or "run"))

    map_task = LambdaMapOperator(
        task_id="map",
        job="amplab-3a",
        inputs=sample_inputs(),
        output_uri=output_uri(),
        partitions=2,
        split_size="8MB",
        runtime="{{ params.runtime }}",
    )
    job_dir = map_task.output["job_dir"]
    reduce_task = LambdaReduceOperator(task_id="reduce", job_dir=job_dir, runtime="{{ params.runtime }}")
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=job_dir, trigger_rule=TriggerRule.ALL_DONE
    )
    map_task >> reduce_task >> cleanup


if __name__ == "__main__":
    dag.test()
