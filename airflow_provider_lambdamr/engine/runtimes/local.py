"""The local runtime: a pool of persistent worker processes that behave like Lambda.

Each worker is a fresh interpreter that imports the handlers from the job's extracted zip
(its init phase, timed as Lambda's cold start) and then serves invocations one at a time,
warm. The pool enforces the function timeout and memory limit by killing the worker, and
reports those failures with Lambda's wording; a worker that dies for any reason is replaced.
Workers also guard themselves (see _bootstrap): they die with this process, and end an
invocation at its deadline even when this process is gone or stuck.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from airflow_provider_lambdamr import prestart
from airflow_provider_lambdamr.engine import packaging
from airflow_provider_lambdamr.engine.packaging import CodePackage
from airflow_provider_lambdamr.engine.runtimes import _bootstrap
from airflow_provider_lambdamr.engine.runtimes.base import (
    LANGUAGE_HANDLERS,
    InvocationResult,
    Runtime,
    read_failed_attempt,
)
from lambda_src.contract import ARROW_AT_INIT_ENV, TaskSpec

log = logging.getLogger(__name__)

MEMORY_POLL_S = 0.05
#: How long a worker that closed its connection gets to exit by itself (its exit status
#: says why it ended) before it is killed.
EXIT_GRACE_S = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class _Pending:
    request_id: str
    #: The function kind (a key of the runtime's handlers) and its event.
    function: str
    event: dict
    #: The task the event describes (None for a coordinator's event).
    spec: TaskSpec | None = None
    trace_header: str | None = None


@dataclass
class _Worker:
    proc: subprocess.Popen | prestart.ForkedProcess
    conn: Connection
    ready: bool = False
    init_ms: float = 0.0
    current: _Pending | None = None
    started: float = 0.0
    deadline: float = 0.0
    peak_mb: float = 0.0
    invocations: int = 0
    killed_for: str | None = None
    extra: dict = field(default_factory=dict)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (0 where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return 0.0


class LocalRuntime(Runtime):
    """Runs invocations in ``workers`` warm processes on this machine."""

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        memory_mb: int = 1536,
        timeout_s: float = 900.0,
        function_prefix: str = "lambdamr",
        env: dict[str, str] | None = None,
        tracing: bool = False,
        handlers: dict[str, str] | None = None,
    ) -> None:
        """``handlers``: function kind → handler, of the functions these workers serve
        (default: the mapper and reducer of the deployed package's language)."""
        self.handlers = dict(handlers) if handlers else None
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.function_prefix = function_prefix
        self.env = dict(env or {})
        self.tracing = tracing
        self.package: CodePackage | None = None
        self.code_dir: Path | None = None
        self._pool: list[_Worker] = []
        self._queue: collections.deque[_Pending] = collections.deque()
        self._results: list[InvocationResult] = []
        self.cold_starts = 0
        self.workers_replaced = 0
        self._deaths_before_ready = 0
        self._closed = False
        self.arrow_at_init = True
        #: Workers taken over from the ``lambdamr`` command's pre-start (see prestart).
        self.adopted = 0

    def set_map_mode(self, vectorized: bool) -> None:
        self.arrow_at_init = vectorized

    @property
    def capacity(self) -> int:
        return self.workers

    def worker_pids(self) -> list[int]:
        """The process ids of the pool's workers."""
        return [w.proc.pid for w in self._pool]

    def function_name(self, function: str) -> str:
        version = self.package.version if self.package else "unversioned"
        return f"{self.function_prefix}-{function}-{version}"

    # -- lifecycle ---------------------------------------------------------------------
    def deploy(self, package: CodePackage) -> dict:
        self._closed = False
        if self.package is not None and self.package.sha256 != package.sha256:
            self.close()
        self.package = package
        self.code_dir = packaging.extracted(package)
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())
        return {
            "runtime": self.name,
            "version": package.version,
            "sha256": package.sha256,
            "functions": {kind: self.function_name(kind) for kind in self._handlers()},
            "code_dir": str(self.code_dir),
        }

    def _spawn(self) -> _Worker:
        assert self.code_dir is not None and self.package is not None
        env = prestart.early_env({**os.environ, **self.env}, self.workers)
        # What depends on the job: a standby worker (see prestart) gets it with the code.
        late = {
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_EXECUTION_ENV": "lambdamr-local",
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "LAMBDAMR_TRACING": "1" if self.tracing else "0",
            ARROW_AT_INIT_ENV: "1" if self.arrow_at_init else "0",
        }
        if self.package.language == packaging.PYTHON:
            # A worker of a record-mode job does not import pyarrow at init (ARROW_AT_INIT_ENV).
            claimed = prestart.claim(env, prestart.ARROW_IMPORTS if self.arrow_at_init else ())
            if claimed is not None:
                proc, sock = claimed
                conn = Connection(sock.detach())
                init = {"type": "init", "code_dir": str(self.code_dir),
                        "handlers": list(self._handlers().values()), "env": late}
                with contextlib.suppress(OSError):  # it died since claim(): _receive sees it
                    conn.send_bytes(json.dumps(init).encode())
                log.info("local runtime: adopted pre-started worker %d", proc.pid)
                self.adopted += 1
                return _Worker(proc=proc, conn=conn)
        else:
            prestart.discard()
        parent, child = socket.socketpair()
        try:
            proc = prestart.popen(self._worker_command(child.fileno()), {**env, **late}, child)
        finally:
            child.close()
        return _Worker(proc=proc, conn=Connection(parent.detach()))

    def _handlers(self) -> dict[str, str]:
        """Function kind → handler: those given (the coordinator's), else the deployed
        package's mapper and reducer, in its language."""
        if self.handlers is not None:
            return self.handlers
        assert self.package is not None
        return LANGUAGE_HANDLERS[self.package.language]

    def _worker_command(self, fd: int) -> list[str]:
        """A Python worker, or a Node.js one (exec'd by the Python bootstrap, which first makes
        it die with this process: see ``_bootstrap.exec_worker``)."""
        assert self.package is not None and self.code_dir is not None
        handlers = list(self._handlers().values())
        if self.package.language == packaging.NODEJS:
            node = node_executable()
            return [*prestart.python_command(_bootstrap.EXEC_FLAG), node,
                    str(self.code_dir / "lambda_src" / "nodejs" / "bootstrap.mjs"), str(fd), *handlers]
        return prestart.python_command(str(fd), str(self.code_dir), *handlers)

    def close(self) -> None:
        """Stop every worker; in-flight and queued invocations end as cancelled."""
        self._closed = True
        cancelled = [w.current for w in self._pool if w.current is not None] + list(self._queue)
        for worker in self._pool:  # kill them all, then reap them: their exits overlap
            worker.current = None
            self._kill(worker)
        for worker in self._pool:
            self._stop(worker)
        self._pool = []
        self._queue.clear()
        for pending in cancelled:
            self._results.append(
                InvocationResult(pending.request_id, False, error={
                    "errorType": "Runtime.Cancelled",
                    "errorMessage": "the local runtime was stopped (on_kill or shutdown)",
                })
            )

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.conn.close()
        if worker.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(worker.proc.pid, signal.SIGKILL)

    def _stop(self, worker: _Worker) -> None:
        self._kill(worker)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=5)

    # -- invocations -------------------------------------------------------------------
    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        return self._enqueue(_Pending("", spec.function, spec.to_event(), spec, trace_header))

    def invoke_event(self, function: str, event: dict) -> str:
        """Invoke the function ``function`` (a key of ``handlers``) with any event (a coordinator's)."""
        return self._enqueue(_Pending("", function, event))

    def _enqueue(self, pending: _Pending) -> str:
        if self._closed:
            raise RuntimeError("the local runtime was stopped")
        if self.package is None:
            raise RuntimeError("deploy() a code package before invoking")
        if pending.function not in self._handlers():
            raise ValueError(f"unknown function {pending.function!r}: expected one of {sorted(self._handlers())}")
        pending.request_id = str(uuid.uuid4())
        self._queue.append(pending)
        self._dispatch()
        return pending.request_id

    def cancel(self, request_id: str) -> None:
        self._queue = collections.deque(p for p in self._queue if p.request_id != request_id)
        for worker in self._pool:
            if worker.current is not None and worker.current.request_id == request_id:
                worker.killed_for = "cancelled"
                self._replace(worker)

    def _dispatch(self) -> None:
        for worker in self._pool:
            if not self._queue:
                return
            if worker.ready and worker.current is None:
                pending = self._queue.popleft()
                now = time.time()
                worker.current = pending
                worker.started = now
                worker.deadline = now + self.timeout_s
                worker.peak_mb = 0.0
                worker.killed_for = None
                request = {
                    "request_id": pending.request_id,
                    "handler": self._handlers()[pending.function],
                    "function_name": self.function_name(pending.function),
                    "memory_mb": self.memory_mb,
                    "deadline_ms": worker.deadline * 1000,
                    "trace_header": pending.trace_header,
                    "event": pending.event,
                }
                try:
                    worker.conn.send_bytes(json.dumps(request).encode())
                except OSError:
                    self._on_exit(worker)

    def poll(self, timeout: float) -> list[InvocationResult]:
        end = time.monotonic() + max(0.0, timeout)
        while True:
            self._dispatch()
            if self._results:
                out, self._results = self._results, []
                return out
            remaining = end - time.monotonic()
            if self._closed:
                raise RuntimeError("the local runtime was stopped")
            if remaining <= 0 or not self._pool:
                return []
            busy = [w for w in self._pool if w.current is not None]
            wait_s = min(remaining, MEMORY_POLL_S) if busy else remaining
            if busy:
                nearest = min(w.deadline for w in busy) - time.time()
                wait_s = max(0.0, min(wait_s, nearest))
            by_conn = {w.conn: w for w in self._pool}
            for conn in wait(list(by_conn), timeout=wait_s):
                self._receive(by_conn[conn])
            self._enforce_limits()

    def _receive(self, worker: _Worker) -> None:
        try:
            message = json.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._on_exit(worker)
            return
        if message.get("type") == "ready":
            worker.ready = True
            worker.init_ms = float(message.get("init_ms", 0.0))
            return
        pending = worker.current
        if pending is None or message.get("request_id") != pending.request_id:
            return  # a late reply to an invocation already given up on
        worker.current = None
        worker.invocations += 1
        cold = bool(message.get("cold_start"))
        if cold:
            self.cold_starts += 1
        duration = float(message.get("duration_ms", 0.0))
        ok = bool(message.get("ok"))
        # A handler that failed wrote the failed attempt's record (unless the event could not
        # be parsed, or storage failed too): that record says how it failed.
        record = None if ok or pending.spec is None else read_failed_attempt(pending.spec, pending.request_id)
        self._results.append(
            InvocationResult(
                request_id=pending.request_id,
                ok=ok,
                failure=record.error if record is not None else None,
                payload=message.get("payload"),
                error=message.get("error"),
                duration_ms=duration,
                billed_ms=max(1, math.ceil(duration)),
                init_ms=float(message.get("init_ms", 0.0)),
                cold_start=cold,
                max_memory_mb=max(float(message.get("max_memory_mb", 0.0)), worker.peak_mb),
            )
        )

    def _enforce_limits(self) -> None:
        now = time.time()
        for worker in list(self._pool):
            if worker.current is None:
                continue
            if now >= worker.deadline:
                worker.killed_for = "timeout"
                self._replace(worker)
                continue
            used = rss_mb(worker.proc.pid)
            worker.peak_mb = max(worker.peak_mb, used)
            if used > self.memory_mb:
                worker.killed_for = "memory"
                self._replace(worker)

    def _on_exit(self, worker: _Worker) -> None:
        """A worker's connection closed: it exited or was killed."""
        if not worker.ready:
            self._deaths_before_ready += 1
            if self._deaths_before_ready > 3 * self.workers:
                code = worker.proc.poll()
                raise RuntimeError(
                    f"local runtime workers exit before they are ready (last exit status "
                    f"{code}); run {' '.join(prestart.python_command())} by hand to see why"
                )
        if worker in self._pool:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=EXIT_GRACE_S)
            self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker)
        pending = worker.current
        worker.current = None
        if pending is not None and worker.killed_for != "cancelled":
            self._results.append(self._failure(worker, pending))
        if worker in self._pool:
            index = self._pool.index(worker)
            self._pool[index] = self._spawn()
            self.workers_replaced += 1

    def _failure(self, worker: _Worker, pending: _Pending) -> InvocationResult:
        rid = pending.request_id
        elapsed_ms = (time.time() - worker.started) * 1000
        if worker.killed_for == "timeout" or worker.proc.returncode == _bootstrap.TIMEOUT_EXIT:
            error = {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {rid} Error: Task timed out after {self.timeout_s:.2f} seconds",
            }
        elif worker.killed_for == "memory":
            error = {
                "errorType": "Runtime.OutOfMemory",
                "errorMessage": (
                    f"RequestId: {rid} Error: Runtime exited with error: signal: killed "
                    f"(Max Memory Used: {worker.peak_mb:.0f} MB of {self.memory_mb} MB)"
                ),
            }
        else:
            code = worker.proc.returncode
            how = f"signal: {signal.Signals(-code).name.lower().removeprefix('sig')}" if (
                code is not None and code < 0
            ) else f"exit status {code}"
            error = {
                "errorType": "Runtime.ExitError",
                "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: {how}",
            }
        return InvocationResult(
            request_id=rid,
            ok=False,
            error=error,
            duration_ms=elapsed_ms,
            billed_ms=max(1, math.ceil(elapsed_ms)),
            max_memory_mb=worker.peak_mb,
        )


def node_executable() -> str:
    """The ``node`` that runs JavaScript jobs' workers: ``LAMBDAMR_NODE``, else the one on PATH."""
    import shutil

    node = os.environ.get("LAMBDAMR_NODE") or shutil.which("node")
    if not node:
        raise RuntimeError("a JavaScript job needs Node.js 20 or later: install node, or set LAMBDAMR_NODE to its path")
    return node
