"""A JavaScript job deployed with the AWS runtime: moto's Lambda control plane holds nodejs20.x
functions running the Node.js handlers; their asynchronous invocations are emulated by running the
deployed zip's handler with node, the way Lambda would, against moto's S3."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import boto3

from airflow_provider_lambdamr.engine import packaging
from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec, resolve_job_ref
from tests.helpers import read_counts
from tests.integration.test_aws_runtime import AsyncLambda

INVOKE = Path(__file__).resolve().parents[1] / "nodejs" / "invoke.mjs"


def test_a_javascript_job_deploys_as_nodejs_functions_and_python_switches_them_back(
        lambda_client, role_arn, node):
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    js = packaging.build(resolve_job_ref("wordcount-js"))
    rt = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, runtime_version="python3.12")
    summary = rt.deploy(js)
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-reducer")
    assert (cfg["Runtime"], cfg["Handler"]) == ("nodejs20.x", "lambda_src/nodejs/reducer.handler")
    assert summary["runtime_version"] == "nodejs20.x" and cfg["CodeSha256"] == AwsRuntime.lambda_sha256(js)
    AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, runtime_version="nodejs22.x").deploy(js)
    assert lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")["Runtime"] == "nodejs22.x"
    py = packaging.build("lambda_src.jobs.wordcount:WordCount")
    rt.deploy(py)
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")
    assert (cfg["Runtime"], cfg["Handler"]) == ("python3.12", "lambda_src.mapper.lambda_handler")


class NodeLambda(AsyncLambda):
    """Async invokes run the deployed Node.js handler from the package's zip with node."""

    def __init__(self, real, package: packaging.CodePackage, node: str) -> None:
        super().__init__(real)
        code = packaging.extracted(package)

        def handler(kind: str):
            def run(event, ctx):
                import json

                name = f"lambda_src/nodejs/{kind}.handler"
                res = subprocess.run([node, str(INVOKE), str(code), name, ctx.aws_request_id],
                                     input=json.dumps(event), capture_output=True, text=True, timeout=120)
                if res.returncode != 0:
                    raise RuntimeError(res.stderr)
                return json.loads(res.stdout)
            return run

        self.HANDLERS = {"mapper": handler("mapper"), "reducer": handler("reducer")}


def test_a_javascript_job_runs_on_emulated_lambda_and_s3(
        lambda_client, role_arn, s3_bucket, node, node_s3_sdk):
    s3 = boto3.client("s3")
    for i in range(4):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i}.txt", Body="\n".join(f"Ab{j % 3} c{i}" for j in range(30)).encode())
    spec = JobSpec(job="wordcount-js", inputs={"": [f"s3://{s3_bucket}/in"]}, output=f"s3://{s3_bucket}/out",
                   max_files_per_task=1, partitions=2, fan_in=2)
    client = NodeLambda(lambda_client, packaging.build(spec.job_ref), node)
    rt = AwsRuntime(client, role_arn=role_arn, function_prefix=f"lmr-{uuid.uuid4().hex[:6]}", poll_interval_s=0.05,
                    timeout_s=60, concurrency=3)
    summary = Driver(spec, rt).run()
    assert summary["runtime"] == "aws" and summary["tasks"]["map"] == 4
    assert read_counts(f"s3://{s3_bucket}/out") == {"ab0": 40, "ab1": 40, "ab2": 40, **{f"c{i}": 30 for i in range(4)}}
