"""What every handler shares: the event, the job class, status records, failure reports.

A task writes its outputs first, then its status record. The status record is the commit:
the driver (and a resumed driver) treats a task as done only when its record exists, and
reads from the record which attempt's outputs are the task's result. Every attempt writes
under its own token, so two attempts running at once (a retry racing a straggler, or a
duplicate delivery) can never mix their outputs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import resource
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import (  # noqa: F401 - part of this module's interface too
    EVENT_VERSION,
    JOB_ID_RE,
    EventError,
    JobConfig,
    TaskSpec,
    validate_job_id,
    validate_params,
)
from lambda_src.job import BadRecord, Join, MapReduceJob, Step
from lambda_src.output import OutputError
from lambda_src.reader import InputError
from lambda_src.shuffle import CombinerKeyError, EncodeError

log = logging.getLogger("lambdamr")

JOB_REF_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class TaskError(Exception):
    """A task failed; the message says which task, which input and what went wrong."""


class TaskInputError(TaskError):
    """A task failed because of its input or event: retrying cannot help."""


class TaskJobError(TaskError):
    """A task failed because of a bug in the job's code that a retry cannot fix."""


class JobCodeError(ValueError):
    """The job's code cannot be loaded as a job: a missing module or class."""


#: Failures of the input or the event: a retry reads the same input again.
INPUT_ERRORS = (EventError, TaskInputError, InputError, BadRecord, st.NotFound)
#: Failures of the job's code that a retry cannot fix. A job that calls sys.exit() or raises
#: KeyboardInterrupt (no signal reaches a worker: it has its own session) does so on purpose
#: or by a bug, and would do it again on every attempt: fail at once, blaming the job.
JOB_ERRORS = (TaskJobError, JobCodeError, EncodeError, CombinerKeyError, OutputError, SystemExit,
              KeyboardInterrupt)
#: Failures that a retry cannot fix.
DETERMINISTIC_ERRORS = INPUT_ERRORS + JOB_ERRORS


#: The failure kind (the contract's) of each way a task fails.
_KINDS = {TaskJobError: "job", TaskInputError: "input", TaskError: "task"}


def failure_class(err: BaseException) -> type[TaskError]:
    """How a task that raised ``err`` fails: the job's fault, the input's, or maybe transient."""
    if isinstance(err, JOB_ERRORS):
        return TaskJobError
    if isinstance(err, INPUT_ERRORS):
        return TaskInputError
    return TaskError


def error_message(err: BaseException) -> str:
    """``err``'s message, saying what a SystemExit or a bare KeyboardInterrupt was."""
    if isinstance(err, SystemExit):
        return f"the job called sys.exit({err.code!r})"
    if isinstance(err, KeyboardInterrupt) and not str(err):
        return "KeyboardInterrupt raised by the job"
    return str(err)


_job_classes: dict[str, type[MapReduceJob]] = {}


def load_job_class(ref: str) -> type[MapReduceJob]:
    """Import ``package.module:ClassName`` (cached per warm container)."""
    cls = _job_classes.get(ref)
    if cls is not None:
        return cls
    if not isinstance(ref, str) or not JOB_REF_RE.match(ref):
        raise EventError(f"invalid job reference {ref!r}: expected 'package.module:ClassName'")
    module_name, _, class_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise JobCodeError(
            f"cannot import job module {module_name!r}: {err} (is it in the deployed zip?)"
        ) from err
    if not hasattr(module, class_name):
        jobs = sorted(name for name, value in vars(module).items()
                      if isinstance(value, type) and issubclass(value, MapReduceJob)
                      and value is not MapReduceJob)
        raise JobCodeError(
            f"job module {module_name!r} ({getattr(module, '__file__', None) or 'no file'}) has no "
            f"attribute {class_name!r}; its MapReduceJob classes: {', '.join(jobs) or 'none'}"
        )
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, MapReduceJob)):
        raise JobCodeError(f"{ref} is not a MapReduceJob subclass")
    _job_classes[ref] = cls
    return cls


@dataclass
class TaskEvent:
    """A parsed event: its task spec (the contract's), and the handler's view of it."""

    job_id: str
    job_dir: str
    job: JobConfig
    task: dict[str, Any]
    attempt: int
    spec: TaskSpec | None = None

    @classmethod
    def parse(cls, event: object, spec_class: type[TaskSpec]) -> TaskEvent:
        spec = spec_class.from_event(event)  # type: ignore[attr-defined]
        return cls(job_id=spec.job_id, job_dir=spec.job_dir, job=spec.job, task=spec.task_dict(),
                   attempt=spec.attempt, spec=spec)

    def inside_job_dir(self, uri: object, what: str) -> str:
        """``uri``, checked to lie under the job directory (intermediate data lives there)."""
        try:  # no "..", empty or absolute segments below the job directory
            rel = st.relative_to(uri, self.job_dir) if isinstance(uri, str) else None
            if rel:
                return st.join(self.job_dir, rel)
        except ValueError:
            pass
        raise EventError(f"{what} must lie under the job directory, got {uri!r}")

    def load_list(self) -> list:
        """The task's list (splits, runs or inputs): inline, or stored under the job directory."""
        spec = self.spec
        if spec.items is not None:
            value = spec.items
        elif spec.items_uri is not None:
            uri = self.inside_job_dir(spec.items_uri, f"event field '{spec.list_name}_uri'")
            value = json.loads(st.for_uri(uri).read_bytes(uri))
        else:
            raise EventError(f"event has neither '{spec.list_name}' nor '{spec.list_name}_uri'")
        if not isinstance(value, list):
            raise EventError(f"event field {spec.list_name!r} must be a list")
        return value


