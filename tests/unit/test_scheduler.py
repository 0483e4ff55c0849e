"""The scheduler against a fake runtime: the window, retries, lost tasks, speculation, the
deadline, and a scheduler rebuilt from storage in a fresh process continuing another's work."""

from __future__ import annotations

import json

import pytest

from airflow_provider_lambdamr.engine import jobstate
from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult, Runtime
from airflow_provider_lambdamr.engine.scheduler import DeadlinePassed, Policy, Scheduler, Task, TaskFailed
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import Failure, JobConfig, MapTask, StatusRecord


class FakeRuntime(Runtime):
    """Invocations finish when the test says so; failures leave a handler's failed-attempt record."""

    name = "fake"

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.invoked: list[tuple[str, MapTask]] = []
        self.cancelled: list[str] = []
        self._results: list[InvocationResult] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def deploy(self, package) -> dict:
        return {}

    def invoke(self, spec, trace_header=None) -> str:
        rid = f"r{len(self.invoked) + 1}"
        self.invoked.append((rid, spec))
        return rid

    def poll(self, timeout: float) -> list[InvocationResult]:
        out, self._results = self._results, []
        return out

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def close(self) -> None:
        pass

    # -- what the test drives
    def spec_of(self, rid: str) -> MapTask:
        return dict(self.invoked)[rid]

    def succeed(self, rid: str) -> None:
        """The handler commits: its status record, then the result."""
        spec = self.spec_of(rid)
        record = StatusRecord(spec.job_id, spec.task_dict(), "succeeded", spec.attempt,
                              contract.attempt_token(spec.attempt, rid), rid, result={"outputs": []}).to_dict()
        uri = spec.status_uri()
        st.for_uri(uri).write_bytes(uri, json.dumps(record).encode())
        self._results.append(InvocationResult(rid, True, payload=record))

    def fail(self, rid: str, kind: str = "task") -> None:
        """The handler raised: it records the failed attempt, as the contract says."""
        spec = self.spec_of(rid)
        failure = Failure(kind=kind, type="OSError", message=f"boom in {spec.describe()}")
        token = contract.attempt_token(spec.attempt, rid)
        record = StatusRecord(spec.job_id, spec.task_dict(), "failed", spec.attempt, token, rid,
                              error=failure, where=spec.describe(), duration_ms=1.0)
        uri = spec.failed_attempt_uri(token)
        st.for_uri(uri).write_bytes(uri, json.dumps(record.to_dict()).encode())
        self._results.append(InvocationResult(rid, False, error={"errorType": "TaskError"}, failure=failure))

    def lose(self, rid: str) -> None:
        """The invocation ended without a status record (the event was lost, say)."""
        self._results.append(InvocationResult(rid, True, payload=None))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tasks(job_dir: str, n: int) -> list[Task]:
    config = JobConfig(ref="wordcount", params={}, partitions=1)
    tasks = []
    for i in range(n):
        spec = MapTask("job1", job_dir, config, index=i, count=n, items=[])
        tasks.append(Task(key=spec.status_key(), spec=spec, describe=spec.describe(), input_desc=f"split {i}",
                          meta={"index": i}))
    return tasks


@pytest.fixture
def job_dir(tmp_path):
    return st.normalize(str(tmp_path / "job"))


def scheduler(rt, tasks, clock, done=None, **policy):
    committed = done if done is not None else []

    def on_done(task, record):
        committed.append(task.key)
        return []

    options = {"speculation": False, **policy}
    return Scheduler(rt, tasks, on_done, Policy(**options), clock=clock)


def keys(rt, rids):
    return [rt.spec_of(r).status_key() for r in rids]


def test_the_window_holds_capacity_and_refills_as_tasks_commit(job_dir):
    rt, clock, done = FakeRuntime(capacity=2), Clock(), []
    sched = scheduler(rt, make_tasks(job_dir, 5), clock, done)
    w = sched.advance()
    assert keys(rt, w.request_ids) == ["map/00000", "map/00001"] and w.queued == 3
    rt.succeed(w.request_ids[0])
    w = sched.advance(rt.poll(0))
    assert keys(rt, w.request_ids) == ["map/00001", "map/00002"] and w.queued == 2
    assert done == ["map/00000"] and sched.done == 1
    while not w.finished:
        for rid in w.request_ids:
            rt.succeed(rid)
        w = sched.advance(rt.poll(0))
    assert sorted(done) == [f"map/{i:05d}" for i in range(5)] and len(rt.invoked) == 5


