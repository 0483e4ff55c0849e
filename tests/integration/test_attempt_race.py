"""Two deliveries of one map task racing: each writes under its own attempt token, and the
committed status record names only files that attempt wrote.

The handlers run on threads of this process (a runtime of the test's own), so the test can
fix the worst interleaving: the first delivery writes its outputs, the second then runs
whole and commits, and only then does the first write its status record (the last one
written, the one storage keeps). The deliveries write different bytes for the same result
(the second does not combine), so a status record pointing at the other delivery's files
shows in its record and byte counts.
"""

from __future__ import annotations

import collections
import importlib
import json
import queue
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes import HANDLERS, InvocationResult, Runtime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from lambda_src import task
from tests.helpers import read_counts

RACED = "map/00000"  # the status key of the task delivered twice
WAIT_S = 60


def _handler(function: str):
    module, _, attr = HANDLERS[function].rpartition(".")
    return getattr(importlib.import_module(module), attr)


class RacingRuntime(Runtime):
    """Runs each invocation on a thread; the first attempt of the raced task is delivered twice."""

    name = "threads"

    def __init__(self) -> None:
        self.results: queue.Queue[InvocationResult] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.first_wrote_outputs = threading.Event()
        self.second_committed = threading.Event()
        self.committed: list[tuple[str, str]] = []  # (delivery, attempt token), in commit order

    @property
    def capacity(self) -> int:
        return 2

    def deploy(self, package) -> dict:
        return {"runtime": self.name}

    def invoke(self, spec, trace_header: str | None = None) -> str:
        rid = str(uuid.uuid4())
        function, event = spec.function, spec.to_event()
        handler = _handler(function)
        raced = function == "mapper" and event["task"].get("index") == 0 and event["task"]["attempt"] == 1

        def deliver(report: bool) -> None:
            if threading.current_thread().name == "second" and not self.first_wrote_outputs.wait(WAIT_S):
                raise AssertionError("the first delivery never reached its commit")
            try:
                record = handler(event, SimpleNamespace(aws_request_id=rid))
            except Exception as err:
                result = InvocationResult(rid, ok=False, error={"errorType": type(err).__name__,
                                                                "errorMessage": str(err)})
            else:
                result = InvocationResult(rid, ok=True, payload=record)
            if report:
                self.results.put(result)

        if raced:  # a duplicate delivery: both run, Lambda reports one of them
            self._start(deliver, "first", report=False)
            self._start(deliver, "second", report=True)
        else:
            self._start(deliver, f"task-{rid[:8]}", report=True)
        return rid

    def _start(self, target, name: str, report: bool) -> None:
        thread = threading.Thread(target=target, args=(report,), name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def poll(self, timeout: float) -> list[InvocationResult]:
        try:
            out = [self.results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self.results.empty():
            out.append(self.results.get_nowait())
        return out

    def close(self) -> None:
        for thread in self.threads:
            thread.join(WAIT_S)

    def write_json(self, real, uri: str, record: dict) -> None:
        """task.write_json, holding the first delivery's commit until the second has committed."""
        who = threading.current_thread().name
        if not uri.endswith(f"/status/{RACED}.json") or who not in ("first", "second"):
            real(uri, record)
            return
        if who == "first":
            self.first_wrote_outputs.set()
            if not self.second_committed.wait(WAIT_S):
                raise AssertionError("the second delivery never committed")
        real(uri, record)
        self.committed.append((who, record["attempt_token"]))
        if who == "second":
            self.second_committed.set()


def _uncombined(cls):
    """The same job, but passing every pair through its combiner uncombined: the same result
    from different map output bytes."""

    class Uncombined(cls):
        def combiner(self, key, values):
            for value in values:
                yield key, value

    return Uncombined


def _assert_outputs_are_the_attempts(record: dict) -> None:
    """Every output of a status record is under its attempt token and holds what it says."""
    token = record["attempt_token"]
    assert record["outputs"], record
    for out in record["outputs"]:
        assert f"/{token}/" in out["uri"], (token, out["uri"])
        data = st.for_uri(out["uri"]).read_bytes(out["uri"])
        assert (data.count(b"\n"), len(data)) == (out["records"], out["bytes"]), (
            f"{out['uri']} does not hold the output its attempt {token} committed")


def test_two_deliveries_of_a_map_task_racing_commit_one_attempts_outputs(tmp_path, fixture_jobs_path,
                                                                        monkeypatch):
    words = ["a", "b", "a", "c", "a", "b"]
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.txt").write_text(" ".join(words[i:]) + "\n")
    expected = collections.Counter(w for i in range(3) for w in words[i:])
    runtime = RacingRuntime()
    monkeypatch.setattr(task, "write_json", lambda uri, record, real=task.write_json:
                        runtime.write_json(real, uri, record))
    real_load = task.load_job_class
    monkeypatch.setattr(task, "load_job_class", lambda ref: _uncombined(real_load(ref))
                        if threading.current_thread().name == "second" else real_load(ref))
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                   output=str(tmp_path / "out"), max_files_per_task=1, partitions=2, speculation=False,
                   keep_intermediates=True)
    with runtime:
        summary = Driver(spec, runtime).run()

    assert read_counts(str(tmp_path / "out")) == dict(expected)  # counted once, not twice
    assert summary["tasks"]["map"] == 3 and summary["invocations"]["map"]["invocations"] == 3
    # both deliveries wrote outputs and a status record, the second first, under their own tokens
    assert [who for who, _ in runtime.committed] == ["second", "first"]
    first_token, second_token = runtime.committed[1][1], runtime.committed[0][1]
    assert first_token != second_token, "two attempts of one task share an attempt token"
    job_dir = Path(st.local_path(summary["job_dir"]))
    stored = json.loads((job_dir / "status" / f"{RACED}.json").read_text())
    assert stored["attempt_token"] == first_token  # the last record written is the one kept
    _assert_outputs_are_the_attempts(stored)
    committed = json.loads((job_dir / "map.json").read_text())["tasks"][0]
    _assert_outputs_are_the_attempts({"attempt_token": second_token, **committed})  # the reported one
