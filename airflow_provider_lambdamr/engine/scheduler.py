"""Attempts, retries, speculation and the deadline of a phase's tasks, against a Runtime.

``Scheduler.advance(results)`` takes the invocation results that arrived, then moves the
phase as far as it can without blocking: it fills the concurrency window with queued tasks
(new ones, retries of failed or lost attempts, the tasks a commit made runnable, such as
the next reduce round) and starts speculative twins of stragglers. It returns ``Waiting``:
the invocations in flight (request ids, status keys) and the moment something happens
without a result (a straggler's twin is due, or the deadline). ``run()`` is a loop of
``advance`` and ``runtime.poll``.

Attempt numbers survive processes: a scheduler starts each task's numbering after the
highest attempt that left a failed-attempt record in storage (``jobstate.attempts_used``),
so a scheduler rebuilt in another process knows a task already failed twice. Whether those
earlier attempts count against this scheduler's ``max_attempts`` is the caller's choice
(``fresh_budget``): a resumed phase counts them; a new run of a failed job starts afresh.
"""

from __future__ import annotations

import collections
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult, Runtime
from lambda_src.contract import TaskSpec

log = logging.getLogger(__name__)

POLL_S = 0.5


@dataclass
class Task:
    key: str
    spec: TaskSpec
    describe: str
    input_desc: str
    bytes: int = 0
    #: The highest attempt number launched (here, or in storage's failed-attempt records).
    attempts: int = 0
    #: Attempts not counted against this scheduler's budget (an earlier run's).
    base: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False
    speculated: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def spent(self) -> int:
        """Attempts counted against ``max_attempts``."""
        return self.attempts - self.base


@dataclass
class InvocationStats:
    durations_ms: list[float] = field(default_factory=list)
    billed_ms: int = 0
    peak_memory_mb: float = 0.0
    invocations: int = 0
    failures: int = 0
    cold_starts: int = 0

    def add(self, res: InvocationResult) -> None:
        self.invocations += 1
        self.billed_ms += res.billed_ms
        self.peak_memory_mb = max(self.peak_memory_mb, res.max_memory_mb)
        self.cold_starts += int(res.cold_start)
        if res.ok:
            self.durations_ms.append(res.duration_ms)
        else:
            self.failures += 1

    def __add__(self, other: InvocationStats) -> InvocationStats:
        return InvocationStats(self.durations_ms + other.durations_ms, self.billed_ms + other.billed_ms,
                               max(self.peak_memory_mb, other.peak_memory_mb), self.invocations + other.invocations,
                               self.failures + other.failures, self.cold_starts + other.cold_starts)

    def summary(self) -> dict:
        d = sorted(self.durations_ms)
        return {
            "invocations": self.invocations,
            "failed_invocations": self.failures,
            "cold_starts": self.cold_starts,
            "billed_ms": self.billed_ms,
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "task_ms": {
                "min": round(d[0], 1) if d else 0,
                "median": round(statistics.median(d), 1) if d else 0,
                "max": round(d[-1], 1) if d else 0,
            },
        }


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 3
    #: A task still running after ``speculation_factor`` times the median duration of the
    #: finished tasks (and at least ``speculation_min_s``) gets a second attempt.
    speculation: bool = True
    speculation_factor: float = 3.0
    speculation_min_s: float = 10.0
    #: Epoch seconds after which the phase stops (``DeadlinePassed``).
    deadline: float | None = None


@dataclass(frozen=True)
class InFlight:
    """One invocation in flight: what a scheduler in another process needs to wait for it."""

    request_id: str
    key: str
    attempt: int
    started_at: float


@dataclass(frozen=True)
class Waiting:
    """What a phase waits for after ``advance``."""

    in_flight: tuple[InFlight, ...]
    #: Tasks waiting for a slot.
    queued: int
    #: When ``advance`` has something to do even if no result arrives (a straggler's twin,
    #: the deadline); None when only results can move the phase.
    wake_at: float | None

    @property
    def finished(self) -> bool:
        return not self.in_flight and not self.queued

    @property
    def request_ids(self) -> list[str]:
        return [f.request_id for f in self.in_flight]

    @property
    def status_keys(self) -> list[str]:
        return sorted({f.key for f in self.in_flight})