@dataclass
class StepContext:
    """Which step of the job a task belongs to, and where that step keeps its data."""

    step: Step
    index: int  # 0-based
    count: int
    partitions: int
    dir: str  # the job directory for step 1, <job dir>/step-NN for later steps
    #: The step after this one (None in the last): what the pairs this step writes are for.
    next: Step | Join | None = None

    @property
    def last(self) -> bool:
        return self.index == self.count - 1



def step_context(ev: TaskEvent, job: MapReduceJob) -> StepContext:
    """The task's step of ``job``; an event naming a step the job lacks is an EventError."""
    steps = job.checked_steps(ev.job.vectorized)
    index = ev.spec.step
    if index >= len(steps):
        raise EventError(f"the event names step {index + 1}, but {ev.job.ref} has {len(steps)} step(s)")
    step = steps[index]
    return StepContext(
        step=step,
        index=index,
        count=len(steps),
        partitions=step.partitions or ev.job.partitions,
        dir=ev.spec.step_dir,
        next=steps[index + 1] if index + 1 < len(steps) else None,
    )


def reset_peak_memory() -> None:
    """Reset the kernel's peak-RSS mark so this invocation's peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def attempt_token(attempt: int) -> str:
    return contract.attempt_token(attempt, uuid.uuid4().hex[:10])


def write_json(uri: str, record: dict) -> None:
    st.for_uri(uri).write_bytes(uri, json.dumps(record, sort_keys=True).encode("utf-8"))


Body = Callable[[TaskEvent, str], dict]

_tracing_ready: bool | None = None


def _tracing() -> bool:
    """Trace handlers when the function was deployed with tracing and the SDK is in the zip."""
    global _tracing_ready
    if _tracing_ready is None:
        _tracing_ready = False
        if os.environ.get("LAMBDAMR_TRACING") == "1" and os.environ.get("_X_AMZN_TRACE_ID"):
            try:
                from aws_xray_sdk.core import patch, xray_recorder
            except ImportError:
                log.warning("tracing is on but aws_xray_sdk is not in the function's zip")
            else:
                logging.getLogger("aws_xray_sdk").setLevel(logging.ERROR)
                xray_recorder.configure(context_missing="IGNORE_ERROR", sampling=False, plugins=())
                patch(("botocore",))
                _tracing_ready = True
    return _tracing_ready and bool(os.environ.get("_X_AMZN_TRACE_ID"))


@contextlib.contextmanager
def traced(name: str, **annotations: object) -> Iterator[None]:
    """An X-Ray subsegment of the invocation's trace, or nothing when not tracing."""
    if not _tracing():
        yield
        return
    from aws_xray_sdk.core import xray_recorder

    with xray_recorder.in_subsegment(name) as sub:
        for key, value in annotations.items():
            sub.put_annotation(key, value)
        yield


def run(event: object, context: Any, spec_class: type[TaskSpec], body: Body) -> dict:
    """Run one task: parse the event, run the body, commit the status record.

    On failure a record of the failed attempt is written beside the status key, and the
    exception propagates, so Lambda (or the local runtime) reports the invocation as
    failed with a message naming the task and its input.
    """
    started = time.time()
    reset_peak_memory()
    requests_before = st.s3_requests()
    ev = TaskEvent.parse(event, spec_class)
    spec = ev.spec
    token = attempt_token(ev.attempt)
    status_uri = spec.status_uri()
    where = spec.describe()
    request_id = getattr(context, "aws_request_id", None)
    try:
        with traced(where, job_id=ev.job_id, task=spec.status_key()):
            result = body(ev, token)
    except BaseException as err:  # SystemExit and KeyboardInterrupt from the job too
        kind = failure_class(err)
        failure = contract.Failure(
            kind=_KINDS[kind], type=type(err).__name__, message=error_message(err),
            # How the invocation fails, so a runtime reading this record reports the same.
            failure=kind.__name__, traceback=traceback.format_exc(limit=30),
        )
        record = contract.StatusRecord(
            job_id=ev.job_id, task=ev.task, state="failed", attempt=ev.attempt, attempt_token=token,
            request_id=request_id, error=failure, where=where,
            duration_ms=round((time.time() - started) * 1000, 1), result={"started_at": round(started, 3)},
        )
        try:
            write_json(spec.failed_attempt_uri(token), record.to_dict())
        except Exception:  # the failure itself is what matters; keep reporting it
            log.exception("could not write the failure record of %s", where)
        raise kind(f"{where} failed: {failure.text}") from err
    duration_ms = round((time.time() - started) * 1000, 1)
    stats = result.setdefault("stats", {})
    stats["duration_ms"] = duration_ms
    stats["peak_memory_mb"] = peak_memory_mb()
    after = st.s3_requests()
    # The status record's own PUT, written next, is counted here too.
    stats["s3_requests"] = {k: after[k] - requests_before[k] + (k == "put" and st.is_s3(status_uri))
                            for k in after}
    record = contract.StatusRecord(
        job_id=ev.job_id, task=ev.task, state="succeeded", attempt=ev.attempt, attempt_token=token,
        request_id=request_id, result={**result, "started_at": round(started, 3)},
    ).to_dict()
    write_json(status_uri, record)
    log.info(
        "%s done in %.0f ms (%s)", where, duration_ms,
        ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if isinstance(v, int | float)),
    )
    return record
