"""Coordinator mode, in one process: the job advances only by coordinator invocations that
events trigger, delivered twice, out of order, concurrently, some dropped, with a watchdog.

``Bus`` is Lambda reduced to its asynchronous contract: ``invoke`` queues an invocation, the
test runs queued invocations (in the order it likes) with the real handlers, and each one's
end becomes a destination record for the coordinator, as Lambda's ``DestinationConfig``
sends. The same ``Bus`` runs a normal driver (its ``poll`` runs the queue), for the exact
result to compare with.
"""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from airflow_provider_lambdamr.engine import coordinator, jobdir, jobstate
from airflow_provider_lambdamr.engine import driver as driver_mod
from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.packaging import CodePackage
from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult, Runtime, read_failed_attempt
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract, mapper, reducer
from lambda_src.contract import TaskSpec
from tests.integration.test_multistep import JOB as MULTISTEP
from tests.integration.test_multistep import result as multistep_result
from tests.integration.test_multistep import write_words


@dataclass
class _Ctx:
    aws_request_id: str
    function_name: str = "bus"
    memory_limit_in_mb: str = "1536"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class Bus(Runtime):
    """Asynchronous invocations that run when the test says."""

    workers: int = 4
    name: str = "bus"
    queue: list[tuple[str, TaskSpec]] = field(default_factory=list)
    #: Invocations per (status key, attempt).
    launches: collections.Counter = field(default_factory=collections.Counter)
    deployment: dict | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capacity(self) -> int:
        return self.workers

    def deploy(self, package: CodePackage) -> dict:
        self.deployment = {"runtime": self.name, "version": package.version}
        return self.deployment

    def deploy_coordinator(self, package: CodePackage, watchdog_event: dict, every_s: float) -> dict:
        assert watchdog_event == coordinator.watchdog_event(watchdog_event[coordinator.WATCHDOG]["job_dir"])
        return {"version": package.version, "modules": list(package.modules)}

    def attach(self, deployment: dict) -> None:
        pass

    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        rid = str(uuid.uuid4())
        with self.lock:
            self.queue.append((rid, spec))
            self.launches[(spec.status_key(), spec.attempt)] += 1
        return rid

    def take(self, rnd: random.Random | None = None) -> tuple[str, TaskSpec]:
        with self.lock:
            return self.queue.pop(rnd.randrange(len(self.queue)) if rnd else 0)

    def run(self, rid: str, spec: TaskSpec) -> tuple[InvocationResult, dict]:
        """Run one invocation with the real handler: its result, and its destination record."""
        handler = {"mapper": mapper.lambda_handler, "reducer": reducer.lambda_handler}[spec.function]
        event = spec.to_event()
        try:
            payload, ok, error = handler(event, _Ctx(rid)), True, None
        except Exception as err:  # the handler wrote the failed attempt's record
            payload, ok, error = None, False, {"errorType": type(err).__name__, "errorMessage": str(err)}
        record = None if ok else read_failed_attempt(spec, rid)
        res = InvocationResult(rid, ok, payload=payload, error=error,
                               failure=record.error if record is not None else None)
        return res, coordinator.destination_record(rid, f"arn:bus:{spec.function}", event, ok,
                                                   payload if ok else error)

    def poll(self, timeout: float) -> list[InvocationResult]:
        out = []
        while self.queue:
            out.append(self.run(*self.take())[0])
        return out

    def close(self) -> None:
        pass


def _spec(tmp_path, name: str, **kw) -> JobSpec:
    base = dict(job=MULTISTEP, inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / name),
                partitions=3, fan_in=2, split_size=20_000, max_files_per_task=1, speculation=False)
    base.update(kw)
    return JobSpec(**base)


