"""Coordinator mode: a job that finishes with no driver alive.

The driver plans the job, deploys the functions and a coordinator function, launches the map
fan-out and may exit. From then on the job advances itself: every mapper and reducer
invocation, when it ends (success or failure), invokes the coordinator through its
asynchronous-invocation destination (Lambda's ``DestinationConfig``; the local function
service emulates it), and a watchdog (an EventBridge schedule on AWS, a timer in the local
service) invokes it now and then too. Each coordinator invocation is one ``step``: it rebuilds
the job from storage (manifest, status records, launch markers), takes what the event says,
and moves the job as far as it can without waiting (``Driver.advance``): retries, the next
reduce round, later steps, the commit.

Many coordinator invocations may run at once (every event is delivered at least once, some
twice, in any order), so a task attempt is launched only by whoever creates its launch
marker ``launch/<status key>.a<attempt>.json`` (create-exclusive: ``O_EXCL``/``link``
locally, ``If-None-Match: *`` on S3); the others see the marker and count that attempt as in
flight. The markers are also how a later step learns what is in flight: an attempt with a
marker and no status record is running, until ``LOST_GRACE_S`` past its function's timeout,
when it counts as lost and the next attempt is launched. So a lost event, or a coordinator
that died half way, never stalls the job: the next event or the watchdog picks it up.

This module imports no Airflow: the coordinator's zip carries it with the rest of the engine.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_lambdamr.engine import jobstate
from airflow_provider_lambdamr.engine.failures import JobFailed
from airflow_provider_lambdamr.engine.packaging import CodePackage
from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult, Runtime
from airflow_provider_lambdamr.engine.scheduler import InFlight
from airflow_provider_lambdamr.engine.spec import JobSpec, load_spec
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import EventError, TaskSpec, task_from_event

log = logging.getLogger(__name__)

#: The coordinator function's handler (in the coordinator's zip).
HANDLER = "airflow_provider_lambdamr.engine.coordinator.lambda_handler"
#: The function kind of the coordinator (``<prefix>-coordinator`` on AWS).
KIND = "coordinator"
#: What the coordinator's zip carries beyond the job's (``packaging.build(include=...)``).
ENGINE = ("airflow_provider_lambdamr",)
#: A watchdog event: ``{"lambdamr_watchdog": {"job_dir": URI}}``.
WATCHDOG = "lambdamr_watchdog"
#: How often the watchdog wakes the coordinator of a job.
WATCHDOG_INTERVAL_S = 60.0
#: The coordinator function's memory and timeout (it reads status records and invokes).
MEMORY_MB = 1024
TIMEOUT_S = 900.0
CONFIG_VERSION = 1


# -- launch markers ------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One task attempt that was launched (its marker exists)."""

    key: str
    attempt: int
    request_id: str
    launched_at: float


def read_launches(job_dir: str) -> dict[str, Launch]:
    """The latest launched attempt of every task, by status key (one listing of ``launch/``)."""
    where = contract.launch_dir(job_dir)
    latest: dict[str, str] = {}
    attempts: dict[str, int] = {}
    for info in st.for_uri(where).list(where):
        found = contract.launch_of(job_dir, info.uri)
        if found is not None and found[1] > attempts.get(found[0], 0):
            attempts[found[0]] = found[1]
            latest[found[0]] = info.uri
    out = {}
    for key, uri in latest.items():
        marker = _read_marker(uri)
        if marker is not None:
            out[key] = Launch(key, attempts[key], str(marker["request_id"]), float(marker["launched_at"]))
    return out


def _read_marker(uri: str) -> dict | None:
    try:
        return json.loads(st.for_uri(uri).read_bytes(uri))
    except st.NotFound:
        return None  # deleted with the job's state since it was listed


