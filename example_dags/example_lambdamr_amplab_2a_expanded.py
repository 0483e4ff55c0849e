"""
Amplab query 2a, ``SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1``,
as a task group whose Graph and Grid views show the MapReduce.

``lambdamr_task_group`` builds ``plan`` (check the output, plan the splits, deploy the code),
``map`` (mapped: each instance runs a batch of the map tasks, at most 32 instances however
many splits), ``map_commit``, each reduce round as ``round_N_groups`` and ``round_N``
(mapped over that round's groups; a round the job does not need is skipped) and ``commit``
(``_SUCCESS`` and the result Asset). Clearing one ``map`` instance re-runs only the map
tasks of its batch that have no status record. ``example_lambdamr_amplab_2a`` is the same
job in its compact form (one map task, one reduce task).

Every ``map`` instance and every round task is deferrable: it launches its invocations and
defers to the triggerer, which watches the job's status records and resumes the task only
to act (retry a failed or lost task, start a straggler's twin, refill the concurrency
window); no worker slot waits on functions. The invocations run on the local function
service (``runtime="service"``, started on first use, shared by the user's tasks and
``lambdamr`` commands) or on Lambda (``"aws"``). Without ``input``/``output`` a sample is
generated and the result goes to ``file://`` storage, a directory per run. This is the DAG
``make demo`` runs.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Param, TriggerRule, task

from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapReduceCleanupOperator
from airflow_provider_lambdamr.task_group import lambdamr_task_group

SAMPLE_ROOT = os.environ.get("LAMBDAMR_SAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "lambdamr-samples")

with DAG(
    dag_id="example_lambdamr_amplab_2a_expanded",
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
        """The input URI: the given one, or a generated 200,000-row uservisits sample."""
        if params and params["input"]:
            return params["input"]
        from airflow_provider_lambdamr.engine import amplab_gen

        return amplab_gen.sample(os.path.join(SAMPLE_ROOT, "uservisits"), table="uservisits", rows=200_000)

    @task
    def output_uri(run_id: str | None = None, params: dict | None = None) -> str:
        if params and params["output"]:
            return params["output"]
        from airflow_provider_lambdamr.engine import amplab_gen

        return amplab_gen.run_directory(SAMPLE_ROOT, "amplab-2a-expanded", run_id)

    amplab_2a = lambdamr_task_group(
        "amplab_2a",
        job="amplab-2a",
        inputs=sample_input(),
        output_uri=output_uri(),
        partitions=2,
        fan_in=8,
        max_map_tasks=512,  # with fan_in=8: at most 3 reduce rounds
        split_size="8MB",
        runtime="{{ params.runtime }}",
        deferrable=True,
        # how often the triggers look at the job's status records (``make demo`` shortens it)
        poll_interval=float(os.environ.get("LAMBDAMR_EXAMPLE_POLL_S", "10")),
    )
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=amplab_2a.job_dir, trigger_rule=TriggerRule.ALL_DONE
    )
    amplab_2a.group >> cleanup


if __name__ == "__main__":
    dag.test()
