"""
Amplab query 2a as a LambdaMR job: ``SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM
uservisits GROUP BY 1``.

The DAG spells out the MapReduce shape: ``map`` plans the job and fans out one function per
split; ``wait_for_map`` waits on the map tasks' status records; ``reduce`` runs the reducer
rounds (up to ``fan_in`` runs merged per partition per round) and commits the result;
``cleanup`` always removes the intermediates. Runs on the embedded default (local runtime,
``file://`` storage) when ``input`` and ``output`` are left empty: a sample is generated.
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
from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor

SAMPLE_ROOT = os.environ.get("LAMBDAMR_SAMPLE_DIR") or os.path.join(tempfile.gettempdir(), "lambdamr-samples")

with DAG(
    dag_id="example_lambdamr_amplab_2a",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    params={
        "input": Param("", type="string", description="uservisits URI; empty: generate a sample"),
        "output": Param("", type="string", description="result URI; empty: a directory per run"),
        "runtime": Param("local", enum=["local", "aws"]),
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

        return amplab_gen.run_directory(SAMPLE_ROOT, "amplab-2a", run_id)

    map_task = LambdaMapOperator(
        task_id="map",
        job="amplab-2a",
        inputs=sample_input(),
        output_uri=output_uri(),
        partitions=2,
        split_size="8MB",
        runtime="{{ params.runtime }}",
    )
    job_dir = map_task.output["job_dir"]
    wait_for_map = LambdaMapReduceSensor(
        task_id="wait_for_map", job_dir=job_dir, phase="map", poke_interval=5, timeout=3600
    )
    reduce_task = LambdaReduceOperator(task_id="reduce", job_dir=job_dir, runtime="{{ params.runtime }}")
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=job_dir, trigger_rule=TriggerRule.ALL_DONE
    )

    @task
    def show_result(summary: dict) -> list[str]:
        """Log where the result is and its first rows."""
        from lambda_src import storage as st

        store = st.for_uri(summary["output"])
        parts = sorted(i.uri for i in store.list(summary["output"]) if st.basename(i.uri).startswith("part-"))
        rows = store.read_bytes(parts[0], 0, 4096).decode().splitlines()[:5] if parts else []
        print(f"result: {summary['output']} ({summary['output_records']:,} rows in {summary['files']} files)")
        for row in rows:
            print(f"  {row}")
        return rows

    map_task >> wait_for_map >> reduce_task >> cleanup
    show_result(reduce_task.output)


if __name__ == "__main__":
    dag.test()
