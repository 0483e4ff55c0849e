"""
Amplab query 3a (a join of two named inputs, then two more MapReduce steps) as a task group
per step, each showing its map fan-out and reduce rounds as mapped tasks.

``lambdamr_task_group`` reads the job's steps when the DAG is parsed: ``plan``, then for each
step a group ``step_N`` (a later step's ``plan_map`` packs the previous step's results into
map tasks; ``map`` is mapped over batches of them; ``map_commit``; ``round_N_groups`` and
``round_N`` per reduce round, skipped when the step does not need it), then ``commit``.
``example_lambdamr_amplab_3a`` is the same job in its compact form. Runs on the embedded
default when ``uservisits``, ``rankings`` and ``output`` are left empty.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapReduceCleanupOperator
from airflow_provider_lambdamr.task_group import lambdamr_task_group

SAMPLE_ROOT = os.environ.get("LAMBDAMR_SAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "lambdamr-samples")

with DAG(
    dag_id="example_lambdamr_amplab_3a_expanded",
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
        return os.path.join(SAMPLE_ROOT, "results", "amplab-3a-expanded", re.sub(r"[^\w.-]+", "_", run_id or "run"))

    amplab_3a = lambdamr_task_group(
        "amplab_3a",
        job="amplab-3a",
        inputs=sample_inputs(),
        output_uri=output_uri(),
        partitions=2,
        split_size="8MB",
        max_map_tasks=256,
        runtime="{{ params.runtime }}",
    )
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=amplab_3a.job_dir, trigger_rule=TriggerRule.ALL_DONE
    )
    amplab_3a.group >> cleanup

if __name__ == "__main__":
    dag.test()
