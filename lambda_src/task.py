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
from dataclasses import dataclass, field
from typing import Any

from lambda_src import storage as st
from lambda_src.job import BadRecord, MapReduceJob, Step
from lambda_src.reader import InputError
from lambda_src.shuffle import CombinerKeyError, EncodeError

log = logging.getLogger("lambdamr")

EVENT_VERSION = 1
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")
JOB_REF_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class EventError(ValueError):
    """An event that is not a valid task description."""


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
JOB_ERRORS = (TaskJobError, JobCodeError, EncodeError, CombinerKeyError, SystemExit, KeyboardInterrupt)
#: Failures that a retry cannot fix.
DETERMINISTIC_ERRORS = INPUT_ERRORS + JOB_ERRORS


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


def validate_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id) or ".." in job_id:
        raise EventError(
            f"invalid job id {job_id!r}: use 1-200 letters, digits and . _ = + - "
            f"(starting with a letter or digit)"
        )
    return job_id


def validate_params(params: object) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise EventError(f"job params must be a mapping of names to strings, got {params!r}")
    out = {}
    for name, value in params.items():
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            raise EventError(f"invalid job parameter name {name!r}")
        if not isinstance(value, str):
            raise EventError(f"job parameter {name!r} must be a string, got {type(value).__name__}")
        out[name] = value
    return out


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
class JobConfig:
    ref: str
    params: dict[str, str]
    partitions: int
    max_bad_records: int = 0
    vectorized: bool = True
    max_line_bytes: int = 1024 * 1024

    @classmethod
    def from_event(cls, data: object) -> JobConfig:
        if not isinstance(data, dict):
            raise EventError("event field 'job' must be an object")
        try:
            cfg = cls(
                ref=str(data["ref"]),
                params=validate_params(data.get("params")),
                partitions=int(data["partitions"]),
                max_bad_records=int(data.get("max_bad_records", 0)),
                vectorized=bool(data.get("vectorized", True)),
                max_line_bytes=int(data.get("max_line_bytes", 1024 * 1024)),
            )
        except KeyError as err:
            raise EventError(f"event field 'job' lacks {err}") from None
        except (TypeError, ValueError) as err:
            raise EventError(f"event field 'job' is malformed: {err}") from None
        if not 1 <= cfg.partitions <= 100_000:
            raise EventError(f"partitions must be between 1 and 100000, got {cfg.partitions}")
        if cfg.max_bad_records < 0:
            raise EventError(f"max_bad_records must be >= 0, got {cfg.max_bad_records}")
        return cfg

    def to_event(self) -> dict:
        return {
            "ref": self.ref,
            "params": self.params,
            "partitions": self.partitions,
            "max_bad_records": self.max_bad_records,
            "vectorized": self.vectorized,
            "max_line_bytes": self.max_line_bytes,
        }


@dataclass
class TaskEvent:
    job_id: str
    job_dir: str
    job: JobConfig
    task: dict[str, Any]
    attempt: int
    body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, event: object, phase: str) -> TaskEvent:
        if not isinstance(event, dict):
            raise EventError(f"event must be a JSON object, got {type(event).__name__}")
        if event.get("version") != EVENT_VERSION:
            raise EventError(
                f"event version {event.get('version')!r} is not {EVENT_VERSION}: the deployed "
                f"handler and the driver are from different releases"
            )
        job_dir = event.get("job_dir")
        if not isinstance(job_dir, str) or not job_dir:
            raise EventError("event field 'job_dir' must be a storage URI")
        task = event.get("task")
        if not isinstance(task, dict) or task.get("phase") != phase:
            raise EventError(f"event field 'task' must describe a {phase} task")
        attempt = task.get("attempt", 1)
        if not isinstance(attempt, int) or attempt < 1:
            raise EventError(f"task attempt must be a positive integer, got {attempt!r}")
        return cls(
            job_id=validate_job_id(event.get("job_id")),
            job_dir=job_dir,
            job=JobConfig.from_event(event.get("job")),
            task=task,
            attempt=attempt,
            body=event,
        )

    def inside_job_dir(self, uri: object, what: str) -> str:
        """``uri``, checked to lie under the job directory (intermediate data lives there)."""
        try:  # no "..", empty or absolute segments below the job directory
            rel = st.relative_to(uri, self.job_dir) if isinstance(uri, str) else None
            if rel:
                return st.join(self.job_dir, rel)
        except ValueError:
            pass
        raise EventError(f"{what} must lie under the job directory, got {uri!r}")

    def load_list(self, name: str) -> list:
        """An inline list field, or the JSON list stored at ``<name>_uri`` (large events)."""
        if name in self.body:
            value = self.body[name]
        elif f"{name}_uri" in self.body:
            uri = self.inside_job_dir(self.body[f"{name}_uri"], f"event field '{name}_uri'")
            value = json.loads(st.for_uri(uri).read_bytes(uri))
        else:
            raise EventError(f"event has neither '{name}' nor '{name}_uri'")
        if not isinstance(value, list):
            raise EventError(f"event field {name!r} must be a list")
        return value


