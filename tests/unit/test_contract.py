"""The contract module: specs round-trip through events that the JSON Schema accepts, and the
driver decides retries from a failure's kind, never from its text."""

from __future__ import annotations

import importlib
import json
import queue
import re
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes import HANDLERS, InvocationResult, Runtime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
EVENT = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "event.schema.json").read_text()))
JOB = contract.JobConfig(ref="lambda_src.jobs.wordcount:WordCount", params={"x": "1"}, partitions=3)

SPECS = [
    contract.MapTask("j1", "file:///jobs/j1", JOB, index=7, count=9, items=[
        {"uri": "file:///in/a.txt", "start": 0, "end": 5, "size": 5}]),
    contract.MapTask("j1", "file:///jobs/j1", JOB, index=0, count=1, items=[], output="file:///out"),
    contract.MapTask("j1", "file:///jobs/j1", JOB, step=2, index=3, count=4, attempt=2,
                     items_uri="file:///jobs/j1/tasks/step-03-map-00003.json"),
    contract.ReduceTask("j1", "s3://b/jobs/j1", JOB, round=2, partition=1, group=4, items=["s3://b/jobs/j1/x"]),
    contract.ReduceTask("j1", "s3://b/jobs/j1", JOB, step=1, round=1, partition=0, group=0, final=True,
                        items=["s3://b/jobs/j1/y"], output="s3://b/out"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.status_key())
def test_a_spec_round_trips_through_an_event_the_schema_accepts(spec):
    event = json.loads(json.dumps(spec.to_event()))
    EVENT.validate(event)
    assert contract.task_from_event(event) == spec


def test_status_keys_and_paths_of_every_step():
    assert [s.status_key() for s in SPECS] == [
        "map/00007", "map/00000", "step-03/map/00003", "reduce/r002/p00001-g00004",
        "step-02/reduce/r001/p00000-g00000"]
    assert SPECS[2].run_uri("a1-x", 5) == "file:///jobs/j1/step-03/map/00003/a1-x/part-00005"
    assert SPECS[3].run_uri("a1-x", "run", arrow=True) == "s3://b/jobs/j1/reduce/r002/p00001-g00004/a1-x/run.arrow"
    assert SPECS[4].stored_list_uri() == "s3://b/jobs/j1/tasks/step-02-reduce-r001-p00000-g00000.json"
    assert SPECS[4].failed_attempt_uri("a1-x") == (
        "s3://b/jobs/j1/status/step-02/reduce/r001/p00000-g00000.failed-a1-x.json")
    assert contract.committed_status_key("s3://b/jobs/j1", SPECS[4].status_uri()) == SPECS[4].status_key()
    assert contract.committed_status_key("s3://b/jobs/j1", SPECS[4].failed_attempt_uri("a1-x")) is None


class _Misreporting(Runtime):
    """Runs the handlers in this process; fails map task 0's first attempt with ``failure``,
    under an error type and message that say the opposite of the failure's kind."""

    name = "misreporting"

    def __init__(self, failure: contract.Failure, error_type: str) -> None:
        self.failure = failure
        self.error_type = error_type
        self.results: queue.Queue[InvocationResult] = queue.Queue()
        self.attempts: list[tuple[str, int]] = []

    capacity = 1

    def deploy(self, package) -> dict:
        return {"runtime": self.name}

    def invoke(self, spec, trace_header=None) -> str:
        rid = f"r{len(self.attempts)}"
        self.attempts.append((spec.status_key(), spec.attempt))
        if spec.status_key() == "map/00000" and spec.attempt == 1:
            self.results.put(InvocationResult(rid, False, failure=self.failure, error={
                "errorType": self.error_type, "errorMessage": f"map task 0 of 1 failed: {self.error_type}: no"}))
            return rid
        module, _, attr = HANDLERS[spec.function].rpartition(".")
        handler = getattr(importlib.import_module(module), attr)
        self.results.put(InvocationResult(rid, True, payload=handler(spec.to_event(),
                                                                     SimpleNamespace(aws_request_id=rid))))
        return rid

    def poll(self, timeout: float) -> list[InvocationResult]:
        try:
            return [self.results.get(timeout=timeout)]
        except queue.Empty:
            return []

    def close(self) -> None:
        pass


def _spec(tmp_path) -> JobSpec:
    (tmp_path / "in.txt").write_text("a b a\n")
    return JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   speculation=False, max_attempts=3)


def test_a_retryable_kind_is_retried_whatever_its_error_type_says(tmp_path):
    runtime = _Misreporting(contract.Failure(kind="task", type="OSError", message="disk hiccup"), "TaskInputError")
    Driver(_spec(tmp_path), runtime).run()
    assert runtime.attempts[:2] == [("map/00000", 1), ("map/00000", 2)]
    assert (tmp_path / "out" / "part-00000").read_text() == "a,2\nb,1\n"


@pytest.mark.parametrize("kind,verdict", [
    ("input", "failed (not retried: the input itself is at fault)"),
    ("job", "failed (not retried: a bug in the job's code, which a retry cannot fix)"),
    ("cancelled", "was cancelled"),
])
def test_a_kind_a_retry_cannot_fix_fails_at_once_whatever_its_error_type_says(tmp_path, kind, verdict):
    runtime = _Misreporting(contract.Failure(kind=kind, type="ValueError", message="the cause"), "TaskError")
    with pytest.raises(JobFailed, match="^" + re.escape(f"map task 0 of 1 {verdict}: ValueError: the cause (input: ")):
        Driver(_spec(tmp_path), runtime).run()
    assert runtime.attempts == [("map/00000", 1)]


def test_a_record_of_an_older_release_without_kind_is_read_by_its_failure_class():
    base = {"type": "InputError", "message": "m", "traceback": ""}
    assert contract.Failure.from_dict({**base, "failure": "TaskInputError"}).kind == "input"
    assert contract.Failure.from_dict({**base, "failure": "TaskJobError"}).kind == "job"
    assert contract.Failure.from_dict({**base, "failure": "TaskError"}).retryable
