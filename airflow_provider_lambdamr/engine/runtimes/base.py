"""The interface between the driver and a place that runs functions."""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_lambdamr.engine.packaging import CodePackage
from lambda_src import storage as st
from lambda_src.contract import Failure, StatusRecord, TaskSpec

#: Function kind → handler, the same in the zip on Lambda and in the local runtime.
HANDLERS = {
    "mapper": "lambda_src.mapper.lambda_handler",
    "reducer": "lambda_src.reducer.lambda_handler",
}
#: The same for each handler language (``CodePackage.language``), in Lambda's spelling.
LANGUAGE_HANDLERS = {
    "python": HANDLERS,
    "nodejs": {
        "mapper": "lambda_src/nodejs/mapper.handler",
        "reducer": "lambda_src/nodejs/reducer.handler",
    },
}


@dataclass
class InvocationResult:
    """The outcome of one invocation, as Lambda would report it."""

    request_id: str
    ok: bool
    payload: dict | None = None
    #: Lambda's error shape: ``errorType``, ``errorMessage``, ``stackTrace``.
    error: dict | None = None
    duration_ms: float = 0.0
    billed_ms: int = 0
    init_ms: float = 0.0
    cold_start: bool = False
    max_memory_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: Why the invocation failed: the failed attempt's record, or what the runtime saw itself.
    failure: Failure | None = None

    def error_text(self) -> str:
        if not self.error:
            return "unknown error"
        return f"{self.error.get('errorType', 'Error')}: {self.error.get('errorMessage', '')}"

    def failure_report(self) -> Failure:
        """How this failed invocation failed: its kind says whether a retry can help."""
        if self.failure is not None:
            return self.failure
        if not self.error:
            return Failure.from_runtime("Error", "unknown error")
        return Failure.from_runtime(self.error.get("errorType", "Error"), self.error.get("errorMessage", ""))


def read_failed_attempt(spec: TaskSpec, request_id: str | None,
                        listing: Iterable[str] | None = None) -> StatusRecord | None:
    """The record the handler wrote for the failed attempt ``spec.attempt`` of ``spec``.

    ``listing`` is a listing of ``spec.status_dir()`` when the caller has one. Of several
    records of that attempt number (a resumed driver's earlier run), the one written by
    ``request_id``'s invocation, else the first.
    """
    prefix = spec.failed_attempt_prefix()
    if listing is None:
        where = spec.status_dir()
        listing = [i.uri for i in st.for_uri(where).list(where)]
    uris = sorted(u for u in listing if u.startswith(prefix))
    records = [StatusRecord.from_dict(json.loads(st.for_uri(u).read_bytes(u))) for u in uris]
    return next((r for r in records if r.request_id == request_id), records[0] if records else None)


def list_status_dirs(specs: Iterable[TaskSpec]) -> set[str]:
    """One listing of every status directory of ``specs`` (one paginated listing per phase)."""
    listing: set[str] = set()
    for base in {spec.status_dir() for spec in specs}:
        listing.update(i.uri for i in st.for_uri(base).list(base))
    return listing


def committed_result(request_id: str, record: dict) -> InvocationResult:
    """The invocation ``request_id`` that wrote the commit record ``record``, as a result."""
    stats = record.get("stats", {})
    duration = float(stats.get("duration_ms", 0.0))
    return InvocationResult(
        request_id=request_id, ok=True, payload=record, duration_ms=duration,
        billed_ms=max(1, math.ceil(duration)), max_memory_mb=float(stats.get("peak_memory_mb", 0.0)),
    )


def outcome_from_records(request_id: str, spec: TaskSpec, listing: set[str]) -> InvocationResult | None:
    """What the status records say of the asynchronous invocation ``request_id`` of ``spec``.

    The task's commit record means it succeeded (by this attempt or a twin); the record of
    this failed attempt says how it failed. None while neither exists. ``listing`` is
    ``list_status_dirs`` of the specs in flight. Runtimes that invoke asynchronously (Lambda's
    ``Event`` type, the local function service) learn completion this way, so any process
    can observe a job another launched.
    """
    done_uri = spec.status_uri()
    if done_uri in listing:
        return committed_result(request_id, json.loads(st.for_uri(done_uri).read_bytes(done_uri)))
    failed = read_failed_attempt(spec, request_id, listing)
    if failed is not None and failed.error is not None:
        return InvocationResult(
            request_id=request_id, ok=False,
            error={"errorType": failed.error.failure, "errorMessage": failed.error.text},
            failure=failed.error, duration_ms=float(failed.duration_ms or 0.0),
        )
    return None


class Runtime(abc.ABC):
    """Runs handler invocations asynchronously, at most ``capacity`` at a time."""

    name: str = "runtime"

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many invocations may be in flight at once."""

    def missing_pyarrow(self) -> str | None:
        """What would put pyarrow where the functions run, or None when it is there already.

        The local runtimes run the handlers in this machine's Python.
        """
        import importlib.util

        return None if importlib.util.find_spec("pyarrow") else "install pyarrow (pip install pyarrow)"

    @abc.abstractmethod
    def deploy(self, package: CodePackage) -> dict:
        """Make this code version ready to invoke; return a summary of what was deployed."""

    def set_map_mode(self, vectorized: bool) -> None:
        """Before ``deploy``: whether the job's map tasks run vectorized. Workers started for
        the job then leave pyarrow out of their init phase when they do not (the local
        runtime's); functions shared by every job of a code version ignore it."""
        return None

    @abc.abstractmethod
    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        """Start one invocation of the task ``spec`` (run by ``HANDLERS[spec.function]``,
        with ``spec.to_event()`` as its event); return its request id.

        ``trace_header`` (``Root=...;Parent=...;Sampled=1``) makes the invocation part of
        the driver's X-Ray trace.
        """

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[InvocationResult]:
        """Wait up to ``timeout`` seconds; return the invocations that finished."""

    def attach(self, deployment: dict) -> None:
        """Invoke the functions another process deployed (its ``deploy`` summary), deploying
        nothing: how the coordinator of a job reaches the job's functions."""
        raise self._no_coordinator_mode()

    def deploy_coordinator(self, package: CodePackage, watchdog_event: dict, every_s: float) -> dict:
        """Coordinator mode: deploy the coordinator function (``package``: its zip), make every
        task invocation's end invoke it (asynchronous-invocation destinations, on success and
        on failure), and start a watchdog invoking it with ``watchdog_event`` every ``every_s``.
        Returns what was deployed. Call after ``deploy``."""
        raise self._no_coordinator_mode()

    def _no_coordinator_mode(self) -> NotImplementedError:
        return NotImplementedError(f"the {self.name} runtime has no coordinator mode: its workers live and "
                                   f"die with the driver (use --runtime service or aws)")

    def end_coordination(self, deployed: dict) -> None:  # noqa: B027 - optional
        """Coordinator mode: the job finished; stop its watchdog (``deployed``: what
        ``deploy_coordinator`` returned) where it does not stop by itself."""

    def cancel(self, request_id: str) -> None:  # noqa: B027 - optional
        """Stop caring about an invocation (a straggler whose twin already finished)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything this runtime started."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