@dataclass
class StepContext:
    """Which step of the job a task belongs to, and where that step keeps its data."""

    step: Step
    index: int  # 0-based
    count: int
    partitions: int
    dir: str  # the job directory for step 1, <job dir>/step-NN for later steps

    @property
    def last(self) -> bool:
        return self.index == self.count - 1



def step_name(index: int) -> str:
    """The directory (and status-key prefix) of a later step: ``step-02`` for index 1."""
    return f"step-{index + 1:02d}"


def step_dir(job_dir: str, index: int) -> str:
    """Where a step keeps its data: the job directory itself for step 1."""
    return job_dir if index == 0 else st.join(job_dir, step_name(index))


def step_scoped(index: int, key: str) -> str:
    """A status key (``map/00003``) in the namespace of step ``index`` (0-based)."""
    return key if index == 0 else f"{step_name(index)}/{key}"


def step_index(ev: TaskEvent) -> int:
    index = ev.task.get("step", 0)
    if not isinstance(index, int) or index < 0:
        raise EventError(f"task step must be a non-negative integer, got {index!r}")
    return index


def step_key(ev: TaskEvent, key: str) -> str:
    """A status key (``map/00003``) in the namespace of the event's step."""
    return step_scoped(step_index(ev), key)


def step_context(ev: TaskEvent, job: MapReduceJob) -> StepContext:
    """The task's step of ``job``; an event naming a step the job lacks is an EventError."""
    steps = job.checked_steps()
    index = step_index(ev)
    if index >= len(steps):
        raise EventError(f"the event names step {index + 1}, but {ev.job.ref} has {len(steps)} step(s)")
    step = steps[index]
    return StepContext(
        step=step,
        index=index,
        count=len(steps),
        partitions=step.partitions or ev.job.partitions,
        dir=step_dir(ev.job_dir, index),
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
    return f"a{attempt}-{uuid.uuid4().hex[:10]}"


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


def run(
    event: object,
    context: Any,
    phase: str,
    status_key: Callable[[TaskEvent], str],
    describe: Callable[[TaskEvent], str],
    body: Body,
) -> dict:
    """Run one task: parse the event, run the body, commit the status record.

    On failure a record of the failed attempt is written beside the status key, and the
    exception propagates, so Lambda (or the local runtime) reports the invocation as
    failed with a message naming the task and its input.
    """
    started = time.time()
    reset_peak_memory()
    requests_before = st.s3_requests()
    ev = TaskEvent.parse(event, phase)
    token = attempt_token(ev.attempt)
    key = status_key(ev)
    status_uri = st.join(ev.job_dir, "status", f"{key}.json")
    request_id = getattr(context, "aws_request_id", None)
    try:
        with traced(describe(ev), job_id=ev.job_id, task=status_key(ev)):
            result = body(ev, token)
    except BaseException as err:  # SystemExit and KeyboardInterrupt from the job too
        where = describe(ev)
        message = f"{where} failed: {type(err).__name__}: {error_message(err)}"
        kind = failure_class(err)
        record = {
            "job_id": ev.job_id,
            "task": ev.task,
            "state": "failed",
            "attempt": ev.attempt,
            "attempt_token": token,
            "request_id": request_id,
            "error": {
                "type": type(err).__name__,
                "message": error_message(err),
                "traceback": traceback.format_exc(limit=30),
                # How the invocation fails, so a runtime reading this record reports the same.
                "failure": kind.__name__,
            },
            "where": where,
            "duration_ms": round((time.time() - started) * 1000, 1),
        }
        try:
            write_json(st.join(ev.job_dir, "status", f"{key}.failed-{token}.json"), record)
        except Exception:  # the failure itself is what matters; keep reporting it
            log.exception("could not write the failure record of %s", where)
        raise kind(message) from err
    duration_ms = round((time.time() - started) * 1000, 1)
    stats = result.setdefault("stats", {})
    stats["duration_ms"] = duration_ms
    stats["peak_memory_mb"] = peak_memory_mb()
    after = st.s3_requests()
    # The status record's own PUT, written next, is counted here too.
    stats["s3_requests"] = {k: after[k] - requests_before[k] + (k == "put" and st.is_s3(status_uri))
                            for k in after}
    record = {
        "job_id": ev.job_id,
        "task": ev.task,
        "state": "succeeded",
        "attempt": ev.attempt,
        "attempt_token": token,
        "request_id": request_id,
        **result,
    }
    write_json(status_uri, record)
    log.info(
        "%s done in %.0f ms (%s)", describe(ev), duration_ms,
        ", ".join(f"{k}={v}" for k, v in sorted(stats.items()) if isinstance(v, int | float)),
    )
    return record
