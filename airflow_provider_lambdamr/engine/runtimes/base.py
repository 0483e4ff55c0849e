"""The interface between the driver and a place that runs functions."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_lambdamr.engine.packaging import CodePackage

#: Function kind → handler, the same in the zip on Lambda and in the local runtime.
HANDLERS = {
    "mapper": "lambda_src.mapper.lambda_handler",
    "reducer": "lambda_src.reducer.lambda_handler",
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

    def error_text(self) -> str:
        if not self.error:
            return "unknown error"
        return f"{self.error.get('errorType', 'Error')}: {self.error.get('errorMessage', '')}"


class Runtime(abc.ABC):
    """Runs handler invocations asynchronously, at most ``capacity`` at a time."""

    name: str = "runtime"

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many invocations may be in flight at once."""

    @abc.abstractmethod
    def deploy(self, package: CodePackage) -> dict:
        """Make this code version ready to invoke; return a summary of what was deployed."""

    @abc.abstractmethod
    def invoke(self, function: str, event: dict, trace_header: str | None = None) -> str:
        """Start one invocation of ``function`` (a key of HANDLERS); return its request id.

        ``trace_header`` (``Root=...;Parent=...;Sampled=1``) makes the invocation part of
        the driver's X-Ray trace.
        """

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[InvocationResult]:
        """Wait up to ``timeout`` seconds; return the invocations that finished."""

    def cancel(self, request_id: str) -> None:  # noqa: B027 - optional
        """Stop caring about an invocation (a straggler whose twin already finished)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything this runtime started."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
