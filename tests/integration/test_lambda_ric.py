"""The deployed zips under AWS's runtime client (awslambdaric), as Lambda runs them.

Functions are deployed to moto's Lambda (with the pyarrow layer when asked); their zip and
layer are read back from where the deploy uploaded them (S3) and each function runs as
``python3.12 -S -s -P -m awslambdaric HANDLER`` with only the zip, the layer's ``python/`` and
Lambda's runtime (awslambdaric, the AWS SDK) on its path, against a Runtime API emulator.
The driver invokes them asynchronously, as on Lambda; a real job's map and reduce tasks run.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import json
import logging
import math
import platform
import socket
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from airflow_provider_lambdamr.engine import amplab_gen, jobdir, packaging
from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from tests.conftest import TRUST
from tests.helpers import read_counts, read_rows, run_job
from tests.lambda_ric import LambdaProcess, RuntimeApi, find_python, runtime_dir

RUNTIME_VERSION = "python3.12"


def _download_or_skip(what: str, build):
    """``build()``, skipped with the reason when it needs a download and PyPI is out of reach."""
    try:
        return build()
    except packaging.PackagingError:
        try:
            socket.create_connection(("pypi.org", 443), timeout=5).close()
        except OSError as err:
            pytest.skip(f"{what} must be downloaded from PyPI, which is out of reach ({err})")
        raise


@pytest.fixture(scope="module")
def target() -> packaging.LayerTarget:
    arch = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())
    if arch is None:
        pytest.skip(f"Lambda has no {platform.machine()} functions")
    return packaging.LayerTarget.for_runtime(arch, RUNTIME_VERSION)


@pytest.fixture(scope="module")
def lambda_python() -> str:
    python = find_python("3.12")
    if python is None:
        pytest.skip("Lambda's python3.12 runtime needs a Python 3.12 interpreter to run the handlers under "
                    "awslambdaric; none is on PATH or under ~/.pyenv/versions")
    return python


@pytest.fixture(scope="module")
def var_runtime(target, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("var-runtime")
    return _download_or_skip("awslambdaric's wheels for Python 3.12", lambda: runtime_dir(target, dest))


@pytest.fixture(scope="module")
def pyarrow_wheel(target) -> Path:
    """The pinned pyarrow's wheel for the runtime, in the wheel cache (one real download)."""
    return _download_or_skip("the pyarrow wheel", lambda: packaging.wheel(
        "pyarrow", packaging.pyarrow_version(), target))


@pytest.fixture
def lambda_client(aws_env):
    return boto3.client("lambda", region_name="us-east-1")


@pytest.fixture
def role_arn(aws_env):
    name = f"lmr-role-{uuid.uuid4().hex[:8]}"
    return boto3.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]