class TaskFailed(Exception):
    """A task failed for good: out of attempts, or a failure a retry cannot help."""

    def __init__(self, task: Task, error: str, retryable: bool, result: InvocationResult) -> None:
        super().__init__(f"{task.describe} failed: {error}")
        self.task = task
        self.error = error
        self.retryable = retryable
        self.result = result


class DeadlinePassed(Exception):
    """The deadline passed with tasks unfinished (those in flight were cancelled)."""

    def __init__(self, done: int, total: int, running: int, waiting: int) -> None:
        super().__init__(f"deadline passed: {done} of {total} tasks done, {running} running, {waiting} waiting")
        self.done = done
        self.total = total
        self.running = running
        self.waiting = waiting


class Scheduler:
    """The tasks of one phase: a sliding window of at most ``runtime.capacity`` invocations."""

    def __init__(
        self,
        runtime: Runtime,
        tasks: Iterable[Task],
        on_done: Callable[[Task, dict], list[Task]],
        policy: Policy,
        *,
        attempts: Mapping[str, int] | None = None,
        fresh_budget: bool = False,
        budget_base: Mapping[str, int] | None = None,
        in_flight: Iterable[InFlight] = (),
        stats: InvocationStats | None = None,
        trace_header: str | None = None,
        total: int | None = None,
        already: int = 0,
        bytes_already: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``attempts``: per status key, the attempts storage records (``jobstate.attempts_used``);
        ``in_flight``: invocations another scheduler started (its ``Waiting.in_flight``), whose
        tasks are among ``tasks``; ``fresh_budget``: earlier attempts do not count against
        ``max_attempts``; ``budget_base``: per status key, the attempts that do not count
        (those made before the job last failed, when a new run of it started)."""
        self.runtime = runtime
        self.on_done = on_done
        self.policy = policy
        self.stats = stats if stats is not None else InvocationStats()
        self.trace_header = trace_header
        self.clock = clock
        self._attempts = dict(attempts or {})
        self._fresh_budget = fresh_budget
        self._budget_base = dict(budget_base or {})
        self.queue: collections.deque[Task] = collections.deque()
        self.running: dict[str, Task] = {}
        self.started_at: dict[str, float] = {}
        self.finished_s: list[float] = []
        self.done = already
        self.bytes_done = bytes_already
        self.retries = 0
        self.speculative_attempts = 0
        by_key = {}
        for task in tasks:
            self._adopt(task)
            by_key[task.key] = task
        for f in in_flight:
            task = by_key.get(f.key)
            if task is None:
                continue  # it committed since (or belongs to a phase that finished): not waited for
            task.attempts = max(task.attempts, f.attempt)
            self.running[f.request_id] = task
            self.started_at[f.request_id] = f.started_at
        busy = set(map(id, self.running.values()))
        self.queue.extend(t for t in by_key.values() if id(t) not in busy)
        self.total = total if total is not None else already + len(by_key)

    def _adopt(self, task: Task) -> None:
        """Continue a task's attempt numbering after what storage records."""
        recorded = self._attempts.get(task.key, 0)
        task.attempts = max(task.attempts, recorded)
        if self._fresh_budget:
            task.base = task.attempts
        else:
            task.base = min(task.attempts, self._budget_base.get(task.key, 0))

    # -- the step ------------------------------------------------------------------------
    def advance(self, results: Iterable[InvocationResult] = ()) -> Waiting:
        """Take ``results`` in, launch what can be launched; say what the phase now waits for.

        Raises ``TaskFailed`` when a task is out of attempts (or cannot be retried), and
        ``DeadlinePassed`` (cancelling what is in flight) when the deadline passed.
        """
        for res in results:
            self._receive(res)
        capacity = self.runtime.capacity
        while self.queue and len(self.running) < capacity:
            self._launch(self.queue.popleft())
        self._speculate(capacity)
        now = self.clock()
        deadline = self.policy.deadline
        if deadline is not None and now > deadline and (self.queue or self.running):
            running, waiting = len(self.running), len(self.queue)
            for request_id in self.running:
                self.runtime.cancel(request_id)
            raise DeadlinePassed(self.done, self.total, running, waiting)
        return self.waiting()

    def run(self, report: Callable[[bool], None] | None = None, poll_s: float = POLL_S) -> None:
        """Advance until every task committed; ``report(force)`` about every 2 s."""
        if report:
            report(True)
        last_report = 0.0
        waiting = self.advance()
        while not waiting.finished:
            waiting = self.advance(self.runtime.poll(poll_s))
            now = self.clock()
            if report and now - last_report >= 2.0:
                last_report = now
                report(False)
        if report:
            report(True)

    def waiting(self) -> Waiting:
        in_flight = tuple(
            InFlight(rid, t.key, t.attempts, self.started_at[rid]) for rid, t in self.running.items()
        )
        moments = [m for m in (self._next_straggler(), self.policy.deadline) if m is not None]
        return Waiting(in_flight, len(self.queue), min(moments) if moments else None)

    # -- inside --------------------------------------------------------------------------
    def _launch(self, task: Task) -> None:
        task.attempts += 1
        request_id = self.runtime.invoke(task.spec.with_attempt(task.attempts), self.trace_header)
        self.running[request_id] = task
        self.started_at[request_id] = self.clock()

    def _receive(self, res: InvocationResult) -> None:
        task = self.running.pop(res.request_id, None)
        began = self.started_at.pop(res.request_id, None)
        if task is None or task.done:
            return  # a cancelled twin's, or another phase's
        self.stats.add(res)
        twins = [rid for rid, t in self.running.items() if t is task]
        if res.ok and isinstance(res.payload, dict) and res.payload.get("state") == "succeeded":
            task.done = True
            for rid in twins:  # the first attempt to commit wins
                self.runtime.cancel(rid)
                self.running.pop(rid, None)
                self.started_at.pop(rid, None)
            if began is not None:
                self.finished_s.append(self.clock() - began)
            self.done += 1
            self.bytes_done += task.bytes
            for new in self.on_done(task, res.payload):
                self._adopt(new)
                self.queue.append(new)
            self.total = max(self.total, self.done + len(self.queue) + len(self.running))
            return
        # How it failed comes from the failed attempt's record or the runtime, as data.
        failure = None if res.ok else res.failure_report()
        error = failure.text if failure is not None else "the handler returned no status record"
        task.errors.append(error)
        if twins:
            return  # another attempt is still running; let it finish
        retryable = failure is None or failure.retryable
        if task.spent >= self.policy.max_attempts or not retryable:
            raise TaskFailed(task, error, retryable, res)
        self.retries += 1
        log.warning("%s attempt %d failed (%s); retrying", task.describe, task.attempts, error)
        self.queue.append(task)

    def _threshold(self) -> float | None:
        """How long a task may run before it is a straggler; None while speculation is off."""
        if not self.policy.speculation or self.queue or len(self.finished_s) < 3:
            return None
        return max(self.policy.speculation_factor * statistics.median(self.finished_s),
                   self.policy.speculation_min_s)

    def _speculatable(self, task: Task) -> bool:
        return not task.speculated and task.spent < self.policy.max_attempts

    def _speculate(self, capacity: int) -> None:
        threshold = self._threshold()
        if threshold is None:
            return
        now = self.clock()
        for rid, task in list(self.running.items()):
            if len(self.running) >= capacity:
                break
            if now - self.started_at.get(rid, now) > threshold and self._speculatable(task):
                task.speculated = True
                self.speculative_attempts += 1
                log.warning("%s is a straggler (%.1fs, median %.1fs): starting a second attempt",
                            task.describe, now - self.started_at[rid], statistics.median(self.finished_s))
                self._launch(task)

    def _next_straggler(self) -> float | None:
        """When the next running task becomes a straggler that may get a twin."""
        threshold = self._threshold()
        if threshold is None:
            return None
        due = [self.started_at[rid] + threshold for rid, t in self.running.items() if self._speculatable(t)]
        return min(due) if due else None
