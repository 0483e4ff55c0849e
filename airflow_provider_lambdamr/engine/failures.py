"""How a job fails: ``JobFailed`` (naming the phase, task and input, with a hint at the limit
to raise), and ``failed.json``, the record sensors and triggers in other processes read."""

from __future__ import annotations

import logging
import time

from airflow_provider_lambdamr.engine import jobstate
from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult
from airflow_provider_lambdamr.engine.scheduler import Task
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract

log = logging.getLogger(__name__)

#: A worker killed with at least this share of its memory in use most likely ran out of it.
NEAR_MEMORY_LIMIT = 0.9


class JobFailed(Exception):
    """A job could not finish; the message names the phase, task and input."""

    def __init__(self, message: str, *, phase: str, task: str | None = None,
                 input: str | None = None, error: str | None = None, resumable: bool = True) -> None:
        super().__init__(message)
        #: False when rerunning the same job id cannot help (nothing planned, or a conflict).
        self.resumable = resumable
        self.phase = phase
        self.task = task
        self.input = input
        self.error = error


def task_failed(spec: JobSpec, phase: str, task: Task, error: str, retryable: bool,
                res: InvocationResult) -> JobFailed:
    """The job's failure when ``task`` failed for good; names the limit to raise, if any."""
    reported = res.failure_report()
    error_type = reported.type
    if retryable:
        what = f"failed after {task.spent} attempt{'s' if task.spent > 1 else ''}"
    else:
        what = reported.verdict()
    # Out of memory: the local runtime's kill, Lambda's "Runtime.OutOfMemory", a kill by
    # a signal with memory near the limit (the kernel's OOM killer), a MemoryError raised
    # in the handler, or a runtime that cannot tell (the AWS runtime's missing status).
    killed = "Runtime exited with error: signal: kill" in error
    oom = (error_type == "Runtime.OutOfMemory" or "MemoryError" in error or "out of memory" in error
           or (killed and res.max_memory_mb >= NEAR_MEMORY_LIMIT * spec.memory_mb))
    hint = ""
    if error_type == "Sandbox.Timedout":
        hint = "; raise --timeout-s, or lower --split-size"
        if oom:
            hint += f"; or, if it ran out of memory, raise --memory-mb (now {spec.memory_mb})"
    elif oom:
        hint = (f"; raise --memory-mb (now {spec.memory_mb}), or --partitions so each "
                f"reducer holds less")
    message = f"{task.describe} {what}: {error}{hint} (input: {task.input_desc})"
    return JobFailed(message, phase=phase, task=task.describe, input=task.input_desc, error=error)


def record(spec: JobSpec, failure: JobFailed) -> None:
    """Write ``failed.json`` (best effort: reporting the failure matters more)."""
    data = {"job_id": spec.job_id, "phase": failure.phase, "task": failure.task,
            "input": failure.input, "error": failure.error, "message": str(failure),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        jobstate.write_json(contract.failure_uri(spec.job_dir), data)
    except Exception:  # reporting the failure matters more than recording it
        log.exception("could not record the failure of job %s", spec.job_id)