def _lambda_sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _extract(data: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(dest)
    return dest


class RicLambda:
    """Lambda's asynchronous invoke: 202 now, the event goes to the function's Runtime API.

    Everything but ``invoke`` goes to moto's Lambda control plane.
    """

    def __init__(self, real, apis: dict[str, RuntimeApi], duplicate: bool = False) -> None:
        self.real = real
        self.apis = apis
        self.duplicate = duplicate  # Lambda's async delivery is at least once

    def __getattr__(self, name):
        return getattr(self.real, name)

    def invoke(self, *, FunctionName, Qualifier, InvocationType, Payload):
        assert InvocationType == "Event"
        assert self.real.get_alias(FunctionName=FunctionName, Name=Qualifier)
        api = self.apis[FunctionName.rsplit("-", 1)[1]]
        event = json.loads(Payload)
        rid = api.invoke(event)
        if self.duplicate:
            api.invoke(event, request_id=rid)
        return {"StatusCode": 202, "ResponseMetadata": {"RequestId": rid}}


@contextlib.contextmanager
def functions_as_deployed(runtime: AwsRuntime, python: str, var_runtime: Path, work: Path, env: dict[str, str],
                          processes: int = 1) -> Iterator[dict[str, RuntimeApi]]:
    """Start each deployed function's code and layers under awslambdaric; yield their Runtime APIs."""
    client, s3 = runtime.client, boto3.client("s3")
    bucket, prefix = runtime.code_uri.removeprefix("s3://").split("/", 1)
    uploaded = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        uploaded[_lambda_sha(data)] = data
    apis: dict[str, RuntimeApi] = {}
    running: list[LambdaProcess] = []
    try:
        for kind, fn in runtime.deployment["functions"].items():
            cfg = client.get_function_configuration(FunctionName=fn["name"], Qualifier=fn["alias"])
            task = _extract(uploaded[cfg["CodeSha256"]], work / kind / "task")
            path = [task]
            for n, layer in enumerate(cfg.get("Layers") or []):
                name, version = layer["Arn"].split(":")[-2:]
                sha = client.get_layer_version(LayerName=name, VersionNumber=int(version))["Content"]["CodeSha256"]
                path.append(_extract(uploaded[sha], work / kind / f"opt{n}") / "python")
            api = apis[kind] = RuntimeApi(cfg["FunctionArn"], timeout_s=cfg["Timeout"])
            fn_env = {**cfg["Environment"]["Variables"], **env, "AWS_EXECUTION_ENV": f"AWS_Lambda_{cfg['Runtime']}",
                      "AWS_LAMBDA_FUNCTION_NAME": fn["name"], "AWS_LAMBDA_FUNCTION_VERSION": fn["version"],
                      "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(cfg["MemorySize"])}
            running += [LambdaProcess(python, cfg["Handler"], api, [*path, var_runtime], fn_env, task)
                        for _ in range(processes)]
        yield apis
    finally:
        for proc in running:
            proc.stop()
        for api in apis.values():
            api.close()


def _aws_env(moto: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


def _runtime(client, role_arn, bucket, **kwargs) -> AwsRuntime:
    return AwsRuntime(client, role_arn=role_arn, function_prefix=f"lmr-{uuid.uuid4().hex[:6]}",
                      runtime_version=RUNTIME_VERSION, code_uri=f"s3://{bucket}/code", direct_upload_limit=1,
                      poll_interval_s=0.05, timeout_s=60, status_grace_s=30, concurrency=4, **kwargs)


def _visits(tmp_path: Path) -> dict:
    data = tmp_path / "amplab"
    amplab_gen.generate(str(data / "uservisits"), table="uservisits", rows=3000, files=3, seed=7,
                        rankings_rows=300)
    return {"": [str(data / "uservisits")]}


@pytest.mark.parametrize("with_layer", [True, False], ids=["with-layer", "without"])
def test_a_vectorized_job_runs_vectorized_under_awslambdaric_only_with_the_layer(
        with_layer, lambda_client, role_arn, s3_bucket, aws_env, lambda_python, var_runtime, pyarrow_wheel,
        tmp_path, caplog):
    inputs = _visits(tmp_path)
    expected = run_job(job="amplab-2a", inputs=inputs, output=str(tmp_path / "expected"), partitions=2,
                       max_files_per_task=1)
    client = RicLambda(lambda_client, {})
    rt = _runtime(client, role_arn, s3_bucket, pyarrow_layer=with_layer)
    spec = JobSpec(job="amplab-2a", inputs=inputs, output=str(tmp_path / "out"), partitions=2,
                   max_files_per_task=1)
    rt.deploy(packaging.build(spec.job_ref))
    with functions_as_deployed(rt, lambda_python, var_runtime, tmp_path / "fn", _aws_env(aws_env)) as apis, \
            caplog.at_level(logging.WARNING, logger="airflow_provider_lambdamr.engine.driver"):
        client.apis.update(apis)
        summary = Driver(spec, rt).run()
    got, want = (dict(map(tuple, read_rows(str(tmp_path / d)))) for d in ("out", "expected"))
    assert got.keys() == want.keys()
    # Python 3.12's sum() of floats is compensated (3.11's and pyarrow's are not): the last bits may differ.
    assert all(math.isclose(float(got[k]), float(want[k]), rel_tol=1e-12) for k in want)
    assert expected["tasks"]["map_modes"] == {"vectorized": 3}
    warnings = [r.getMessage() for r in caplog.records if "record mode" in r.getMessage()]
    if with_layer:
        assert summary["tasks"]["map_modes"] == {"vectorized": 3}
        assert warnings == []
    else:
        assert summary["tasks"]["map_modes"] == {"record": 3}
        assert len(warnings) == 1 and "--pyarrow-layer" in warnings[0] and "--layer ARN" in warnings[0]
    assert jobdir.read_success(spec.output).summary["tasks"]["map_modes"] == summary["tasks"]["map_modes"]


def test_a_word_count_is_exact_with_every_event_delivered_twice_to_two_processes_each(
        lambda_client, role_arn, s3_bucket, aws_env, lambda_python, var_runtime, tmp_path, caplog):
    s3 = boto3.client("s3")
    expected = collections.Counter()
    for i in range(4):
        text = "\n".join(f"w{(i * j) % 7} v{j % 3}" for j in range(50)) + "\n"
        expected.update(text.split())
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i}.txt", Body=text.encode())
    client = RicLambda(lambda_client, {}, duplicate=True)
    rt = _runtime(client, role_arn, s3_bucket)
    spec = JobSpec(job="wordcount", inputs={"": [f"s3://{s3_bucket}/in"]}, output=f"s3://{s3_bucket}/out",
                   max_files_per_task=1, partitions=3, fan_in=2)
    rt.deploy(packaging.build(spec.job_ref))
    with functions_as_deployed(rt, lambda_python, var_runtime, tmp_path / "fn", _aws_env(aws_env),
                               processes=2) as apis:
        client.apis.update(apis)
        with caplog.at_level(logging.WARNING, logger="airflow_provider_lambdamr.engine.driver"):
            summary = Driver(spec, rt).run()
        assert not [r for r in caplog.records if "record mode" in r.getMessage()], "a record-mode job: no warning"
        for api in apis.values():  # every second delivery has run too
            for rid in list(api.invocations):
                assert [kind for kind, _, _ in api.wait(rid, answers=2).answers] == ["response", "response"]
    assert read_counts(f"s3://{s3_bucket}/out") == dict(expected)
    assert summary["tasks"]["map"] == 4 and summary["counters"]["input_records"] == sum(expected.values()) // 2
    assert len(apis["mapper"].invocations) == 4 and len(apis["reducer"].invocations) >= 3


def test_a_failing_task_comes_back_in_lambdas_error_shape_and_a_bad_handler_as_an_init_error(
        lambda_client, role_arn, s3_bucket, aws_env, lambda_python, var_runtime, tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("a b\n")
    client = RicLambda(lambda_client, {})
    rt = _runtime(client, role_arn, s3_bucket)
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in.txt")]},
                   output=str(tmp_path / "out"), params={"always_fail": "1"}, max_attempts=1)
    rt.deploy(packaging.build(spec.job_ref))
    with functions_as_deployed(rt, lambda_python, var_runtime, tmp_path / "fn", _aws_env(aws_env)) as apis:
        client.apis.update(apis)
        with pytest.raises(JobFailed, match=r"map task 0 of 1 failed after 1 attempt.*injected failure \(always\)"):
            Driver(spec, rt).run()
        (inv,) = apis["mapper"].invocations.values()
        ((kind, body, headers),) = apis["mapper"].wait(inv.request_id).answers
    error = json.loads(body)
    assert kind == "error" and set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert error["errorType"] == "TaskError" and error["requestId"] == inv.request_id
    cause = json.loads(headers["lambda-runtime-function-xray-error-cause"])  # what X-Ray shows
    assert [e["type"] for e in cause["exceptions"]] == ["TaskError"]
    assert "map task 0 of 1" in error["errorMessage"] and "RuntimeError: injected failure" in error["errorMessage"]
    assert isinstance(error["stackTrace"], list) and any("lambda_src/task.py" in line for line in error["stackTrace"])

    api = RuntimeApi("arn:aws:lambda:us-east-1:123456789012:function:nosuch")
    task = tmp_path / "fn" / "mapper" / "task"
    proc = LambdaProcess(lambda_python, "lambda_src.nosuch.lambda_handler", api, [task, var_runtime],
                         _aws_env(aws_env), task)
    try:
        error, error_type = api.wait_init_error()
        assert proc.proc.wait(30) != 0
    finally:
        proc.stop()
        api.close()
    assert error["errorType"] == error_type == "Runtime.ImportModuleError"
    assert "No module named 'lambda_src.nosuch'" in error["errorMessage"]
