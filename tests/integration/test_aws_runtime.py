"""The AWS runtime against moto's server: the Lambda and IAM control planes are moto's; the
asynchronous invoke (which moto cannot run without Docker) is stubbed by a client that runs
the handler the way Lambda would, on another thread, from the same event."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import ClassVar

import boto3
import pytest
from botocore.exceptions import ClientError

from airflow_provider_lambdamr.engine import packaging
from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime, DeployError
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import mapper, reducer
from tests.helpers import read_counts, read_rows


def _versions(client, name):
    pages = client.get_paginator("list_versions_by_function").paginate(FunctionName=name)
    return [v["Version"] for p in pages for v in p["Versions"] if v["Version"] != "$LATEST"]


def test_deploy_creates_publishes_aliases_and_is_idempotent(lambda_client, role_arn):
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")
    rt = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, memory_mb=1024, timeout_s=60,
                    architecture="arm64", runtime_version="python3.12")
    first = rt.deploy(pkg)
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")
    assert (cfg["MemorySize"], cfg["Timeout"], cfg["Handler"], cfg["Runtime"]) == (
        1024, 60, "lambda_src.mapper.lambda_handler", "python3.12")
    assert cfg["CodeSha256"] == AwsRuntime.lambda_sha256(pkg)
    alias = lambda_client.get_alias(FunctionName=f"{prefix}-reducer", Name=f"v{pkg.version}")
    assert alias["FunctionVersion"] == first["functions"]["reducer"]["version"]
    versions = _versions(lambda_client, f"{prefix}-mapper")
    again = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, memory_mb=1024, timeout_s=60,
                       architecture="arm64", runtime_version="python3.12").deploy(pkg)
    assert again == first, "deploying unchanged code gives the same summary"
    assert _versions(lambda_client, f"{prefix}-mapper") == versions, "and publishes no new version"
    bigger = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, memory_mb=2048, timeout_s=60,
                        architecture="arm64", runtime_version="python3.12").deploy(pkg)
    assert lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")["MemorySize"] == 2048
    assert bigger["functions"]["mapper"]["version"] != first["functions"]["mapper"]["version"]
    alias = lambda_client.get_alias(FunctionName=f"{prefix}-mapper", Name=f"v{pkg.version}")
    assert alias["FunctionVersion"] == bigger["functions"]["mapper"]["version"]


def test_large_zips_go_through_s3(lambda_client, role_arn, s3_bucket):
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")
    with pytest.raises(DeployError, match="above the 1-byte direct upload limit; pass an s3:// code_uri"):
        AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, direct_upload_limit=1).deploy(pkg)
    rt = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, direct_upload_limit=1,
                    code_uri=f"s3://{s3_bucket}/code")
    rt.deploy(pkg)
    key = f"code/lambdamr-{pkg.version}.zip"
    assert boto3.client("s3").head_object(Bucket=s3_bucket, Key=key)["ContentLength"] == pkg.size
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")
    assert cfg["CodeSha256"] == AwsRuntime.lambda_sha256(pkg)


def test_bad_runtime_settings_are_refused():
    with pytest.raises(ValueError, match="architecture must be one of"):
        AwsRuntime(object(), role_arn="arn:aws:iam::1:role/r", architecture="sparc")
    with pytest.raises(ValueError, match="role_arn must be an IAM role ARN"):
        AwsRuntime(object(), role_arn="my-role")


class AsyncLambda:
    """Lambda's asynchronous invoke, emulated: 202 now, the handler runs on another thread.

    Everything but ``invoke`` goes to moto's real Lambda control plane.
    """

    HANDLERS: ClassVar[dict] = {"mapper": mapper.lambda_handler, "reducer": reducer.lambda_handler}

    def __init__(self, real, throttle_first: int = 0, crash: set[str] | None = None, duplicate: bool = False):
        self.real = real
        self.duplicate = duplicate  # Lambda's async delivery is at least once
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.throttle_left = throttle_first
        self.crash = crash or set()
        self.calls = collections.Counter()
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def invoke(self, *, FunctionName, Qualifier, InvocationType, Payload):
        assert InvocationType == "Event"
        assert self.real.get_alias(FunctionName=FunctionName, Name=Qualifier)
        with self.lock:
            self.calls[FunctionName] += 1
            if self.throttle_left > 0:
                self.throttle_left -= 1
                raise ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}}, "Invoke")
        event = json.loads(Payload)
        kind = FunctionName.rsplit("-", 1)[1]
        rid = str(uuid.uuid4())
        ctx = SimpleNamespace(aws_request_id=rid, function_name=FunctionName)
        key = f"{event['task']['phase']}:{event['task'].get('index', event['task'].get('group'))}:{event['task']['attempt']}"

        def run():
            if key in self.crash:  # the function dies without writing anything (OOM, lost event)
                return
            # Lambda logs a raised error; the failure record is what the driver reads.
            with contextlib.suppress(Exception):
                self.HANDLERS[kind](event, ctx)

        self.pool.submit(run)
        if self.duplicate:
            self.pool.submit(run)
        return {"StatusCode": 202, "ResponseMetadata": {"RequestId": rid}}


def _runtime(client, role_arn, **kwargs):
    return AwsRuntime(client, role_arn=role_arn, function_prefix=f"lmr-{uuid.uuid4().hex[:6]}",
                      poll_interval_s=0.05, timeout_s=2, status_grace_s=1, concurrency=3, **kwargs)


def test_fan_out_on_lambda_with_throttling_is_exact(lambda_client, role_arn, s3_bucket):
    s3 = boto3.client("s3")
    expected = collections.Counter()
    for i in range(6):
        text = "\n".join(f"k{j % 5} x{i}" for j in range(40))
        expected.update(text.split())
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i}.txt", Body=text.encode())
    client = AsyncLambda(lambda_client, throttle_first=3)
    rt = _runtime(client, role_arn)
    rt.max_throttle_retries = 5
    spec = JobSpec(job="wordcount", inputs={"": [f"s3://{s3_bucket}/in"]}, output=f"s3://{s3_bucket}/out",
                   max_files_per_task=1, partitions=2, fan_in=2)
    summary = Driver(spec, rt).run()
    assert read_counts(f"s3://{s3_bucket}/out") == dict(expected)
    assert rt.throttled == 3
    assert summary["runtime"] == "aws" and summary["tasks"]["map"] == 6


def test_function_errors_and_lost_invocations_are_retried_or_reported(lambda_client, role_arn, tmp_path,
                                                                      fixture_jobs_path):
    for i in range(3):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.txt").write_text(f"a b{i}\n")
    # map task 1's first attempt is lost (no status record): retried after the timeout
    client = AsyncLambda(lambda_client, crash={"map:1:1"})
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                   output=str(tmp_path / "out"), max_files_per_task=1,
                   params={"fail_once": str(tmp_path / "once")})
    summary = Driver(spec, _runtime(client, role_arn)).run()
    assert read_counts(str(tmp_path / "out")) == {"a": 3, "b0": 1, "b1": 1, "b2": 1}
    assert summary["invocations"]["map"]["failed_invocations"] == 2  # one error, one lost
    # a function error on every attempt fails the job with the task, input and error
    spec2 = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in" / "0.txt")]},
                    output=str(tmp_path / "out2"), params={"always_fail": "1"}, max_attempts=2)
    with pytest.raises(JobFailed, match=r"map task 0 of 1 failed after 2 attempts: RuntimeError: injected "
                                        r"failure \(always\) \(input: file://.*/0\.txt bytes 0-\d+\)"):
        Driver(spec2, _runtime(AsyncLambda(lambda_client), role_arn)).run()


def test_prune_keeps_the_live_alias_and_version(lambda_client, role_arn):
    from airflow_provider_lambdamr.engine.runtimes.aws import delete_log_groups, prune_functions

    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")
    pkg2 = packaging.build("lambda_src.jobs.wordcount:WordCount", tracing=True)  # other code
    AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix).deploy(pkg)
    live = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix).deploy(pkg2)
    assert len(_versions(lambda_client, f"{prefix}-mapper")) == 2
    deleted = prune_functions(lambda_client, prefix, keep_alias=f"v{pkg2.version}")
    assert deleted[f"{prefix}-mapper"]["aliases"] == [f"v{pkg.version}"]
    assert _versions(lambda_client, f"{prefix}-mapper") == [live["functions"]["mapper"]["version"]]
    names = [a["Name"] for a in lambda_client.list_aliases(FunctionName=f"{prefix}-reducer")["Aliases"]]
    assert names == [f"v{pkg2.version}"]
    assert prune_functions(lambda_client, prefix)[f"{prefix}-mapper"] == {
        "aliases": [], "versions": [], "kept": [live["functions"]["mapper"]["version"]]}
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName=f"/aws/lambda/{prefix}-mapper")
    assert delete_log_groups(logs, prefix) == [f"/aws/lambda/{prefix}-mapper"]
    assert prune_functions(lambda_client, "no-such-prefix") == {}


def test_every_event_delivered_twice_concurrently_still_counts_once(lambda_client, role_arn, tmp_path):
    expected = collections.Counter()
    for i in range(5):
        (tmp_path / "in").mkdir(exist_ok=True)
        text = "\n".join(f"d{j % 4} f{i}" for j in range(30)) + "\n"
        (tmp_path / "in" / f"{i}.txt").write_text(text)
        expected.update(text.split())
    client = AsyncLambda(lambda_client, duplicate=True)
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   max_files_per_task=1, partitions=2, fan_in=2, keep_intermediates=True)
    Driver(spec, _runtime(client, role_arn)).run()
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    runs = list((tmp_path / "out" / "_jobs" / spec.job_id / "map").glob("*/*"))
    assert len(runs) == 10, "two attempts' outputs exist side by side; the status record picks one"


def test_a_multi_step_job_with_every_event_delivered_twice_counts_once(lambda_client, role_arn, tmp_path,
                                                                      fixture_jobs_path):
    """Duplicated deliveries race in every step; later steps read whichever attempt committed."""
    words = collections.Counter()
    (tmp_path / "in").mkdir()
    for i in range(4):
        text = "\n".join(f"w{(i * j) % 11} w{j % 3}" for j in range(25)) + "\n"
        (tmp_path / "in" / f"{i}.txt").write_text(text)
        words.update(text.split())
    client = AsyncLambda(lambda_client, duplicate=True)
    spec = JobSpec(job="userjobs.countofcounts:CountOfCounts", inputs={"": [str(tmp_path / "in")]},
                   output=str(tmp_path / "out"), max_files_per_task=1, partitions=2, fan_in=2)
    summary = Driver(spec, _runtime(client, role_arn)).run()
    assert summary["steps"] == 2 and summary["runtime"] == "aws"
    got = {int(k): int(v) for k, v in read_rows(str(tmp_path / "out"))}
    assert got == dict(collections.Counter(words.values()))


def _layer_versions(client, name):
    pages = client.get_paginator("list_layer_versions").paginate(LayerName=name)
    return sorted(v["Version"] for p in pages for v in p["LayerVersions"])


def test_the_pyarrow_layer_is_published_once_per_content_attached_and_pruned(lambda_client, role_arn, s3_bucket,
                                                                            tmp_path, monkeypatch):
    import hashlib
    import zipfile

    from airflow_provider_lambdamr.engine.runtimes.aws import prune_functions
    from tests.helpers import fake_pyarrow_wheel

    monkeypatch.setenv("LAMBDAMR_WHEEL_DIR", str(tmp_path))
    for python in ("3.12", "3.13"):
        fake_pyarrow_wheel(tmp_path, version=packaging.pyarrow_version(), python=python)
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    pkg = packaging.build("lambda_src.jobs.wordcount:WordCount")

    def runtime(**kwargs):
        return AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, pyarrow_layer=True,
                          direct_upload_limit=200, **kwargs)

    with pytest.raises(DeployError, match=r"the pyarrow layer zip is \d+ bytes, above the 200-byte direct "
                                          r"upload limit; pass an s3:// code_uri"):
        runtime().deploy(pkg)
    with monkeypatch.context() as small:
        small.setattr(packaging, "UNZIPPED_LIMIT", 2000)
        with pytest.raises(DeployError, match=r"the function \(\d+ bytes\) and the pyarrow layer \(\d+ bytes\) are "
                                              r"\d+ bytes above Lambda's 2000-byte limit, unzipped"):
            runtime(code_uri=f"s3://{s3_bucket}/code").deploy(pkg)
    first = runtime(code_uri=f"s3://{s3_bucket}/code").deploy(pkg)["pyarrow_layer"]
    arn = first["arn"]
    for kind in ("mapper", "reducer"):
        cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-{kind}")
        assert [layer["Arn"] for layer in cfg["Layers"]] == [arn]
    layer_zip = lambda_client.get_layer_version(LayerName=f"{prefix}-pyarrow", VersionNumber=int(arn.rsplit(":", 1)[1]))
    assert layer_zip["Description"].startswith("lambdamr pyarrow ") and "python3.12" in layer_zip["Description"]
    uploaded = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"code/lambdamr-layer-{first['sha256'][:16]}.zip")
    assert hashlib.sha256(uploaded["Body"].read()).hexdigest() == first["sha256"], "the layer went through S3"
    with zipfile.ZipFile(pkg.path) as zf:
        function_bytes = sum(i.file_size for i in zf.infolist())
    assert first["room_left_bytes"] == 262_144_000 - function_bytes - first["unzipped_bytes"]
    assert runtime(code_uri=f"s3://{s3_bucket}/code").deploy(pkg)["pyarrow_layer"] == first
    assert len(_layer_versions(lambda_client, f"{prefix}-pyarrow")) == 1, "the same content is published once"
    lambda_client.publish_layer_version(LayerName=f"{prefix}-pyarrow", Description="someone else's",
                                        Content={"ZipFile": b"PK\x05\x06" + bytes(18)})
    newer = runtime(code_uri=f"s3://{s3_bucket}/code", runtime_version="python3.13").deploy(pkg)["pyarrow_layer"]
    assert newer["arn"] != arn
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-mapper")
    assert [layer["Arn"] for layer in cfg["Layers"]] == [newer["arn"]]
    versions = _layer_versions(lambda_client, f"{prefix}-pyarrow")
    assert len(versions) == 3
    pruned = prune_functions(lambda_client, prefix)
    assert pruned[f"{prefix}-pyarrow"]["versions"] == [int(arn.rsplit(":", 1)[1])]
    assert _layer_versions(lambda_client, f"{prefix}-pyarrow") == sorted(
        [int(newer["arn"].rsplit(":", 1)[1]), versions[1]]), "the live layer and one lambdamr did not publish stay"


def test_a_named_layer_is_attached_and_a_bad_one_refused(lambda_client, role_arn):
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    arn = lambda_client.publish_layer_version(
        LayerName=f"{prefix}-sdk-for-pandas", Content={"ZipFile": b"PK\x05\x06" + bytes(18)})["LayerVersionArn"]
    rt = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix, layer=arn)
    assert rt.missing_pyarrow() is None
    assert rt.deploy(packaging.build("lambda_src.jobs.wordcount:WordCount"))["pyarrow_layer"] == {
        "arn": arn, "source": "named"}
    cfg = lambda_client.get_function_configuration(FunctionName=f"{prefix}-reducer")
    assert [layer["Arn"] for layer in cfg["Layers"]] == [arn]
    without = AwsRuntime(lambda_client, role_arn=role_arn, function_prefix=prefix).deploy(
        packaging.build("lambda_src.jobs.wordcount:WordCount"))
    assert without["pyarrow_layer"] is None
    live = lambda_client.get_function_configuration(FunctionName=f"{prefix}-reducer",
                                                    Qualifier=without["functions"]["reducer"]["alias"])
    assert live.get("Layers", []) == [], "the same code deployed without the layer drops it"
    assert "--pyarrow-layer" in AwsRuntime(lambda_client, role_arn=role_arn).missing_pyarrow()
    with pytest.raises(ValueError, match="layer must be a layer version ARN"):
        AwsRuntime(lambda_client, role_arn=role_arn, layer="pyarrow")
    with pytest.raises(ValueError, match="either --layer ARN or --pyarrow-layer, not both"):
        AwsRuntime(lambda_client, role_arn=role_arn, layer=arn, pyarrow_layer=True)
