"""Coordinator mode on AWS, against moto: the coordinator function, the tasks' coordinated
aliases and their DestinationConfig, the watchdog rule and the IAM policy are moto's; the
asynchronous invoke is stubbed (moto cannot run functions without Docker) by a client that
runs the invoked function when the test says, then invokes the destination its alias's event
invoke config names with Lambda's destination record (twice, or not at all). moto keeps one
event invoke config per function whatever its qualifier, so the stub also keeps each
(function, qualifier)'s, as Lambda does, and routes by it."""

from __future__ import annotations

import collections
import fnmatch
import json
import os
import random
import subprocess
import sys
import threading
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import boto3

from airflow_provider_lambdamr.engine import coordinator, iam, jobdir, packaging
from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes.aws import AwsRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from tests.helpers import read_counts
from tests.integration.test_aws_runtime import AsyncLambda


class DestinedLambda:
    """Lambda's asynchronous invoke with destinations, run step by step by the test."""

    def __init__(self, real) -> None:
        self.real = real
        self.queue: list[tuple[str, str, str, dict]] = []
        self.calls: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        #: (function, qualifier) -> the event invoke config put, as Lambda keeps them.
        self.invoke_configs: dict[tuple[str, str | None], dict] = {}

    def put_function_event_invoke_config(self, *, FunctionName, Qualifier=None, **config):
        self.invoke_configs[(FunctionName, Qualifier)] = config
        return self.real.put_function_event_invoke_config(FunctionName=FunctionName, **(
            {"Qualifier": Qualifier} if Qualifier else {}), **config)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def invoke(self, *, FunctionName, Qualifier, InvocationType, Payload):
        assert InvocationType == "Event"
        self.real.get_alias(FunctionName=FunctionName, Name=Qualifier)  # it exists
        rid = str(uuid.uuid4())
        event = json.loads(Payload)
        with self.lock:
            self.queue.append((rid, FunctionName, Qualifier, event))
            self.calls[(FunctionName, Qualifier, event["task"]["phase"], json.dumps(event["task"]))] += 1
        return {"StatusCode": 202, "ResponseMetadata": {"RequestId": rid}}

    def run_task(self, rnd: random.Random) -> list[tuple[str, dict]]:
        """Run one queued task invocation; the destination invocations its end causes."""
        with self.lock:
            rid, name, qualifier, event = self.queue.pop(rnd.randrange(len(self.queue)))
        try:
            ok, response = True, AsyncLambda.HANDLERS[name.rsplit("-", 1)[1]](event, SimpleNamespace(aws_request_id=rid))
        except Exception as err:
            ok, response = False, {"errorType": type(err).__name__, "errorMessage": str(err)}
        config = self.invoke_configs[(name, qualifier)]
        target = config["DestinationConfig"]["OnSuccess" if ok else "OnFailure"]["Destination"]
        arn = f"{self.real.get_function(FunctionName=name)['Configuration']['FunctionArn']}:{qualifier}"
        return [(target, coordinator.destination_record(rid, arn, event, ok, response))]

    def coordinate(self, target: str, record: dict) -> dict:
        """The coordinator function invoked (as the destination or the watchdog's target)."""
        name, alias = target.split(":")[-2:]
        assert self.real.get_alias(FunctionName=name, Name=alias)["AliasArn"] == target
        handler = self.real.get_function(FunctionName=name, Qualifier=alias)["Configuration"]["Handler"]
        assert handler == coordinator.HANDLER
        return coordinator.handle(record, lambda_client=lambda: self)


