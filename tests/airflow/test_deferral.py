"""Deferrable map and reduce operators: launch a wave of invocations, defer, resume, repeat.

Each resume is a fresh operator object whose driver rebuilds the job from storage, as a task
resumed in another worker process does; the invocations run on the local function service
(a test-private one, ``svc_dir``), which outlives the launching task.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from lambda_src import storage as st
from tests.helpers import read_counts
from tests.integration.test_service import svc_dir  # noqa: F401 - the fixture

JOB = "userjobs.faulty:FaultyCount"
WORD = re.compile(r"\S+")


def _words(tmp_path: Path, files: int = 4) -> tuple[str, collections.Counter]:
    data = tmp_path / "in"
    data.mkdir()
    expected: collections.Counter = collections.Counter()
    for i in range(files):
        text = "".join(f"w{j % 13} x{i} common {j % 5}\n" for j in range(60 + 7 * i))
        (data / f"f{i}.txt").write_text(text)
        expected.update(WORD.findall(text))
    return str(data), expected


class _TI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def _context(**extra):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    return {"dag": SimpleNamespace(dag_id="d"), "run_id": "manual__1", "ti": _TI(),
            "outlet_events": OutletEventAccessors(), **extra}


def _first_event(trigger) -> dict:
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def _drive(make_op, context) -> tuple[object, list]:
    """Run a deferrable task as the task runner and triggerer do: execute, then for every
    deferral run the trigger (rebuilt from its serialization) and resume a fresh copy of
    the operator with the event. Returns the result and the deferrals, in order."""
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.module_loading import import_string

    deferrals = []
    call = make_op().execute
    args: dict = {}
    while True:
        try:
            return call(context, **args), deferrals
        except TaskDeferred as deferred:
            assert deferred.method_name == "execute_complete"
            classpath, kwargs = deferred.trigger.serialize()
            assert json.loads(json.dumps(kwargs)) == kwargs, "the trigger's kwargs must be JSON"
            deferrals.append(deferred)
            assert len(deferrals) < 100, "the task defers again and again without moving the job on"
            event = _first_event(import_string(classpath)(**kwargs))
            call, args = make_op().execute_complete, {"event": event}


def _map_op(tmp_path: Path, inputs: str, **kwargs):
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    options = {"job": JOB, "inputs": inputs, "output_uri": str(tmp_path / "out"), "runtime": "service",
               "workers": 2, "split_size": 400, "partitions": 2, "fan_in": 2, "speculation": False,
               "deferrable": True, "poll_interval": 0.1, "aws_conn_id": None, **kwargs}
    return lambda: LambdaMapOperator(task_id="map", **options)


def _reduce_op(job_dir: str, **kwargs):
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaReduceOperator

    return lambda: LambdaReduceOperator(task_id="reduce", job_dir=job_dir, deferrable=True, poll_interval=0.1,
                                        aws_conn_id=None, **kwargs)


def test_deferrable_map_and_reduce_finish_exactly_over_defer_cycles_with_a_failure_retried(
        svc_dir, tmp_path, fixture_jobs_path):  # noqa: F811
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReduceWaveTrigger

    inputs, expected = _words(tmp_path)
    marker = tmp_path / "failed-once"
    make_map = _map_op(tmp_path, inputs, job_params={"fail_once": str(marker)})
    summary, deferrals = _drive(make_map, _context())
    assert all(isinstance(d.trigger, LambdaMapReduceWaveTrigger) and d.timeout is None for d in deferrals)
    map_deferrals = [d.trigger.serialize()[1] for d in deferrals]
    assert marker.exists(), "the injected failure did not fire"
    job_dir = Path(st.local_path(summary["job_dir"]))
    failed = list((job_dir / "status" / "map").glob("*.failed-*.json"))
    assert len(failed) == 1, failed
    assert summary["map_tasks"] == len(json.loads((job_dir / "jobdata.json").read_text())["tasks"]) > 2
    assert len(map_deferrals) >= 2, "the map phase took one wave: it did not resume and defer again"
    first = map_deferrals[0]
    assert first["job_dir"] == summary["job_dir"] and first["runtime"] == "service"
    assert first["task_ref"].endswith(".map") and first["budget_base"] == {}
    assert first["in_flight"] and all(f["key"].startswith("map/") for f in first["in_flight"])
    # the retry of the failed task was launched by a resumed operator, waiting on the new attempt
    assert any(f["attempt"] == 2 for d in map_deferrals[1:] for f in d["in_flight"])
    assert not (job_dir / "status" / "reduce").exists(), "the map task must stop at the map commit"

    result, deferrals = _drive(_reduce_op(summary["job_dir"]), _context())
    reduce_deferrals = [d.trigger.serialize()[1] for d in deferrals]
    assert read_counts(str(tmp_path / "out")) == expected
    assert result["output_records"] == len(expected)
    assert reduce_deferrals and all(f["key"].startswith("reduce/") for d in reduce_deferrals for f in d["in_flight"])


def test_deferrable_refuses_the_local_runtime_by_name(tmp_path):
    from airflow.sdk.exceptions import AirflowException

    (tmp_path / "in.txt").write_text("a\n")
    op = _map_op(tmp_path, str(tmp_path / "in.txt"), runtime="local")()
    with pytest.raises(AirflowException, match=r"task map: deferrable=True needs a runtime whose invocations "
                                               r"outlive the task process.*runtime 'local'"):
        op.execute(_context())
    assert not (tmp_path / "out").exists(), "nothing may be planned or launched"


def test_a_task_retry_after_the_job_failed_gets_a_fresh_retry_budget(svc_dir, tmp_path, fixture_jobs_path):  # noqa: F811
    from airflow.sdk.exceptions import AirflowException

    (tmp_path / "in.txt").write_text("a b\n")
    make = _map_op(tmp_path, str(tmp_path / "in.txt"), partitions=1, max_attempts=2,
                   job_params={"always_fail": "1"})
    status = tmp_path / "out" / "_jobs" / "d__manual__1" / "status" / "map"
    for try_number in (1, 2):  # the Airflow task's first try, then its retry after the job failed
        with pytest.raises(AirflowException, match=r"map task 0 of 1 failed after 2 attempts"):
            _drive(make, _context())
        assert len(list(status.glob("00000.failed-*.json"))) == 2 * try_number


def test_the_wave_trigger_wakes_on_a_record_or_wake_at_and_names_job_and_task_on_error(tmp_path, monkeypatch):
    import time

    from airflow_provider_lambdamr.hooks.job_state import JobStateReader
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReduceWaveTrigger

    job_dir = tmp_path / "job"
    (job_dir / "status" / "map").mkdir(parents=True)
    in_flight = [{"request_id": "r1", "key": "map/00000", "attempt": 1, "started_at": 1.0},
                 {"request_id": "r2", "key": "map/00001", "attempt": 2, "started_at": 1.0}]

    def trigger(**kw):
        return LambdaMapReduceWaveTrigger(job_dir=str(job_dir), job_id="j", task_ref="d.t", in_flight=in_flight,
                                          poll_interval=0.01, aws_conn_id=None, **kw)

    woke = _first_event(trigger(wake_at=time.time() + 0.2))
    assert woke["status"] == "ready" and "settled" not in woke and woke["in_flight"] == in_flight
    # an earlier attempt's failure record is not the awaited attempt's: it does not wake
    (job_dir / "status" / "map" / "00001.failed-a1-x.json").write_text("{}")
    assert "settled" not in _first_event(trigger(wake_at=time.time() + 0.2))
    (job_dir / "status" / "map" / "00001.failed-a2-y.json").write_text("{}")
    assert _first_event(trigger())["settled"] == ["map/00001"]
    (job_dir / "status" / "map" / "00000.json").write_text("{}")
    assert _first_event(trigger())["settled"] == ["map/00000", "map/00001"]

    async def broken(self, job_dir, awaited):
        raise OSError("listing refused")

    monkeypatch.setattr(JobStateReader, "settled", broken)
    error = _first_event(trigger())
    assert error["status"] == "error"
    assert "LambdaMR job j" in error["message"] and "task d.t" in error["message"]
    assert "OSError: listing refused" in error["message"]


def _outcomes(request_ids: list[str], tries: int = 50) -> dict[str, dict]:
    """What the service says of ``request_ids`` (waiting up to ``tries`` × 0.2 s for each to end)."""
    from airflow_provider_lambdamr.engine.runtimes import service

    found: dict[str, dict] = {}
    with service.connect(start=False) as client:
        for _ in range(tries):
            found.update(client.request("wait", request_ids=[r for r in request_ids if r not in found],
                                        timeout=0.2)["outcomes"])
            if len(found) == len(request_ids):
                break
    return found


@pytest.mark.parametrize("who", ["operator", "trigger"])
def test_cancel_on_kill_cancels_the_invocations_in_flight_on_the_service(
        svc_dir, tmp_path, fixture_jobs_path, who):  # noqa: F811
    from airflow.sdk.exceptions import TaskDeferred

    (tmp_path / "in.txt").write_text("a b\n")
    op = _map_op(tmp_path, str(tmp_path / "in.txt"), partitions=1, job_params={"sleep_always": "60"})()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context())
    request_ids = [f["request_id"] for f in deferred.value.trigger.in_flight]
    assert request_ids and not _outcomes(request_ids, tries=2), "the invocation should still be running"
    if who == "operator":
        op.on_kill()  # the task killed while it launched: it knows what it launched
    else:
        asyncio.run(deferred.value.trigger.on_kill())  # a user killed the deferred task
    ended = _outcomes(request_ids)
    assert {rid: o.get("error", {}).get("errorType") for rid, o in ended.items()} == dict.fromkeys(
        request_ids, "Runtime.Cancelled")


def test_aws_cannot_cancel_and_says_so(caplog):
    import logging

    from airflow_provider_lambdamr.triggers.lambda_mr import cancel_invocations

    with caplog.at_level(logging.WARNING):
        cancel_invocations("aws", ["r1", "r2"], logging.getLogger("t"))
    assert "runtime aws cannot cancel invocations: 2 in flight run to completion" in caplog.text


def test_a_map_task_that_does_not_wait_hands_its_invocations_to_the_reduce_task(
        svc_dir, tmp_path, fixture_jobs_path):  # noqa: F811
    inputs, expected = _words(tmp_path)
    make_map = _map_op(tmp_path, inputs, wait_for_completion=False, deferrable=False,
                       job_params={"sleep_always": "0.5"})
    launched, deferrals = _drive(make_map, _context())
    assert not deferrals and launched["in_flight"], launched
    assert all(f["key"].startswith("map/") for f in launched["in_flight"])
    _drive(_reduce_op(launched["job_dir"], launched=launched, keep_intermediates=True), _context())
    assert read_counts(str(tmp_path / "out")) == expected
    # the reduce task adopted the map invocations in flight: no map task ran twice
    job_dir = Path(st.local_path(launched["job_dir"]))
    attempts = {index.name: [t.name for t in index.iterdir()] for index in (job_dir / "map").iterdir()}
    planned = len(json.loads((job_dir / "jobdata.json").read_text())["tasks"])
    assert len(attempts) == planned and all(len(tokens) == 1 for tokens in attempts.values()), attempts


def test_the_reduce_operator_refuses_not_waiting():
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaReduceOperator

    with pytest.raises(ValueError, match=r"LambdaReduceOperator r: wait_for_completion=False would leave the job "
                                         r"without a driver between reduce rounds"):
        LambdaReduceOperator(task_id="r", job_dir="/x", wait_for_completion=False)


def test_not_waiting_refuses_the_local_runtime_too(tmp_path):
    from airflow.sdk.exceptions import AirflowException

    (tmp_path / "in.txt").write_text("a\n")
    op = _map_op(tmp_path, str(tmp_path / "in.txt"), runtime="local", deferrable=False, wait_for_completion=False)()
    with pytest.raises(AirflowException, match=r"wait_for_completion=False needs a runtime whose invocations "
                                               r"outlive the task process.*or wait_for_completion=True"):
        op.execute(_context())


def test_deferrable_operators_on_the_aws_runtime_launch_defer_retry_and_commit_exactly(
        lambda_client, role_arn, s3_bucket, tmp_path, fixture_jobs_path, monkeypatch):
    """The aws runtime's deferral path: moto answers the deploy (functions, versions, aliases)
    and S3; Lambda's asynchronous invoke is the tests' stub (the handlers run on threads of
    this process). Each resume is a fresh operator; the triggers read the status records
    through their own aiobotocore client."""
    import boto3

    from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook
    from tests.integration.test_aws_runtime import AsyncLambda

    stub = AsyncLambda(lambda_client)
    monkeypatch.setattr(LambdaMapReduceHook, "lambda_hook", property(lambda self: SimpleNamespace(conn=stub)))
    local, expected = _words(tmp_path)
    s3 = boto3.client("s3")
    for path in sorted(Path(local).iterdir()):
        s3.put_object(Bucket=s3_bucket, Key=f"in/{path.name}", Body=path.read_bytes())
    marker = tmp_path / "failed-once"
    output = f"s3://{s3_bucket}/out"
    make_map = _map_op(tmp_path, f"s3://{s3_bucket}/in/", output_uri=output, runtime="aws", workers=None,
                       role_arn=role_arn, function_prefix="lmr-defer", timeout_s=30, concurrency=3,
                       job_params={"fail_once": str(marker)})
    summary, deferrals = _drive(make_map, _context())
    map_deferrals = [d.trigger.serialize()[1] for d in deferrals]
    assert marker.exists() and len(map_deferrals) >= 2
    assert all(d["runtime"] == "aws" and d["job_dir"].startswith(f"s3://{s3_bucket}/") for d in map_deferrals)
    assert any(f["attempt"] == 2 for d in map_deferrals[1:] for f in d["in_flight"]), "the retry was not deferred on"
    assert max(len(d["in_flight"]) for d in map_deferrals) <= 3, "the concurrency window was not kept"

    result, deferrals = _drive(_reduce_op(summary["job_dir"]), _context())
    assert deferrals and all(d.trigger.serialize()[1]["runtime"] == "aws" for d in deferrals)
    assert read_counts(output) == expected and result["output_records"] == len(expected)
    success = json.loads(s3.get_object(Bucket=s3_bucket, Key="out/_SUCCESS")["Body"].read())
    # every map invocation counted (one failed and was retried), however many resumes launched them
    assert success["invocations"]["map"]["invocations"] == summary["map_tasks"] + 1
    assert success["invocations"]["map"]["failed_invocations"] == 1
    assert sum(stub.calls.values()) == success["invocations"]["map"]["invocations"] + \
        success["invocations"]["reduce"]["invocations"]