class LaunchOnce(Runtime):
    """Launches each attempt of each task at most once, however many coordinators ask.

    ``invoke`` creates the attempt's launch marker exclusively and invokes ``inner`` only
    when it created it; otherwise the attempt is already launched and its request id (the
    marker's) is returned. Outcomes come from the status records (``Driver.advance`` reads
    them), never from ``poll``: a coordinator does not wait.
    """

    def __init__(self, inner: Runtime, job_dir: str) -> None:
        self.inner = inner
        self.job_dir = job_dir
        self.name = inner.name
        self.architecture = getattr(inner, "architecture", "x86_64")
        #: Attempts this object launched (created the marker of, and invoked).
        self.launched: list[tuple[str, int]] = []

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def deploy(self, package: CodePackage) -> dict:
        raise RuntimeError("a coordinator launches the functions the driver deployed; it deploys nothing")

    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        uri = contract.launch_uri(self.job_dir, spec.status_key(), spec.attempt)
        marker = {"job_id": spec.job_id, "key": spec.status_key(), "attempt": spec.attempt,
                  "request_id": str(uuid.uuid4()), "launched_at": time.time()}
        if st.for_uri(uri).write_new(uri, json.dumps(marker, sort_keys=True).encode("utf-8")):
            self.inner.invoke(spec, trace_header)
            self.launched.append((spec.status_key(), spec.attempt))
            return marker["request_id"]
        theirs = _read_marker(uri)
        if theirs is None:
            raise JobFailed(f"the launch marker {uri} exists but cannot be read", phase="coordinator")
        return str(theirs["request_id"])

    def poll(self, timeout: float) -> list[InvocationResult]:
        return []

    def close(self) -> None:
        self.inner.close()


# -- the coordinator's configuration -------------------------------------------------------
def write_config(job_dir: str, runtime: Runtime, coordinator: dict, budget_base: dict[str, int]) -> dict:
    """Record how the coordinator reaches the job's functions (``runtime.deployment``), and
    the attempts of each task not counted against ``max_attempts`` (a new run of a job that
    failed gives every task a fresh budget)."""
    config = {"version": CONFIG_VERSION, "runtime": runtime.name, "deployment": runtime.deployment,
              "coordinator": coordinator, "budget_base": budget_base, "written_at": time.time()}
    jobstate.write_json(contract.coordinator_uri(job_dir), config)
    return config


def read_config(job_dir: str) -> dict:
    uri = contract.coordinator_uri(job_dir)
    try:
        config = json.loads(st.for_uri(uri).read_bytes(uri))
    except st.NotFound:
        raise JobFailed(f"{job_dir} is not a job in coordinator mode ({uri} is missing)",
                        phase="coordinator", resumable=False) from None
    if config.get("version") != CONFIG_VERSION:
        raise JobFailed(f"{uri} has version {config.get('version')!r}, not {CONFIG_VERSION}: written by "
                        f"another release of lambdamr", phase="coordinator", resumable=False)
    return config


def budget_base(job_dir: str) -> dict[str, int]:
    """The attempts the job's current run does not count (none before its first launch)."""
    uri = contract.coordinator_uri(job_dir)
    try:
        return dict(json.loads(st.for_uri(uri).read_bytes(uri)).get("budget_base") or {})
    except st.NotFound:
        return {}


def attach_runtime(spec: JobSpec, config: dict, lambda_client: Callable[[], Any] | None = None) -> Runtime:
    """The runtime the driver deployed the job's functions on, attached to that deployment."""
    from airflow_provider_lambdamr.engine.runtimes import create_runtime

    if config["runtime"] != spec.runtime:
        raise JobFailed(f"the coordinator configuration names the {config['runtime']} runtime, the job "
                        f"{spec.runtime}", phase="coordinator", resumable=False)
    if lambda_client is None and spec.runtime == "aws":
        import boto3

        def lambda_client() -> Any:
            return boto3.client("lambda")
    runtime = create_runtime(spec.runtime, spec.runtime_options(), lambda_client=lambda_client)
    runtime.attach(config["deployment"])
    return runtime


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """What a coordinator invocation was told: which job, and how an invocation ended."""

    job_dir: str
    #: The task attempt whose end this event reports (None for the watchdog).
    task: TaskSpec | None = None
    ok: bool = True
    error: dict | None = None


def parse_event(event: object) -> Event:
    """A destination record (Lambda's ``requestContext``/``requestPayload``/``responsePayload``)
    of a mapper or reducer invocation, or a watchdog event."""
    if not isinstance(event, dict):
        raise EventError(f"a coordinator event must be a JSON object, got {type(event).__name__}")
    if WATCHDOG in event:
        watch = event[WATCHDOG]
        if not isinstance(watch, dict) or not isinstance(watch.get("job_dir"), str):
            raise EventError(f"a watchdog event's {WATCHDOG!r} must be {{\"job_dir\": URI}}, got {watch!r}")
        return Event(st.normalize(watch["job_dir"]))
    context = event.get("requestContext")
    if not isinstance(context, dict) or "requestPayload" not in event:
        raise EventError("a coordinator event is a destination record (requestContext, requestPayload, "
                         f"responsePayload) or a watchdog event ({WATCHDOG}); got members {sorted(event)}")
    spec = task_from_event(event["requestPayload"])
    ok = context.get("condition") == "Success"
    response = event.get("responsePayload")
    error = None if ok else (response if isinstance(response, dict) and "errorType" in response else
                             {"errorType": "Runtime.Unknown",
                              "errorMessage": f"the invocation failed ({context.get('condition')})"})
    return Event(spec.job_dir, spec, ok, error)