def test_a_failed_attempt_is_retried_until_max_attempts(job_dir):
    rt, clock = FakeRuntime(capacity=4), Clock()
    sched = scheduler(rt, make_tasks(job_dir, 1), clock, max_attempts=3)
    w = sched.advance()
    for _ in range(2):
        rt.fail(w.request_ids[0])
        w = sched.advance(rt.poll(0))
    assert [spec.attempt for _, spec in rt.invoked] == [1, 2, 3] and sched.retries == 2
    rt.fail(w.request_ids[0])
    with pytest.raises(TaskFailed) as err:
        sched.advance(rt.poll(0))
    assert err.value.retryable and err.value.task.spent == 3 and len(rt.invoked) == 3
    assert "boom in map task 0 of 1" in err.value.error


def test_a_failure_a_retry_cannot_help_fails_at_once(job_dir):
    rt, clock = FakeRuntime(capacity=4), Clock()
    sched = scheduler(rt, make_tasks(job_dir, 2), clock, max_attempts=3)
    w = sched.advance()
    rt.fail(w.request_ids[1], kind="input")
    with pytest.raises(TaskFailed) as err:
        sched.advance(rt.poll(0))
    assert not err.value.retryable and err.value.task.key == "map/00001" and len(rt.invoked) == 2


def test_a_lost_task_is_retried(job_dir):
    rt, clock, done = FakeRuntime(capacity=4), Clock(), []
    sched = scheduler(rt, make_tasks(job_dir, 1), clock, done, max_attempts=2)
    w = sched.advance()
    rt.lose(w.request_ids[0])
    w = sched.advance(rt.poll(0))
    assert [spec.attempt for _, spec in rt.invoked] == [1, 2]
    assert sched.stats.invocations == 1 and sched.retries == 1
    rt.succeed(w.request_ids[0])
    assert sched.advance(rt.poll(0)).finished and done == ["map/00000"]


def test_a_straggler_gets_a_twin_after_factor_times_the_median_and_the_loser_is_cancelled(job_dir):
    rt, clock, done = FakeRuntime(capacity=8), Clock(), []
    sched = scheduler(rt, make_tasks(job_dir, 4), clock, done, speculation=True, speculation_factor=3.0,
                      speculation_min_s=1.0, max_attempts=3)
    w = sched.advance()
    started = clock.now
    clock.now += 2.0  # three tasks take 2 s each: the median; a straggler runs over 6 s
    for rid in w.request_ids[:3]:
        rt.succeed(rid)
    w = sched.advance(rt.poll(0))
    assert w.wake_at == started + 6.0 and len(w.in_flight) == 1
    clock.now = started + 5.9
    assert len(sched.advance().in_flight) == 1  # not yet a straggler
    clock.now = started + 6.1
    w = sched.advance()
    assert len(w.in_flight) == 2 and set(w.status_keys) == {"map/00003"} and sched.speculative_attempts == 1
    first, twin = w.request_ids
    assert rt.spec_of(twin).attempt == 2
    clock.now += 0.5
    assert sched.advance().wake_at is None  # one twin per task
    rt.succeed(twin)
    w = sched.advance(rt.poll(0))
    assert w.finished and rt.cancelled == [first]
    assert sorted(done) == [f"map/{i:05d}" for i in range(4)] and sched.done == 4
    rt.succeed(first)  # the cancelled attempt's late result counts for nothing
    assert sched.advance(rt.poll(0)).finished and sched.done == 4 and len(done) == 4


def test_the_deadline_cancels_what_is_in_flight_and_stops(job_dir):
    rt, clock = FakeRuntime(capacity=2), Clock()
    sched = scheduler(rt, make_tasks(job_dir, 3), clock, deadline=clock.now + 60)
    w = sched.advance()
    assert w.wake_at == clock.now + 60
    rt.succeed(w.request_ids[0])
    clock.now += 61
    with pytest.raises(DeadlinePassed) as err:
        sched.advance(rt.poll(0))
    assert sorted(rt.cancelled) == sorted(["r2", "r3"])
    assert (err.value.done, err.value.total, err.value.running, err.value.waiting) == (1, 3, 2, 0)