def _deliver(bus: Bus, job_dir: str, rnd: random.Random, *, drop: float, pool: ThreadPoolExecutor,
             max_rounds: int = 500) -> int:
    """Run the queued invocations in random order; deliver each end event twice (or drop
    both copies), shuffled, to concurrent coordinators; tick the watchdog when nothing is
    left. Returns how many coordinator steps ran."""
    steps = 0
    watchdog = coordinator.parse_event(coordinator.watchdog_event(job_dir))
    for _ in range(max_rounds):
        events = []
        while bus.queue:
            _, record = bus.run(*bus.take(rnd))
            if rnd.random() >= drop:
                events += [record, record]
        rnd.shuffle(events)
        if not events:
            events = [None]  # the watchdog
        futures = [pool.submit(coordinator.step, job_dir, bus,
                               coordinator.parse_event(e) if e is not None else watchdog) for e in events]
        outcomes = [f.result() for f in futures]
        steps += len(outcomes)
        if any(o.state == "succeeded" for o in outcomes) and not bus.queue:
            return steps
        if any(o.state == "failed" for o in outcomes):
            raise AssertionError(f"the job failed: {jobstate.read_failure(job_dir)}")
    raise AssertionError(f"the job did not commit within {max_rounds} delivery rounds")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplicated_reordered_dropped_events_commit_the_exact_result_launching_each_task_once(
    tmp_path, fixture_jobs_path, seed
):
    _, expected = write_words(tmp_path, files=4, lines=600, seed=seed)
    normal = _spec(tmp_path, "normal")
    Driver(normal, Bus()).run()
    assert multistep_result(normal.output) == expected

    spec = _spec(tmp_path, "coordinated", coordinator=True, runtime="service")
    bus = Bus()
    outcome = Driver(spec, bus).launch()
    assert outcome.state == "running" and len(outcome.launched) == bus.capacity  # the map fan-out's window
    with ThreadPoolExecutor(max_workers=4) as pool:
        _deliver(bus, spec.job_dir, random.Random(seed), drop=0.3, pool=pool)
    assert multistep_result(spec.output) == expected
    normal_files = sorted(p.name for p in (tmp_path / "normal").glob("part-*"))
    assert sorted(p.name for p in (tmp_path / "coordinated").glob("part-*")) == normal_files
    for name in normal_files:  # byte for byte
        assert (tmp_path / "coordinated" / name).read_bytes() == (tmp_path / "normal" / name).read_bytes()
    # every task of both steps launched exactly once, however many coordinators saw its events
    assert set(bus.launches.values()) == {1}
    committed = {k for prefix in ("map", "reduce", "step-02/map", "step-02/reduce")
                 for k in jobstate.committed(spec.job_dir, prefix)}
    assert {k for k, _ in bus.launches} == committed
    success = jobdir.read_success(spec.output).summary
    assert success["job_id"] == spec.job_id and success["steps"] == 2
    assert not list((tmp_path / "coordinated").glob(contract.CLAIM))  # released at commit


def test_a_failed_attempt_is_retried_once_with_its_attempt_count_kept_in_storage(tmp_path, fixture_jobs_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a b a\nc\n")
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                   output=str(tmp_path / "out"), runtime="service", coordinator=True, speculation=False,
                   params={"fail_once": str(tmp_path / "fail-marker"),
                           "reduce_fail_once": str(tmp_path / "reduce-marker")})
    bus = Bus()
    Driver(spec, bus).launch()
    with ThreadPoolExecutor(max_workers=4) as pool:
        _deliver(bus, spec.job_dir, random.Random(5), drop=0.0, pool=pool)
    assert (tmp_path / "out" / "part-00000").read_text().splitlines() == ["a,2", "b,1", "c,1"]
    # attempt 1 of the map task and of the reducer failed; attempt 2 of each ran, once
    assert bus.launches == {("map/00000", 1): 1, ("map/00000", 2): 1,
                            ("reduce/r001/p00000-g00000", 1): 1, ("reduce/r001/p00000-g00000", 2): 1}


def test_a_task_out_of_attempts_fails_the_job_and_later_events_change_nothing(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("a b\n")
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in.txt")]},
                   output=str(tmp_path / "out"), runtime="service", coordinator=True, max_attempts=2,
                   params={"always_fail": "1"})
    bus = Bus()
    Driver(spec, bus).launch()
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(AssertionError, match="the job failed"):
        _deliver(bus, spec.job_dir, random.Random(7), drop=0.0, pool=pool)
    failure = jobstate.read_failure(spec.job_dir)
    assert "map task 0 of 1 failed after 2 attempts" in failure["message"]
    assert coordinator.step(spec.job_dir, bus, None).state == "failed"
    assert bus.launches == {("map/00000", 1): 1, ("map/00000", 2): 1} and not bus.queue