def _event_results(event: Event, launches: dict[str, Launch]) -> list[InvocationResult]:
    """A failure the event reports, for the attempt in flight it names (a failure without a
    status record, such as a timeout, is known this way before it counts as lost)."""
    task = event.task
    if task is None or event.ok:
        return []
    launch = launches.get(task.status_key())
    if launch is None or launch.attempt != task.attempt:
        return []  # an earlier attempt's late or repeated event
    return [InvocationResult(launch.request_id, False, error=event.error)]


# -- one step --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one coordinator step did."""

    job_dir: str
    #: ``succeeded``, ``failed`` or ``running``.
    state: str
    #: Task attempts this step launched, as (status key, attempt).
    launched: tuple[tuple[str, int], ...] = ()
    phase: str | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"

    def to_dict(self) -> dict:
        return {"job_dir": self.job_dir, "state": self.state, "finished": self.finished,
                "phase": self.phase, "launched": [list(k) for k in self.launched]}


def attempts_made(job_dir: str) -> dict[str, int]:
    """Per status key, the highest attempt launched or recorded as failed: what a new run of
    a failed job does not count against ``max_attempts``."""
    made = jobstate.attempts_used(job_dir, "")
    for key, launch in read_launches(job_dir).items():
        made[key] = max(made.get(key, 0), launch.attempt)
    return made


def step(job_dir: str, runtime: Runtime, event: Event | None = None) -> Outcome:
    """Advance the job in ``job_dir`` as far as it goes without waiting, launching through
    ``runtime`` (already deployed or attached) each task attempt at most once."""
    from airflow_provider_lambdamr.engine.driver import Driver

    manifest = jobstate.read_manifest(job_dir)
    if manifest is None:
        raise JobFailed(f"no job at {job_dir}: {contract.manifest_uri(job_dir)} is missing",
                        phase="coordinator", resumable=False)
    if jobstate.read_failure(job_dir) is not None:
        return Outcome(job_dir, "failed")
    spec = load_spec(job_dir)
    launcher = LaunchOnce(runtime, job_dir)
    driver = Driver.attached(spec, launcher, manifest)
    launches = read_launches(job_dir)
    in_flight = [InFlight(x.request_id, x.key, x.attempt, x.launched_at) for x in launches.values()]
    results = _event_results(event, launches) if event is not None else []
    try:
        waiting = driver.advance(results, in_flight, budget_base=budget_base(job_dir))
    except JobFailed:
        if jobstate.read_failure(job_dir) is None:
            raise
        return Outcome(job_dir, "failed", tuple(launcher.launched))
    state = "succeeded" if waiting.finished else "running"
    return Outcome(job_dir, state, tuple(launcher.launched), waiting.phase)


def handle(event: object, lambda_client: Callable[[], Any] | None = None) -> dict:
    """One coordinator invocation: the job the event names, advanced one step."""
    parsed = parse_event(event)
    spec = load_spec(parsed.job_dir)
    config = read_config(parsed.job_dir)
    runtime = attach_runtime(spec, config, lambda_client)
    try:
        outcome = step(parsed.job_dir, runtime, parsed)
        if outcome.finished:
            runtime.end_coordination(config["coordinator"])
    finally:
        runtime.close()
    log.info("coordinator: job %s %s; launched %s", spec.job_id, outcome.state, outcome.launched)
    return outcome.to_dict()


def lambda_handler(event: dict, context: Any) -> dict:
    logging.getLogger().setLevel(logging.INFO)
    return handle(event)


def watchdog_event(job_dir: str) -> dict:
    return {WATCHDOG: {"job_dir": job_dir}}


def destination_record(request_id: str, function_arn: str, request: dict, ok: bool,
                       response: object) -> dict:
    """The record Lambda sends an asynchronous invocation's destination (the local function
    service sends the same)."""
    return {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {"requestId": request_id, "functionArn": function_arn,
                           "condition": "Success" if ok else "RetriesExhausted", "approximateInvokeCount": 1},
        "requestPayload": request,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                            **({} if ok else {"functionError": "Unhandled"})},
        "responsePayload": response,
    }