def test_a_scheduler_rebuilt_from_storage_continues_the_attempt_count(job_dir):
    """Process A: task 0 fails twice and its third attempt is in flight when A stops.
    Process B rebuilds from storage (failed-attempt records) and A's Waiting: the third
    failure ends the task, with no fourth attempt; without A's Waiting (the attempt lost),
    B launches attempt 3, not attempt 1."""
    rt, clock = FakeRuntime(capacity=4), Clock()
    a = scheduler(rt, make_tasks(job_dir, 2), clock, max_attempts=3)
    w = a.advance()
    rt.succeed(w.request_ids[1])
    w = a.advance(rt.poll(0))
    for _ in range(2):
        rt.fail(w.request_ids[0])
        w = a.advance(rt.poll(0))
    assert w.status_keys == ["map/00000"] and w.in_flight[0].attempt == 3

    prefix = contract.status_prefix(0, contract.MAP)
    assert jobstate.attempts_used(job_dir, prefix) == {"map/00000": 2}
    todo = [t for t in make_tasks(job_dir, 2) if t.key not in jobstate.committed(job_dir, prefix)]

    b = Scheduler(rt, todo, lambda t, r: [], Policy(max_attempts=3, speculation=False),
                  attempts=jobstate.attempts_used(job_dir, prefix), in_flight=w.in_flight, clock=clock)
    invoked = len(rt.invoked)
    assert b.advance().request_ids == w.request_ids and len(rt.invoked) == invoked  # nothing relaunched
    rt.fail(w.request_ids[0])
    with pytest.raises(TaskFailed) as err:
        b.advance(rt.poll(0))
    assert err.value.task.spent == 3 and len(rt.invoked) == invoked

    rt2 = FakeRuntime(capacity=4)
    todo = [t for t in make_tasks(job_dir, 2) if t.key not in jobstate.committed(job_dir, prefix)]
    c = Scheduler(rt2, todo, lambda t, r: [], Policy(max_attempts=4, speculation=False),
                  attempts=jobstate.attempts_used(job_dir, prefix), clock=clock)
    w = c.advance()
    assert [spec.attempt for _, spec in rt2.invoked] == [4]  # after the three recorded failures
    rt2.fail(w.request_ids[0])
    with pytest.raises(TaskFailed):  # four attempts spent in all
        c.advance(rt2.poll(0))


def test_an_invocation_that_committed_before_the_rebuild_is_not_waited_for(job_dir):
    rt, clock = FakeRuntime(capacity=4), Clock()
    a = scheduler(rt, make_tasks(job_dir, 2), clock)
    w = a.advance()
    rt.succeed(w.request_ids[0])  # commits in storage; process A stops before it sees the result
    prefix = contract.status_prefix(0, contract.MAP)
    todo = [t for t in make_tasks(job_dir, 2) if t.key not in jobstate.committed(job_dir, prefix)]
    b = Scheduler(rt, todo, lambda t, r: [], Policy(speculation=False), in_flight=w.in_flight, clock=clock)
    w2 = b.advance(rt.poll(0))
    assert w2.status_keys == ["map/00001"] and w2.request_ids == [w.request_ids[1]] and b.done == 0
    rt.succeed(w.request_ids[1])
    assert b.advance(rt.poll(0)).finished and b.done == 1 and len(rt.invoked) == 2


def test_a_fresh_budget_continues_the_numbering_but_not_the_count(job_dir):
    rt, clock = FakeRuntime(capacity=4), Clock()
    a = scheduler(rt, make_tasks(job_dir, 1), clock, max_attempts=1)
    rt.fail(a.advance().request_ids[0])
    with pytest.raises(TaskFailed):
        a.advance(rt.poll(0))
    prefix = contract.status_prefix(0, contract.MAP)
    b = Scheduler(rt, make_tasks(job_dir, 1), lambda t, r: [], Policy(max_attempts=1, speculation=False),
                  attempts=jobstate.attempts_used(job_dir, prefix), fresh_budget=True, clock=clock)
    w = b.advance()
    assert rt.spec_of(w.request_ids[0]).attempt == 2  # a new token number: no clash with attempt 1's records
    rt.succeed(w.request_ids[0])
    assert b.advance(rt.poll(0)).finished


def test_run_is_advance_and_poll_until_every_task_committed(job_dir):
    class Instant(FakeRuntime):
        def invoke(self, spec, trace_header=None):
            rid = super().invoke(spec, trace_header)
            self.succeed(rid)
            return rid

    rt, reports = Instant(capacity=2), []
    sched = scheduler(rt, make_tasks(job_dir, 5), Clock())
    sched.run(reports.append, poll_s=0)
    assert sched.done == 5 and len(rt.invoked) == 5 and reports[0] is True and reports[-1] is True