def test_a_job_on_lambda_commits_through_destinations_and_the_watchdog_with_each_task_launched_once(
    lambda_client, role_arn, s3_bucket
):
    s3 = boto3.client("s3")
    expected: collections.Counter = collections.Counter()
    for i in range(5):
        text = "\n".join(f"k{j % 7} x{i % 2}" for j in range(60))
        expected.update(text.split())
        s3.put_object(Bucket=s3_bucket, Key=f"in/{i}.txt", Body=text.encode())
    client = DestinedLambda(lambda_client)
    prefix = f"lmr-{uuid.uuid4().hex[:6]}"
    spec = JobSpec(job="wordcount", inputs={"": [f"s3://{s3_bucket}/in"]}, output=f"s3://{s3_bucket}/out",
                   max_files_per_task=1, partitions=2, fan_in=2, runtime="aws", role_arn=role_arn,
                   function_prefix=prefix, concurrency=2, coordinator=True, speculation=False)
    rt = AwsRuntime(client, role_arn=role_arn, function_prefix=prefix, concurrency=2, timeout_s=60)
    outcome = Driver(spec, rt).launch()
    assert outcome.state == "running" and len(outcome.launched) == 2

    config = coordinator.read_config(spec.job_dir)["deployment"]
    target = config["coordinator"]["arn"]
    for kind in ("mapper", "reducer"):  # the job's tasks run through their coordinated alias ...
        alias = config["functions"][kind]["alias"]
        assert alias.endswith("-coordinated")
        dest = client.invoke_configs[(f"{prefix}-{kind}", alias)]
        assert dest["DestinationConfig"] == {"OnSuccess": {"Destination": target}, "OnFailure": {"Destination": target}}
        assert dest["MaximumRetryAttempts"] == 0
        assert "DestinationConfig" not in client.invoke_configs[(f"{prefix}-{kind}", None)]  # other jobs' alias
    assert client.invoke_configs[(f"{prefix}-coordinator", None)]["MaximumRetryAttempts"] == 2
    events = boto3.client("events", region_name="us-east-1")
    rule = config["coordinator"]["watchdog_rule"]
    assert events.describe_rule(Name=rule)["ScheduleExpression"] == "rate(1 minute)"
    (watch,) = events.list_targets_by_rule(Rule=rule)["Targets"]
    assert watch["Arn"] == target and json.loads(watch["Input"]) == coordinator.watchdog_event(spec.job_dir)

    rnd = random.Random(4)
    done = False
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(300):
            deliveries = []
            while client.queue:
                for dest, record in client.run_task(rnd):
                    if rnd.random() >= 0.25:  # delivered twice, or dropped
                        deliveries += [(dest, record), (dest, record)]
            rnd.shuffle(deliveries)
            if not deliveries:  # EventBridge's schedule fires
                deliveries = [(watch["Arn"], json.loads(watch["Input"]))]
            outcomes = list(pool.map(lambda d: client.coordinate(*d), deliveries))
            assert not any(o["state"] == "failed" for o in outcomes), outcomes
            if any(o["finished"] for o in outcomes) and not client.queue:
                done = True
                break
    assert done, "the job did not commit"
    assert read_counts(spec.output) == dict(expected)
    assert jobdir.read_success(spec.output).summary["job_id"] == spec.job_id
    assert set(client.calls.values()) == {1}  # every task attempt invoked once
    assert {q for _, q, _, _ in client.calls} == {f"v{rt.package.version}-coordinated"}
    assert not events.list_rules(NamePrefix=rule)["Rules"]  # the watchdog ended with its job
    # pruning old versions keeps the live version's coordinated alias, and the coordinator's
    from airflow_provider_lambdamr.engine.runtimes.aws import prune_functions

    pruned = prune_functions(lambda_client, prefix)
    assert pruned[f"{prefix}-mapper"]["aliases"] == [] and pruned[f"{prefix}-coordinator"]["aliases"] == []
    assert {a["Name"] for a in lambda_client.list_aliases(FunctionName=f"{prefix}-mapper")["Aliases"]} == {
        f"v{rt.package.version}", f"v{rt.package.version}-coordinated"}

    # The role's policy covers exactly what the coordinator mode calls, and moto accepts it.
    account = role_arn.split(":")[4]
    policy = iam.execution_policy(inputs=[f"s3://{s3_bucket}/in"], job_root=spec.job_root, outputs=[spec.output],
                                  region="us-east-1", account_id=account, function_prefix=prefix,
                                  coordinator=True)
    grants = {a: [r for s in policy["Statement"] if a in s["Action"] for r in s["Resource"]]
              for a in ("lambda:InvokeFunction", "events:DeleteRule", "events:RemoveTargets")}
    invoked = [target] + [f"arn:aws:lambda:us-east-1:{account}:function:{name}:{q}" for name, q, _, _ in client.calls]
    for arn in invoked:
        assert any(fnmatch.fnmatchcase(arn, r) for r in grants["lambda:InvokeFunction"]), arn
    rule_arn = f"arn:aws:events:us-east-1:{account}:rule/{rule}"
    assert all(any(fnmatch.fnmatchcase(rule_arn, r) for r in grants[a]) for a in ("events:DeleteRule",
                                                                                   "events:RemoveTargets"))
    assert not any(fnmatch.fnmatchcase(f"arn:aws:lambda:us-east-1:{account}:function:other-mapper:v1", r)
                   for r in grants["lambda:InvokeFunction"])
    name = f"lmr-coord-{uuid.uuid4().hex[:6]}"
    iam.create_role(boto3.client("iam"), role_name=name, policy=policy)


def test_the_coordinator_zip_carries_the_engine_and_imports_no_airflow(tmp_path):
    package = packaging.build("lambda_src.jobs.wordcount:WordCount", include=coordinator.ENGINE)
    assert "airflow_provider_lambdamr" in package.modules
    with zipfile.ZipFile(package.path) as zf:
        zf.extractall(tmp_path / "code")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.modules['airflow'] = None\n"
        "import airflow_provider_lambdamr.engine.coordinator as c\n"
        "assert c.__file__.startswith(sys.argv[1]), c.__file__\n"
        "assert callable(c.lambda_handler)\n"
        "assert not [m for m in sys.modules if m.startswith('airflow.')]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path / "code")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
