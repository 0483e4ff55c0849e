"""
LambdaMR on real AWS, written as a system test: setup, body, teardown.

setup creates a bucket, writes a generated Amplab sample to it and creates a least-privilege
execution role; the body deploys the versioned zip as Lambda functions (with pyarrow as a
layer), fans out the map tasks, waits for them in the triggerer (deferrable sensor) and runs
the reducer rounds; teardown (``ALL_DONE``) prunes old function versions, deletes the log groups, the bucket and
the role. Set ``SYSTEM_TESTS_ENV_ID`` to keep names apart; ``aws_default`` must reach AWS.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG, TriggerRule, task

from airflow_provider_lambdamr.operators.lambda_mr import (
    LambdaMapOperator,
    LambdaMapReduceCleanupOperator,
    LambdaReduceOperator,
)
from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor

ENV_ID = os.environ.get("SYSTEM_TESTS_ENV_ID", "dev").lower()
BUCKET = f"lambdamr-system-{ENV_ID}"
ROLE = f"lambdamr-system-{ENV_ID}"
PREFIX = f"lambdamr-system-{ENV_ID}"
CONN_ID = "aws_default"

with DAG(
    dag_id="example_lambdamr_aws",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "lambdamr", "system"],
    doc_md=__doc__,
) as dag:

    @task
    def setup() -> dict:
        """Bucket, sample input and execution role."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_lambdamr.engine import amplab_gen, iam
        from lambda_src import storage as st

        s3 = S3Hook(aws_conn_id=CONN_ID)
        if not s3.check_for_bucket(BUCKET):
            s3.create_bucket(bucket_name=BUCKET)
        st.set_s3_client(s3.conn)
        amplab_gen.generate(f"s3://{BUCKET}/input/uservisits", table="uservisits", rows=50_000, files=4, seed=7)
        policy = iam.execution_policy(
            inputs=[f"s3://{BUCKET}/input/"], job_root=f"s3://{BUCKET}/jobs", outputs=[f"s3://{BUCKET}/result"],
            function_prefix=PREFIX,
        )
        iam_client = AwsBaseHook(aws_conn_id=CONN_ID, client_type="iam").conn
        role = iam.create_role(iam_client, role_name=ROLE, policy=policy)
        return {"role_arn": role["role_arn"], "input": f"s3://{BUCKET}/input/uservisits/",
                "output": f"s3://{BUCKET}/result/{ENV_ID}"}

    env = setup()
    map_task = LambdaMapOperator(
        task_id="map",
        job="amplab-2a",
        inputs=env["input"],
        output_uri=env["output"],
        job_root=f"s3://{BUCKET}/jobs",
        partitions=2,
        split_size="2MB",
        memory_mb=1024,
        timeout_s=120,
        runtime="aws",
        role_arn=env["role_arn"],
        function_prefix=PREFIX,
        # pyarrow as a layer, so the vectorized mapper runs vectorized (the layer is above the
        # direct upload limit: it goes through S3)
        pyarrow_layer=True,
        code_uri=f"s3://{BUCKET}/code",
        tracing=True,
        overwrite=True,
        aws_conn_id=CONN_ID,
    )
    job_dir = map_task.output["job_dir"]
    wait_for_map = LambdaMapReduceSensor(
        task_id="wait_for_map", job_dir=job_dir, phase="map", deferrable=True, poke_interval=5,
        timeout=900, aws_conn_id=CONN_ID,
    )
    reduce_task = LambdaReduceOperator(
        task_id="reduce", job_dir=job_dir, runtime="aws", role_arn=env["role_arn"], function_prefix=PREFIX,
        tracing=True, aws_conn_id=CONN_ID,
    )
    cleanup = LambdaMapReduceCleanupOperator(
        task_id="cleanup", job_dir=job_dir, delete_job_dir=True, prune_functions=True, delete_log_groups=True,
        function_prefix=PREFIX, aws_conn_id=CONN_ID, trigger_rule=TriggerRule.ALL_DONE,
    )

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def teardown() -> None:
        """Delete the bucket (with everything in it) and the role."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_provider_lambdamr.engine import iam

        s3 = S3Hook(aws_conn_id=CONN_ID)
        if s3.check_for_bucket(BUCKET):
            keys = s3.list_keys(bucket_name=BUCKET)
            if keys:
                s3.delete_objects(bucket=BUCKET, keys=keys)
            s3.delete_bucket(bucket_name=BUCKET, force_delete=True)
        iam.delete_role(AwsBaseHook(aws_conn_id=CONN_ID, client_type="iam").conn, role_name=ROLE)

    map_task >> wait_for_map >> reduce_task >> cleanup >> teardown()


if __name__ == "__main__":
    dag.test()
