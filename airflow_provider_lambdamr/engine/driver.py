"""The driver: plan, map phase, reduce rounds, commit. Its state lives in storage.

Every phase reads back what is already done from the status records under the job
directory, so a driver (or an Airflow task) that is killed and started again with the same
job id resumes where it stopped: completed tasks are not re-run. The manifest
(``jobdata.json``) pins the plan, so a rerun works on exactly the same splits even if new
objects appeared under an input prefix.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from airflow_provider_lambdamr.engine import commit as commit_mod
from airflow_provider_lambdamr.engine import (
    coordinator,
    failures,
    jobdir,
    jobstate,
    packaging,
    planner,
    preflight,
)
from airflow_provider_lambdamr.engine import cost as cost_model
from airflow_provider_lambdamr.engine import rounds as rounds_mod
from airflow_provider_lambdamr.engine.failures import JobFailed
from airflow_provider_lambdamr.engine.jobcode import describe as describe_job
from airflow_provider_lambdamr.engine.jobstate import PhaseState, phase_state  # noqa: F401 - re-exported
from airflow_provider_lambdamr.engine.runtimes.base import (
    InvocationResult,
    Runtime,
    committed_result,
    list_status_dirs,
    outcome_from_records,
)
from airflow_provider_lambdamr.engine.scheduler import (
    DeadlinePassed,
    InFlight,
    InvocationStats,
    Policy,
    Scheduler,
    Task,
    TaskFailed,
    Waiting,
)
from airflow_provider_lambdamr.engine.spec import JobSpec
from airflow_provider_lambdamr.engine.tasks import TaskFactory
from airflow_provider_lambdamr.engine.tracing import JobTracer
from lambda_src import contract, formats, rowformats
from lambda_src import storage as st
from lambda_src.contract import MAP, REDUCE, SUCCESS
from lambda_src.job import Join, MapReduceJob
from lambda_src.reader import InputError
from lambda_src.task import load_job_class

log = logging.getLogger(__name__)

#: How long after its function's timeout an invocation another process launched, with no
#: status record, counts as lost (async delivery and the record's write can lag).
LOST_GRACE_S = 60.0


@dataclass
class Progress:
    phase: str
    done: int
    total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float
    running: int = 0
    retries: int = 0


ProgressFn = Callable[[Progress], None]


@dataclass
class _Phase:
    """One phase of one step, rebuilt from storage: its tasks' scheduler and its commit."""

    name: str
    scheduler: Scheduler
    #: Called when every task committed: checks and records the phase; its records.
    finish: Callable[[], list[dict]]
    bytes_total: int


@dataclass(frozen=True)
class Share:
    """Some tasks of one phase, run by one Airflow task instance (``engine/slices.py``)."""

    phase: str
    #: The status-key prefix of the phase (where the tasks' records are).
    prefix: str
    #: The share's tasks that have not committed.
    tasks: list[Task]


@dataclass(frozen=True)
class JobWaiting:
    """What a job waits for after ``Driver.advance``: a phase's invocations, or nothing."""

    #: The phase in flight; None when the job committed.
    phase: str | None
    waiting: Waiting | None
    #: The ``_SUCCESS`` summary, once the job committed.
    summary: dict | None
    #: When an invocation in flight, if it left no status record by then, counts as lost.
    lost_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def stopped(self) -> bool:
        """Nothing in flight or queued: the job committed, or ``advance`` stopped where asked."""
        return self.waiting is None

    @property
    def in_flight(self) -> tuple[InFlight, ...]:
        return self.waiting.in_flight if self.waiting else ()

    @property
    def wake_at(self) -> float | None:
        """When ``advance`` has something to do without a result: a straggler's twin, the
        deadline, or an invocation that may be lost."""
        moments = [m for m in (self.waiting.wake_at if self.waiting else None, self.lost_at) if m is not None]
        return min(moments) if moments else None