def test_an_invocation_lost_without_any_event_is_relaunched_after_its_timeout(
    tmp_path, fixture_jobs_path, monkeypatch
):
    monkeypatch.setattr(driver_mod, "LOST_GRACE_S", 0.0)
    (tmp_path / "in.txt").write_text("x y x\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   runtime="service", coordinator=True, timeout_s=0.5, speculation=False)
    bus = Bus()
    Driver(spec, bus).launch()
    bus.take()  # the map invocation is lost: it never runs, and no event says so
    watchdog = coordinator.parse_event(coordinator.watchdog_event(spec.job_dir))
    assert coordinator.step(spec.job_dir, bus, watchdog).launched == ()  # not yet past its timeout
    time.sleep(0.6)
    assert coordinator.step(spec.job_dir, bus, watchdog).launched == (("map/00000", 2),)
    with ThreadPoolExecutor(max_workers=2) as pool:
        _deliver(bus, spec.job_dir, random.Random(3), drop=0.0, pool=pool)
    assert sorted((tmp_path / "out" / "part-00000").read_text().splitlines()) == ["x,2", "y,1"]


def test_launch_markers_make_concurrent_launches_of_one_attempt_invoke_it_once(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("x\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   runtime="service", coordinator=True)
    bus = Bus()
    drv = Driver(spec, bus)
    drv.prepare()
    task = drv.tasks.map_task(0, 1, drv.manifest["tasks"][0])
    launchers = [coordinator.LaunchOnce(bus, spec.job_dir) for _ in range(16)]
    barrier = threading.Barrier(16)

    def launch(launcher: coordinator.LaunchOnce) -> str:
        barrier.wait()
        return launcher.invoke(task.spec.with_attempt(1))

    with ThreadPoolExecutor(max_workers=16) as pool:
        request_ids = set(pool.map(launch, launchers))
    assert len(request_ids) == 1  # all name the one launched attempt
    assert bus.launches == {("map/00000", 1): 1}
    assert sum(len(x.launched) for x in launchers) == 1


def test_launching_a_failed_job_again_gives_every_task_a_fresh_budget(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("a b a\n")
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in.txt")]},
                   output=str(tmp_path / "out"), runtime="service", coordinator=True, max_attempts=1,
                   params={"fail_once": str(tmp_path / "marker")})
    bus = Bus()
    Driver(spec, bus).launch()
    with ThreadPoolExecutor(max_workers=2) as pool, pytest.raises(AssertionError, match="the job failed"):
        _deliver(bus, spec.job_dir, random.Random(1), drop=0.0, pool=pool)
    again = Driver(spec, bus).launch()  # the same job id: a new run of it
    assert again.state == "running" and again.launched == (("map/00000", 2),)
    assert jobstate.read_failure(spec.job_dir) is None
    with ThreadPoolExecutor(max_workers=2) as pool:
        _deliver(bus, spec.job_dir, random.Random(2), drop=0.0, pool=pool)
    assert (tmp_path / "out" / "part-00000").read_text().splitlines() == ["a,2", "b,1"]
    assert coordinator.budget_base(spec.job_dir) == {"map/00000": 1}  # what the new run does not count


def test_a_failure_event_with_no_record_retries_the_attempt_at_once_and_a_late_copy_of_it_does_nothing(
    tmp_path, fixture_jobs_path
):
    """A timeout or an out-of-memory end leaves no status record: the failure event says so."""
    (tmp_path / "in.txt").write_text("x y\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   runtime="service", coordinator=True, partitions=1)
    bus = Bus()
    Driver(spec, bus).launch()
    rid, task = bus.take()  # the invocation dies: the handler never writes anything
    killed = coordinator.parse_event(coordinator.destination_record(
        rid, "arn:bus:mapper", task.to_event(), False,
        {"errorType": "Runtime.OutOfMemory", "errorMessage": "Runtime exited with error: signal: killed"}))
    assert coordinator.step(spec.job_dir, bus, killed).launched == (("map/00000", 2),)
    assert coordinator.step(spec.job_dir, bus, killed).launched == ()  # the same event again: attempt 1 is old
    with ThreadPoolExecutor(max_workers=2) as pool:
        _deliver(bus, spec.job_dir, random.Random(6), drop=0.0, pool=pool)
    assert sorted((tmp_path / "out" / "part-00000").read_text().splitlines()) == ["x,1", "y,1"]