class Driver:
    """Runs one job on one runtime. ``run()`` does every phase; phases can run apart."""

    def __init__(
        self,
        spec: JobSpec,
        runtime: Runtime,
        progress: ProgressFn | None = None,
        prices: cost_model.PriceTable | None = None,
    ) -> None:
        self.spec = spec
        self.prices = prices
        self.runtime = runtime
        self.progress = progress
        self.job_dir = spec.job_dir
        self.store = st.for_uri(self.job_dir)
        self.out_store = st.for_uri(spec.output)
        self.manifest: dict | None = None
        self.package: packaging.CodePackage | None = None
        self.stats = {"map": InvocationStats(), "reduce": InvocationStats()}
        self.timings: dict[str, float] = {}
        self._deployed = False
        self._last_report: tuple | None = None
        self.tracer = JobTracer(spec.tracing, spec.job_id)
        self._deadline = time.time() + spec.job_timeout_s if spec.job_timeout_s else None
        self.speculative_attempts = 0
        #: True when ``run()`` returned a result this job id had already committed.
        self.reused = False
        self._trace_header: str | None = None
        #: The phase ``advance`` is moving (rebuilt from storage in a fresh driver).
        self._current: _Phase | None = None
        #: Whether this driver's invocations are in the job's ledger (``record_invocations``).
        self._recorded = False
        shape = describe_job(spec.job_ref, spec.params)
        if shape.input_names is not None and set(spec.inputs) != set(shape.input_names):
            got = ", ".join(repr(n) if n else "one unnamed input" for n in spec.inputs) or "none"
            raise JobFailed(
                f"job {spec.job_ref} reads the named inputs {', '.join(shape.input_names)} "
                f"(got {got}): pass "
                + " ".join(f"--input {n}=URI" for n in shape.input_names),
                phase="prepare",
            )
        #: Partitions of each step (a step may override the job's --partitions).
        self.step_partitions = [s.partitions or spec.partitions for s in shape.steps]
        self.map_only = shape.map_only
        # A Python job's code is imported here; a JavaScript job's only described (by Node.js)
        job = None
        if packaging.language_of(spec.job_ref) == packaging.PYTHON:
            job = load_job_class(spec.job_ref)(spec.params)
        elif spec.input_format:
            raise JobFailed(f"job {spec.job_ref} is a JavaScript job, which reads text input only: "
                            f"drop --input-format", phase="prepare", resumable=False)
        steps = job.checked_steps(spec.vectorized) if job is not None else []
        #: The format each input is read in, where the spec or the job names one (by input name).
        self.input_formats = self._input_formats(job) if job is not None else {}
        #: A job whose first step is a Join has the planner choose the join's strategy.
        self.has_join = bool(steps) and isinstance(steps[0], Join)
        self.vectorized = spec.vectorized and job is not None and type(job).has_table_mapper()
        self.tasks = TaskFactory(spec, map_only=self.map_only, step_count=self.step_count)

    @classmethod
    def attached(cls, spec: JobSpec, runtime: Runtime, manifest: dict) -> Driver:
        """A driver of a job planned and deployed by another process (the coordinator's):
        it builds no code package and deploys nothing (``runtime`` is attached to the
        deployment), and its job timeout counts from when the job was planned."""
        driver = cls(spec, runtime)
        code = manifest["code"]
        driver.manifest = manifest
        driver.package = packaging.CodePackage("", code["sha256"], int(code["size"]), ())
        driver._deployed = True
        if spec.job_timeout_s:
            driver._deadline = float(manifest.get("created_epoch", time.time())) + spec.job_timeout_s
        return driver

    def _input_formats(self, job: MapReduceJob) -> dict[str, str]:
        """``--input-format`` for an input, else for every input, else what the job declares."""
        named = self.spec.input_format
        chosen = {name: named.get(name) or named.get("") or job.declared_input_format(name) for name in self.spec.inputs}
        try:
            rowformats.check_declaration(type(job))
            for fmt in chosen.values():
                if fmt:
                    formats.get(fmt)
        except (TypeError, ValueError) as err:
            raise JobFailed(f"job {self.spec.job_ref}: {err}", phase="prepare", resumable=False) from None
        return {name: fmt for name, fmt in chosen.items() if fmt}

    @property
    def step_count(self) -> int:
        return len(self.step_partitions)

    # -- public phases -----------------------------------------------------------------
    def run(self) -> dict:
        """Run the whole job (or finish it, if a previous run stopped part way).

        A job that already committed is not run again: its ``_SUCCESS`` summary is returned,
        unless the spec asks to ``recompute`` it.
        """
        done = self.completed_summary()
        if done is not None and not self.spec.recompute:
            log.info("job %s already committed at %s; not recomputed; output %s",
                     self.spec.job_id, done.get("finished_at"), self.spec.output)
            self.reused = True
            return done
        with self.tracer:
            try:
                self.prepare()
                map_records = self.run_map()
                if not self.map_only:
                    self.run_reduce(map_records)
                    self.run_later_steps()
                return self.commit(map_records)
            except BaseException:
                self.close()
                raise

    def launch(self) -> coordinator.Outcome | dict:
        """Coordinator mode: plan and deploy the job, deploy its coordinator, launch the map
        fan-out and return; the job advances and commits without this process (follow it with
        ``lambdamr status JOB_DIR --wait``). The ``_SUCCESS`` summary when this job id already
        committed (see ``run``)."""
        done = self.completed_summary()
        if done is not None and not self.spec.recompute:
            self.reused = True
            return done
        self.prepare()
        package = packaging.build(self.spec.job_ref, tracing=self.spec.tracing, include=coordinator.ENGINE)
        deployed = self.runtime.deploy_coordinator(package, coordinator.watchdog_event(self.job_dir),
                                                   coordinator.WATCHDOG_INTERVAL_S)
        # A new run of a job that failed: every task gets a fresh budget, recorded before the
        # failure is cleared (a coordinator of the earlier run must not fail the job again);
        # a resumed run keeps the budget its run had.
        failed = jobstate.read_failure(self.job_dir) is not None
        base = coordinator.attempts_made(self.job_dir) if failed else coordinator.budget_base(self.job_dir)
        coordinator.write_config(self.job_dir, self.runtime, deployed, base)
        if failed:
            self._clear_failure()
        return coordinator.step(self.job_dir, self.runtime)

    def completed_summary(self) -> dict | None:
        """The ``_SUCCESS`` summary when this job id already committed this output.

        A job id names one job: when the committed job differs from this spec (inputs, job,
        code, parameters, layout) the earlier result is never returned as this one's; that
        is refused, naming what differs, unless the spec asks to ``recompute``.
        """
        success = jobdir.read_success(self.spec.output)
        if success.summary is None or success.summary["job_id"] != self.spec.job_id:
            return None
        differs = preflight.identity_diff(success.summary.get("identity") or {}, self.identity())
        if not differs and not self.spec.recompute:
            manifest = jobdir.read_manifest(self.job_dir)
            if manifest is not None:
                preflight.check_inputs_unchanged(self.spec, manifest, committed=True)
        if differs and not self.spec.recompute:
            raise JobFailed(
                f"job id {self.spec.job_id!r} already committed a result in {self.spec.output} for "
                f"another job: {differs}. Use another job id, or --recompute (recompute=True) to replace "
                f"that result",
                phase="prepare", resumable=False,
            )
        return success.summary

    def identity(self) -> dict:
        """What a job id pins: the spec's identity and the code version."""
        return {**self.spec.identity(), "code": self._package().version}

    def reset(self) -> None:
        """Delete this job's own state and committed result, to run it again from scratch."""
        success = jobdir.read_success(self.spec.output)
        if success.summary is not None and success.summary["job_id"] == self.spec.job_id:
            files = jobdir.result_files(self.spec.output, success.summary)
            log.warning("recompute: deleting job %s's result (%d files and %s) and its state in %s",
                        self.spec.job_id, len(files), SUCCESS, self.job_dir)
            self.out_store.delete([success.uri])  # first: the output stops claiming to be whole
            self.out_store.delete(files)
        if jobdir.read_manifest(self.job_dir) is not None:
            jobdir.cleanup(self.job_dir, delete_job_dir=True)
        self.manifest = None

    def prepare(self) -> dict:
        """Check the output, write or verify the manifest, build and deploy the code.

        With ``recompute``, a job id that already committed starts again from scratch.
        """
        t0 = time.time()
        if self.spec.recompute and self.completed_summary() is not None:
            self.reset()
        if not self.spec.coordinator:
            self._refuse_a_live_coordinator()
        preflight.check_output(self.spec)
        self._deploy()  # workers start (cold) while the inputs are listed
        self.manifest = self.tasks.use_plan(self._load_or_plan())
        self.timings["plan"] = round(time.time() - t0, 3)
        return self.manifest

    def _refuse_a_live_coordinator(self) -> None:
        """A job launched in coordinator mode that has not failed is its coordinator's to
        advance: a driver without coordinator mode takes no launch markers, so it would invoke
        the attempts the coordinator launched a second time (and count only its own)."""
        uri = contract.coordinator_uri(self.job_dir)
        if self.store.exists(uri) and jobstate.read_failure(self.job_dir) is None:
            raise JobFailed(
                f"job {self.spec.job_id} was launched in coordinator mode ({uri}) and its coordinator "
                f"advances it: follow it with `lambdamr status {self.job_dir} --wait`, or launch it "
                f"again with --coordinator (coordinator=True)",
                phase="prepare", resumable=False,
            )

    def run_map(self, step: int = 0) -> list[dict]:
        """Run every map task of a step not yet done; return its status records, in task order.

        Step 1 maps the planned input splits; a later step maps the runs that the previous
        step's final reducers wrote.
        """
        self._require_manifest()
        self._deploy()
        t0 = time.time()
        self._clear_failure()
        records = self._run_phase(self._map_phase(step, fresh_budget=True))
        self._add_timing("map", time.time() - t0)
        return records

    def run_reduce(self, map_records: list[dict] | None = None, step: int = 0) -> list[dict]:
        """Run a step's reduce rounds until one output per partition remains."""
        self._require_manifest()
        self._deploy()
        t0 = time.time()
        self._clear_failure()
        if map_records is None:
            map_records = self._load_map_commit(step)
        finals = self._run_phase(self._reduce_phase(step, map_records, fresh_budget=True))
        self._add_timing("reduce", time.time() - t0)
        return finals

    def run_later_steps(self) -> None:
        """Map and reduce every step after the first (after ``run_reduce`` of step 1)."""
        for step in range(1, self.step_count):
            self.run_reduce(self.run_map(step), step)

    def advance(self, results: Iterable[InvocationResult] = (), in_flight: Iterable[InFlight] = (), *,
                budget_base: dict[str, int] | None = None, stop_after_map: bool = False) -> JobWaiting:
        """Move a planned job as far as it can go without blocking; say what it now waits for.

        Takes the invocation ``results`` that arrived, launches what can be launched (tasks
        up to the window, retries, speculative twins, the next reduce round, the next phase
        or step) and commits the job when everything is done. A driver in a fresh process
        rebuilds the phase from storage (status records, the manifest, the pinned plans),
        given ``in_flight``, what an earlier driver's ``JobWaiting`` said was in flight: the
        status records say how those ended (one without a record ``LOST_GRACE_S`` past its
        function's timeout is lost). Attempts that failed in earlier processes count against
        ``max_attempts``, except those ``budget_base`` names (``restart_after_failure``).
        With ``stop_after_map`` it stops once step 1's map phase committed, launching no reduce.
        """
        self._require_manifest()
        self._deploy()
        results = list(results)
        in_flight = list(in_flight)
        while True:
            if self._current is None:
                if stop_after_map and jobstate.read_map_commit(self.job_dir, 0) is not None:
                    self._count_committed_in_flight(in_flight)
                    return JobWaiting(MAP, None, None)
                self._current = self._next_phase(in_flight, budget_base)
                if self._current is None:  # what was in flight committed the last tasks
                    self._count_committed_in_flight(in_flight)
                    return JobWaiting(None, None, self.completed_summary() or self.commit())
                results += self._adopted_outcomes(self._current.scheduler, in_flight)
                in_flight = []
            try:
                waiting = self._current.scheduler.advance(results)
            except (TaskFailed, DeadlinePassed) as err:
                raise self._job_failed(self._current, err) from None
            results = []
            if not waiting.finished:
                return JobWaiting(self._current.name, waiting, None, self._lost_at(waiting.in_flight))
            self.speculative_attempts += self._current.scheduler.speculative_attempts
            self._current.finish()
            self._current = None

    def restart_after_failure(self) -> dict[str, int]:
        """Start a new run of a job that failed: per status key, the attempts made before it
        failed, which ``advance(budget_base=...)`` then does not count against ``max_attempts``
        (every task gets a fresh budget). Clears ``failed.json``. Empty when the job has not
        failed: a resumed run counts every earlier attempt."""
        if jobstate.read_failure(self.job_dir) is None:
            return {}
        used = jobstate.attempts_used(self.job_dir, "")
        self._clear_failure()
        return used

    def _lost_at(self, in_flight: Iterable[InFlight]) -> float | None:
        started = [f.started_at for f in in_flight]
        return min(started) + self.spec.timeout_s + LOST_GRACE_S if started else None

    def _adopted_outcomes(self, sched: Scheduler, in_flight: list[InFlight]) -> list[InvocationResult]:
        """How the invocations an earlier driver launched (``in_flight``) ended, by the status
        records; an invocation with no record ``LOST_GRACE_S`` after its function's timeout
        is lost. Those still running have no outcome yet."""
        self._count_committed_in_flight([f for f in in_flight if f.request_id not in sched.running])
        adopted = {f.request_id: (f, sched.running[f.request_id].spec.with_attempt(f.attempt))
                   for f in in_flight if f.request_id in sched.running}
        if not adopted:
            return []
        listing = list_status_dirs(spec for _, spec in adopted.values())
        now = time.time()
        outcomes = []
        for rid, (f, spec) in adopted.items():
            outcome = outcome_from_records(rid, spec, listing)
            if outcome is None and now > f.started_at + self.spec.timeout_s + LOST_GRACE_S:
                outcome = InvocationResult(rid, False, error={
                    "errorType": "Runtime.Lost",
                    "errorMessage": f"RequestId: {rid} left no status record within "
                                    f"{self.spec.timeout_s + LOST_GRACE_S:.0f} seconds: it timed out, ran "
                                    f"out of memory, or was lost"})
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _count_committed_in_flight(self, in_flight: list[InFlight]) -> None:
        """Count the invocations an earlier driver launched whose tasks committed since (no
        scheduler waits for them): each one whose attempt wrote its task's commit record.
        (One that lost to a twin left no record of its own, and is not counted.)"""
        keys = sorted({f.key for f in in_flight})
        if not keys:
            return
        # one listing per status directory they live in (not the whole job's records)
        listing = {key for where in {k.rsplit("/", 1)[0] for k in keys}
                   for key in jobstate.committed(self.job_dir, where)}
        records = jobstate.read_records(self.job_dir, [k for k in keys if k in listing])
        for f in in_flight:
            record = records.get(f.key)
            if record is not None and record.get("attempt") == f.attempt:
                self.stats[contract.phase_of_status_key(f.key)].add(committed_result(f.request_id, record))

    def _next_phase(self, in_flight: Iterable[InFlight], budget_base: dict[str, int] | None) -> _Phase | None:
        """The first phase whose commit storage lacks (None: all done), rebuilt from storage."""
        for step in range(self.step_count):
            map_records = jobstate.read_map_commit(self.job_dir, step)
            if map_records is None:
                return self._map_phase(step, fresh_budget=False, in_flight=in_flight, budget_base=budget_base)
            if not self.map_only and len(jobstate.final_records(self.job_dir, step)) < self.step_partitions[step]:
                return self._reduce_phase(step, map_records, fresh_budget=False, in_flight=in_flight,
                                          budget_base=budget_base)
        return None

    # -- phases, rebuilt from storage -----------------------------------------------------
    def _map_phase(self, step: int, *, fresh_budget: bool, in_flight: Iterable[InFlight] = (),
                   budget_base: dict[str, int] | None = None) -> _Phase:
        manifest = self._require_manifest()
        phase = self._phase_name("map", step)
        if step == 0:
            tasks_spec = manifest["tasks"]
            bytes_total = manifest["plan"]["bytes"]
        else:
            tasks_spec = self._later_step_inputs(step)
            bytes_total = sum(b for _, b in tasks_spec)
        listing = jobstate.list_statuses(self.job_dir, contract.status_prefix(step, MAP))
        committed = set(listing.committed)
        #: The records of the tasks this process saw commit; the others are read at the commit
        #: only (a phase rebuilt on every resume of a deferred task must not read them all).
        records: dict[int, dict] = {}
        todo: list[Task] = []
        count = len(tasks_spec)
        already = bytes_already = 0
        for index, item in enumerate(tasks_spec):
            if contract.map_status_key(step, index) in committed:
                already += 1
                bytes_already += sum(s["end"] - s["start"] for s in item) if step == 0 else item[1]
            elif step == 0:
                todo.append(self.tasks.map_task(index, count, item))
            else:
                todo.append(self.tasks.later_map_task(step, index, count, *item))
        if already:
            log.info("%s: %d of %d tasks already done; running %d", phase, already, count, len(todo))

        def finished(task: Task, record: dict) -> list[Task]:
            records[task.meta["index"]] = record
            return []

        def finish() -> list[dict]:
            earlier = [i for i in range(count) if i not in records]
            read = jobstate.read_records(self.job_dir, [contract.map_status_key(step, i) for i in earlier])
            records.update((i, read[contract.map_status_key(step, i)]) for i in earlier)
            ordered = [records[i] for i in range(count)]
            if step == 0:
                self._check_bad_record_budget(ordered)
            jobstate.write_map_commit(self.job_dir, self.spec.job_id, step, ordered)
            return ordered

        sched = self._scheduler(phase, todo, finished, listing.failed_attempts, fresh_budget, in_flight,
                                total=count, already=already, bytes_already=bytes_already,
                                budget_base=budget_base)
        return _Phase(phase, sched, finish, bytes_total)

    def _reduce_phase(self, step: int, map_records: list[dict], *, fresh_budget: bool,
                      in_flight: Iterable[InFlight] = (), budget_base: dict[str, int] | None = None) -> _Phase:
        manifest = self._require_manifest()
        phase = self._phase_name("reduce", step)
        listing = jobstate.list_statuses(self.job_dir, contract.status_prefix(step, REDUCE))
        done = jobstate.read_records(self.job_dir, listing.committed)
        plan = rounds_mod.ReduceRounds(map_records, self.step_partitions[step], manifest["spec"]["fan_in"],
                                       step, done)

        def tasks(pending: list[rounds_mod.Pending]) -> list[Task]:
            return [self.tasks.reduce_task(step, rounds, group, inputs) for rounds, group, inputs in pending]

        def finished(task: Task, record: dict) -> list[Task]:
            return tasks(plan.complete(task.meta["partition"], task.meta["group"], record))

        def finish() -> list[dict]:
            missing = plan.missing()
            if missing:
                raise JobFailed(f"{phase} finished without a result for partitions {missing}", phase=phase)
            return [plan.finals[p] for p in range(plan.partitions)]

        already = len(done)
        sched = self._scheduler(phase, tasks(plan.start()), finished, listing.failed_attempts, fresh_budget,
                                in_flight, total=max(plan.expected_tasks(), already), already=already,
                                budget_base=budget_base)
        return _Phase(phase, sched, finish, 0)

    def _scheduler(self, phase: str, tasks: list[Task], on_done: Callable[[Task, dict], list[Task]],
                   attempts: dict[str, int], fresh_budget: bool, in_flight: Iterable[InFlight], *,
                   total: int, already: int, bytes_already: int = 0,
                   budget_base: dict[str, int] | None = None) -> Scheduler:
        spec = self.spec
        policy = Policy(max_attempts=spec.max_attempts, speculation=spec.speculation,
                        speculation_factor=spec.speculation_factor, speculation_min_s=spec.speculation_min_s,
                        deadline=self._deadline)
        return Scheduler(self.runtime, tasks, on_done, policy, attempts=attempts, fresh_budget=fresh_budget,
                         budget_base=budget_base, in_flight=in_flight, stats=self.stats["map" if phase.endswith("map") else "reduce"],
                         trace_header=self._trace_header, total=total, already=already,
                         bytes_already=bytes_already)

    def _run_phase(self, phase: _Phase) -> list[dict]:
        """Run a phase to its end (a failed task or the deadline fails the job); finish it."""
        sched = phase.scheduler
        with self.tracer.phase(phase.name) as header:
            self._trace_header = sched.trace_header = header
            started = time.time()

            def report(force: bool) -> None:
                self._report(phase.name, sched.done, sched.total, sched.bytes_done, phase.bytes_total, started,
                             0 if force else len(sched.running), sched.retries, force=force)

            try:
                sched.run(report)
            except (TaskFailed, DeadlinePassed) as err:
                raise self._job_failed(phase, err) from None
            finally:
                self.speculative_attempts += sched.speculative_attempts
        return phase.finish()

    def _job_failed(self, phase: _Phase, err: TaskFailed | DeadlinePassed) -> JobFailed:
        """The job's failure (recorded for sensors) when a task failed for good or time ran out."""
        if isinstance(err, TaskFailed):
            failure = failures.task_failed(self.spec, phase.name, err.task, err.error, err.retryable, err.result)
        else:
            failure = JobFailed(
                f"job {self.spec.job_id} did not finish within {self.spec.job_timeout_s:.0f} s: the "
                f"{phase.name} phase has {err.done} of {err.total} tasks done, {err.running} running and "
                f"{err.waiting} waiting; rerun with the same job id to resume",
                phase=phase.name,
            )
        failures.record(self.spec, failure)
        return failure

    def _check_bad_record_budget(self, records: list[dict]) -> None:
        """``max_bad_records`` bounds the whole job, whatever the split size or retries.

        Each map task skips at most that many bad records (more fail it); here the committed
        tasks' counts are added up, so the job fails exactly when its input holds more.
        """
        total = sum(int(r.get("stats", {}).get("bad_records", 0)) for r in records)
        if total <= self.spec.max_bad_records:
            return
        samples = [b for r in records for b in r.get("stats", {}).get("bad_samples", [])][:3]
        where = "; ".join(f"{b.get('uri')} at byte {b.get('offset')}: {b.get('reason')}" for b in samples)
        failure = JobFailed(
            f"the input holds {total} bad records, more than the {self.spec.max_bad_records} allowed "
            f"by max_bad_records for the whole job (e.g. {where}); raise --max-bad-records and rerun "
            f"with the same job id to resume",
            phase="map", input=samples[0].get("uri") if samples else None,
        )
        failures.record(self.spec, failure)
        raise failure

    def _later_step_inputs(self, step: int) -> list[tuple[list[str], int]]:
        """The map tasks of a later step: the previous step's final runs, packed by bytes.

        Pinned in ``step-NN/plan.json`` the first time, like step 1's plan in the manifest:
        a resumed driver must give each task index the same runs, even if a late duplicate
        attempt has since rewritten a final status record.
        """
        pinned = jobstate.read_step_plan(self.job_dir, step)
        if pinned is not None:
            return pinned
        finals = jobstate.final_records(self.job_dir, step - 1)
        if len(finals) < self.step_partitions[step - 1]:
            raise JobFailed(
                f"step {step} of job {self.spec.job_id} has not finished: {len(finals)} of "
                f"{self.step_partitions[step - 1]} partitions have a final result",
                phase=self._phase_name("reduce", step - 1),
            )
        tasks = rounds_mod.pack_final_runs(finals, self.spec.split_size, self.spec.max_files_per_task)
        if not jobstate.write_step_plan(self.job_dir, self.spec.job_id, step, tasks):
            return self._later_step_inputs(step)  # another process pinned it first: use theirs
        return tasks

    def commit(self, map_records: list[dict] | None = None) -> dict:
        """Write ``_SUCCESS`` (counts, bytes, durations, task statistics); clean up."""
        manifest = self._require_manifest()
        done = commit_mod.Committed(
            maps=map_records if map_records is not None else self._load_map_commit(),
            later_maps=[self._load_map_commit(k) for k in range(1, self.step_count)],
            reduces=[] if self.map_only else [
                jobstate.read_statuses(self.job_dir, contract.status_prefix(k, REDUCE)) for k in range(self.step_count)
            ],
        )
        # every process's invocations: those other processes recorded (a map task, a deferred
        # task's earlier resumes, the shares of an expanded DAG), and this driver's own
        ledger = jobstate.read_invocations(self.job_dir)
        if not self._recorded:
            ledger += self.own_invocations()
        run = commit_mod.Run(self.runtime, ledger.stats, ledger.speculative_attempts, self.timings,
                             self.tracer.trace_id, self.prices)
        summary = commit_mod.summary(self.spec, manifest, self.step_partitions, done, run)
        if not commit_mod.write_success(self.spec, summary):
            raise JobFailed(
                f"job {self.spec.job_id} no longer holds its output {self.spec.output} "
                f"({contract.claim_uri(self.spec.output)} is gone or names another job): not committed",
                phase="commit", resumable=False,
            )
        if not self.spec.keep_intermediates:
            self.clean_intermediates()
        return summary

    def own_invocations(self) -> jobstate.Ledger:
        """What this driver launched: its invocation statistics and speculative attempts."""
        current = self._current.scheduler.speculative_attempts if self._current else 0
        return jobstate.Ledger(dict(self.stats), self.speculative_attempts + current)

    def record_invocations(self) -> None:
        """Add what this driver launched to the job's invocation ledger, once, so that a
        commit in another process counts it (call it when the driver's process is done)."""
        if not self._recorded:
            jobstate.record_invocations(self.job_dir, self.own_invocations())
            self._recorded = True

    def close(self) -> None:
        """This driver's process is done with the job (it committed, failed, deferred or
        stopped): its invocations go into the ledger, for a commit in another process."""
        try:
            self.record_invocations()
        except Exception as err:  # the job's failure is the error to report, not this
            log.warning("job %s: could not record its invocations in the ledger: %s", self.spec.job_id, err)

    def clean_intermediates(self) -> int:
        """Delete map and reduce runs (status records and the manifest stay, for audit)."""
        return sum(self.store.delete_prefix(d) for d in jobdir.intermediate_dirs(self.job_dir, self.step_count))

    # -- planning ----------------------------------------------------------------------
    def _load_or_plan(self) -> dict:
        """The job's manifest: the existing one (checked), or a new plan, created exclusively.

        Two drivers started at once with one job id race to create the manifest; exactly one
        wins, and the other attaches to its plan if the jobs are the same, or fails.
        """
        uri = contract.manifest_uri(self.job_dir)
        try:
            manifest = jobdir.read_manifest(self.job_dir)
        except ValueError as err:
            raise JobFailed(f"cannot resume job {self.spec.job_id}: {err}", phase="prepare",
                            resumable=False) from None
        if manifest is not None:
            return self._resume(manifest)
        try:
            tasks, summary = planner.plan(
                self.spec.inputs, self.spec.split_size, self.spec.max_files_per_task, self.runtime.capacity,
                self.input_formats,
                join_memory_mb=self.spec.memory_mb if self.has_join else None,
            )
        except InputError as err:
            raise JobFailed(str(err), phase="prepare", input=err.uri, resumable=False) from None
        if summary["bytes"] == 0 and not self.spec.allow_empty_input:
            raise JobFailed(
                f"the input is empty ({summary['objects']} objects, 0 bytes): "
                f"{', '.join(u for us in self.spec.inputs.values() for u in us)}; pass "
                f"--allow-empty-input to produce an empty result",
                phase="prepare", resumable=False,
            )
        package = self._package()
        manifest = {
            "version": 1,
            "job_id": self.spec.job_id,
            "identity": self.identity(),
            "spec": self.spec.to_dict(),
            "code": {"sha256": package.sha256, "version": package.version, "size": package.size},
            "plan": summary,
            "steps": self.step_count,
            "final_partitions": self.step_partitions[-1],
            "tasks": [[s.to_dict() for s in t.splits] for t in tasks],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_epoch": time.time(),
        }
        data = json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8")
        if not self.store.write_new(uri, data):
            theirs = jobdir.read_manifest(self.job_dir)
            if theirs is None:
                raise JobFailed(f"another run of job {self.spec.job_id} is creating {uri}; try again",
                                phase="prepare")
            log.info("another run of job %s planned it first; attaching to its plan", self.spec.job_id)
            return self._resume(theirs)
        log.info(
            "planned %d map tasks over %d objects (%d bytes, %d splits)",
            summary["tasks"], summary["objects"], summary["bytes"], summary["splits"],
        )
        return manifest

    def _resume(self, manifest: dict) -> dict:
        """Check that an existing manifest is this very job, on the same data, and use it."""
        differs = preflight.identity_diff(manifest.get("identity") or {}, self.identity())
        if differs:
            raise JobFailed(
                f"job id {self.spec.job_id!r} in {self.job_dir} names another job: {differs}. "
                f"Use another job id",
                phase="prepare", resumable=False,
            )
        preflight.check_inputs_unchanged(self.spec, manifest)
        log.info("resuming job %s from %s", self.spec.job_id, contract.manifest_uri(self.job_dir))
        return manifest

    def _package(self) -> packaging.CodePackage:
        if self.package is None:
            self.package = packaging.build(self.spec.job_ref, tracing=self.spec.tracing)
        return self.package

    def _deploy(self) -> None:
        if not self._deployed:
            self.runtime.set_map_mode(self.vectorized)
            self.deployment = self.runtime.deploy(self._package())
            self._deployed = True
            self._warn_without_pyarrow()

    def _warn_without_pyarrow(self) -> None:
        """Say so, before anything runs, when a vectorized job will run in record mode."""
        fix = self.runtime.missing_pyarrow() if self.vectorized else None
        if fix:
            log.warning(
                "job %s has a vectorized mapper (map_table), but the %s runtime has no pyarrow: its map tasks "
                "will run in record mode, several times slower per core. To run them vectorized, %s",
                self.spec.job_id, self.runtime.name, fix)

    def _require_manifest(self) -> dict:
        if self.manifest is None:
            manifest = jobstate.read_manifest(self.job_dir)
            if manifest is None:
                raise JobFailed(f"job {self.spec.job_id} has no manifest in {self.job_dir}: plan it first",
                                phase="prepare")
            self.manifest = self.tasks.use_plan(manifest)
        return self.manifest

    def _load_map_commit(self, step: int = 0) -> list[dict]:
        records = jobstate.read_map_commit(self.job_dir, step)
        if records is None:
            raise JobFailed(
                f"the {self._phase_name('map', step)} phase of job {self.spec.job_id} has not "
                f"finished ({contract.map_commit_uri(self.job_dir, step)} is missing)",
                phase=self._phase_name("reduce", step),
            )
        return records

    # -- steps -------------------------------------------------------------------------
    def _phase_name(self, phase: str, step: int) -> str:
        """``map``/``reduce`` for a one-step job; ``step 2/3 map`` in a multi-step one."""
        return phase if self.step_count == 1 else f"step {step + 1}/{self.step_count} {phase}"

    def _add_timing(self, phase: str, seconds: float) -> None:
        """Seconds spent in a phase, summed over the steps."""
        self.timings[phase] = round(self.timings.get(phase, 0.0) + seconds, 3)

    def _report(self, phase: str, done: int, total: int, bytes_done: int, bytes_total: int,
                started: float, running: int, retries: int, force: bool = False) -> None:
        if self.progress is None or (self._last_report == (phase, done, total) and not running):
            return
        self._last_report = (phase, done, total)
        self.progress(Progress(phase, done, total, bytes_done, bytes_total,
                               round(time.time() - started, 1), running, retries))

    def _clear_failure(self) -> None:
        self.store.delete([contract.failure_uri(self.job_dir)])

    # -- shares of a phase (engine/slices.py: one Airflow task instance each) ------------
    def map_task_count(self, step: int) -> int:
        """How many map tasks a step has (a later step's are planned and pinned here)."""
        return len(self._map_items(step))

    def _map_items(self, step: int) -> list:
        """A step's map tasks: step 1's splits (the manifest), a later step's runs (pinned)."""
        return self._require_manifest()["tasks"] if step == 0 else self._later_step_inputs(step)

    def map_share(self, step: int, indexes: Iterable[int]) -> Share:
        """A share of a step's map tasks (``indexes``): those that have not committed.

        The rest of the phase and its map commit are left to other shares (``commit_map``).
        """
        items = self._map_items(step)
        phase = self._phase_name("map", step)
        done = set(jobstate.committed(self.job_dir, contract.status_prefix(step, MAP)))
        todo = []
        for index in indexes:
            if not 0 <= index < len(items):
                raise JobFailed(f"{phase} of job {self.spec.job_id} has no task {index} (it has {len(items)})",
                                phase=phase)
            if contract.map_status_key(step, index) in done:
                continue
            if step == 0:
                todo.append(self.tasks.map_task(index, len(items), items[index]))
            else:
                todo.append(self.tasks.later_map_task(step, index, len(items), *items[index]))
        return Share(phase, contract.status_prefix(step, MAP), todo)

    def commit_map(self, step: int) -> list[dict]:
        """Write a step's map commit once every one of its map tasks committed; its records."""
        phase = self._map_phase(step, fresh_budget=False)
        missing = sorted(t.meta["index"] for t in phase.scheduler.queue)
        if missing:
            raise JobFailed(f"{phase.name} of job {self.spec.job_id}: map tasks {missing} have not "
                            f"committed", phase=phase.name)
        return phase.finish()

    def reduce_round_tasks(self, step: int, rnd: int) -> list[Task]:
        """The uncommitted tasks of reduce round ``rnd`` of a step, over every partition.

        Empty when no partition needs that round (or it is done). A partition still short of
        that round (an earlier round's task has not committed) fails: rounds run in order.
        """
        fan_in = self._require_manifest()["spec"]["fan_in"]
        done = jobstate.read_statuses(self.job_dir, contract.status_prefix(step, REDUCE))
        plan = rounds_mod.ReduceRounds(self._load_map_commit(step), self.step_partitions[step], fan_in, step, done)
        pending = plan.start()
        behind = sorted({r.partition for r, _, _ in pending if r.round < rnd})
        if behind:
            raise JobFailed(f"{self._phase_name('reduce', step)} of job {self.spec.job_id}: partitions {behind} "
                            f"have not finished the rounds before round {rnd}",
                            phase=self._phase_name("reduce", step))
        return [self.tasks.reduce_task(step, r, g, inputs) for r, g, inputs in pending if r.round == rnd]

    def reduce_share(self, step: int, rnd: int, keys: Iterable[str]) -> Share:
        """A share of reduce round ``rnd`` of a step: those of its tasks (status keys) that
        have not committed."""
        wanted = set(keys)
        todo = [t for t in self.reduce_round_tasks(step, rnd) if t.key in wanted]
        return Share(self._phase_name("reduce", step), contract.status_prefix(step, REDUCE), todo)

    def run_share(self, share: Share) -> int:
        """Run a share's tasks to their commit (a share starts with a fresh attempt budget);
        how many ran."""
        self._deploy()
        self._clear_failure()
        attempts = jobstate.attempts_used(self.job_dir, share.prefix)
        sched = self._scheduler(share.phase, share.tasks, lambda task, record: [], attempts, True, (),
                                total=len(share.tasks), already=0)
        self._run_phase(_Phase(share.phase, sched, list, 0))
        return len(share.tasks)

    def advance_share(self, share: Share, *, in_flight: Iterable[InFlight] = (),
                      budget_base: dict[str, int] | None = None) -> tuple[JobWaiting, dict[str, int]]:
        """Move a share as far as it can go without blocking (``advance``, for a share); what
        it now waits for, and the ``budget_base`` to pass back with ``in_flight`` next time.

        The first call (``budget_base`` None) gives the share a fresh attempt budget: the
        attempts storage records for its tasks so far do not count against ``max_attempts``.
        """
        self._deploy()
        attempts = jobstate.attempts_used(self.job_dir, share.prefix)
        if budget_base is None:
            self._clear_failure()
            budget_base = {t.key: attempts[t.key] for t in share.tasks if t.key in attempts}
        in_flight = list(in_flight)
        sched = self._scheduler(share.phase, share.tasks, lambda task, record: [], attempts, False, in_flight,
                                total=len(share.tasks), already=0, budget_base=budget_base)
        phase = _Phase(share.phase, sched, list, 0)
        try:
            waiting = sched.advance(self._adopted_outcomes(sched, in_flight))
        except (TaskFailed, DeadlinePassed) as err:
            raise self._job_failed(phase, err) from None
        finally:
            self.speculative_attempts += sched.speculative_attempts
        if waiting.finished:
            return JobWaiting(share.phase, None, None), budget_base
        return JobWaiting(share.phase, waiting, None, self._lost_at(waiting.in_flight)), budget_base
