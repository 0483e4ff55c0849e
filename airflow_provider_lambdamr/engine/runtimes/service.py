"""The local function service: a per-user daemon that runs handler invocations like Lambda.

``LocalRuntime`` lives and dies with the process that made it. The service outlives its
callers: the first client starts it (detached, in its own session), and every Airflow task
and ``lambdamr`` command of the same user on the machine shares it. Inside, one
``LocalRuntime`` per function configuration (code version, memory, timeout, tracing) keeps
warm workers, enforcing the timeout and memory limit as it does in-process. Invocations are
asynchronous, like Lambda's ``Event`` type: ``invoke`` answers with a request id at once and
the work runs; the service does not retry (Lambda's async retries are off on AWS too, the
driver retries). Completion is read from the job's status records, as on AWS, so a job one
process launched can be awaited by another; the service adds what only it can see (a
timeout, running out of memory, a worker crash).

It listens on a Unix socket in a directory only its user can enter (mode 0700; socket and
pid file 0600), refuses a directory or socket owned by someone else or open to others,
checks each peer's uid (SO_PEERCRED), exits after ``idle_timeout_s`` with nothing to do,
and on SIGTERM or a ``shutdown`` request stops every worker before it exits. A pid file left
by a daemon that died (even by SIGKILL) is detected and replaced: a lock only a live daemon
holds says which. Messages are length-prefixed JSON; nothing is pickled.

Run ``python -m airflow_provider_lambdamr.engine.runtimes.service serve`` to run it in the
foreground; clients start it with ``ensure_service``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from airflow_provider_lambdamr.engine import coordinator
from airflow_provider_lambdamr.engine.packaging import LANGUAGES, CodePackage
from airflow_provider_lambdamr.engine.runtimes.base import (
    InvocationResult,
    Runtime,
    list_status_dirs,
    outcome_from_records,
)
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from lambda_src.contract import CANCELLED, EventError, TaskSpec, task_from_event

log = logging.getLogger(__name__)

#: Overrides where the service keeps its socket, pid file and log.
DIR_ENV = "LAMBDAMR_SERVICE_DIR"
SOCKET = "service.sock"
PID_FILE = "service.pid"
LOCK_FILE = "service.lock"
START_LOCK = "start.lock"
LOG_FILE = "service.log"
DEFAULT_IDLE_TIMEOUT_S = 600.0
#: Function configurations kept warm at once; the least recently used idle one goes first.
MAX_FUNCTIONS = 4
#: Finished invocations the service remembers (for clients that have not asked yet).
MAX_OUTCOMES = 100_000
MAX_MESSAGE = 64 * 1024 * 1024
START_TIMEOUT_S = 30.0
LOOP_S = 0.05
#: A watchdog whose invocations fail this many times in a row stops (a broken coordinator
#: must not keep the service from ever going idle).
MAX_WATCHDOG_FAILURES = 10
#: The kinds of function the service runs: the job's tasks, or a job's coordinator.
#: The kinds of function the service runs, with their handlers (None: the package's mapper
#: and reducer, in its language).
FUNCTION_KINDS = {"tasks": None, coordinator.KIND: {coordinator.KIND: coordinator.HANDLER}}
_HEADER = struct.Struct(">I")


class ServiceError(OSError):
    """The service cannot be reached, started or trusted, or refused a request."""


# -- the directory and its trust checks -------------------------------------------------
def service_dir() -> Path:
    """The per-user directory of the service: ``$LAMBDAMR_SERVICE_DIR``, else
    ``$XDG_RUNTIME_DIR/lambdamr``, else ``~/.cache/lambdamr/service-<uid>``."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "lambdamr"
    return Path(os.path.expanduser("~")) / ".cache" / "lambdamr" / f"service-{os.geteuid()}"


def check_private(path: Path, kind: str) -> None:
    """Refuse ``path`` unless it is a ``kind`` ("dir", "socket", "file") owned by this user
    and closed to everyone else (no symbolic link either)."""
    st_ = os.lstat(path)
    expected = {"dir": stat.S_ISDIR, "socket": stat.S_ISSOCK, "file": stat.S_ISREG}[kind]
    if not expected(st_.st_mode):
        raise ServiceError(f"{path} is not a {kind} (a symbolic link or something else): refusing to use it")
    if st_.st_uid != os.geteuid():
        raise ServiceError(f"{path} belongs to uid {st_.st_uid}, not to this user (uid {os.geteuid()}): "
                           f"refusing to use it")
    if stat.S_IMODE(st_.st_mode) & 0o077:
        raise ServiceError(f"{path} has mode {stat.S_IMODE(st_.st_mode):04o}: other users could use it; "
                           f"it must be {'0700' if kind == 'dir' else '0600'}")


def prepare_dir(path: Path) -> Path:
    """Create the service directory (mode 0700) if needed, and check it is private."""
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    check_private(path, "dir")
    return path


# -- framing -----------------------------------------------------------------------------
def send_message(sock: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ServiceError(f"a service message of {len(data)} bytes is above the {MAX_MESSAGE}-byte limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the connection closed mid-message")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_MESSAGE:
        raise ServiceError(f"a service message announces {size} bytes, above the {MAX_MESSAGE}-byte limit")
    message = json.loads(_recv_exact(sock, size))
    if not isinstance(message, dict):
        raise ServiceError(f"a service message must be a JSON object, got {type(message).__name__}")
    return message


# -- the daemon --------------------------------------------------------------------------
@dataclass
class _Function:
    """One function configuration and its warm workers."""

    key: str
    runtime: LocalRuntime
    #: Request ids accepted and not yet ended.
    running: set[str] = field(default_factory=set)
    #: ``tasks`` (the mapper and reducer) or ``coordinator``.
    kind: str = "tasks"
    #: Asynchronous-invocation destinations, as Lambda's ``DestinationConfig``: the function
    #: invoked with the destination record when an invocation succeeds / fails.
    on_success: str | None = None
    on_failure: str | None = None


@dataclass
class _Schedule:
    """A watchdog: ``event`` sent to ``function`` every ``every_s``, until an invocation of it
    answers ``{"finished": true}``, or ``MAX_WATCHDOG_FAILURES`` in a row fail."""

    function: str
    event: dict
    every_s: float
    next_at: float
    failures: int = 0


def function_key(package_sha256: str, memory_mb: int, timeout_s: float, tracing: bool) -> str:
    """A function configuration's name: what must match for workers to be reused."""
    text = json.dumps([package_sha256, int(memory_mb), float(timeout_s), bool(tracing)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Service:
    """The daemon. Its main thread owns the runtimes; connection threads hand it requests."""

    def __init__(self, directory: Path, workers: int | None = None,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.dir = prepare_dir(directory)
        self.workers = workers or os.cpu_count() or 1
        self.idle_timeout_s = idle_timeout_s
        self.functions: collections.OrderedDict[str, _Function] = collections.OrderedDict()
        self.owner: dict[str, str] = {}  # request id -> function key
        self.outcomes: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.changed = threading.Condition()
        self.requests: queue.Queue[tuple[dict, Future]] = queue.Queue()
        self.started = time.time()
        self.last_active = time.monotonic()
        self.invocations = 0
        self.stopping = False
        self._lock_fh = None
        self._listener: socket.socket | None = None
        #: Request id -> (function key, event) of invocations whose end goes to a destination.
        self.destined: dict[str, tuple[str, dict]] = {}
        self.schedules: dict[str, _Schedule] = {}
        #: Request id -> schedule id of the watchdog invocations in flight.
        self.scheduled: dict[str, str] = {}

    # -- lifecycle
    def serve(self) -> int:
        """Run until idle, a shutdown request or SIGTERM; stop every worker; return 0."""
        self._lock_fh = open(self.dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the daemon's life
        os.chmod(self.dir / LOCK_FILE, 0o600)
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"lambdamr service: another service already runs in {self.dir}", file=sys.stderr)
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        sock_path = self.dir / SOCKET
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock_path)  # left by a daemon that died: we hold the lock now
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(str(sock_path))
        finally:
            os.umask(old_umask)
        self._listener.listen(64)
        _write_private(self.dir / PID_FILE, f"{os.getpid()}\n")
        threading.Thread(target=self._accept, name="lambdamr-accept", daemon=True).start()
        log.info("lambdamr service %d listening on %s", os.getpid(), sock_path)
        try:
            self._loop()
        finally:
            self._stop()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _stop(self) -> None:
        for fn in self.functions.values():
            fn.runtime.close()
        self.functions.clear()
        if self._listener is not None:
            self._listener.close()
        for name in (SOCKET, PID_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / name)
        log.info("lambdamr service %d stopped", os.getpid())

    def _loop(self) -> None:
        while not self.stopping:
            self._handle_requests()
            self._fire_schedules()
            busy = [fn for fn in self.functions.values() if fn.running]
            for fn in busy:
                self._poll(fn, LOOP_S / len(busy))
            if not busy:
                with contextlib.suppress(queue.Empty):
                    request, future = self.requests.get(timeout=LOOP_S)
                    self._answer(request, future)
            if self.schedules or any(fn.running for fn in self.functions.values()):
                self.last_active = time.monotonic()
            elif time.monotonic() - self.last_active > self.idle_timeout_s:
                log.info("lambdamr service idle for %.0f s: exiting", self.idle_timeout_s)
                return

    def _poll(self, fn: _Function, timeout: float) -> None:
        try:
            self._record(fn, fn.runtime.poll(timeout))
        except RuntimeError as err:  # its workers cannot even start: fail what it runs, drop it
            log.error("function %s failed: %s", fn.key, err)
            fn.runtime.close()
            del self.functions[fn.key]
            self._record(fn, [InvocationResult(rid, False, error={"errorType": "Runtime.ExitError",
                                                                  "errorMessage": f"RequestId: {rid} {err}"})
                              for rid in fn.running])

    def _record(self, fn: _Function, results: list[InvocationResult]) -> None:
        if not results:
            return
        with self.changed:
            for res in results:
                fn.running.discard(res.request_id)
                self.owner.pop(res.request_id, None)
                self.outcomes[res.request_id] = _result_to_dict(res)
            while len(self.outcomes) > MAX_OUTCOMES:
                self.outcomes.popitem(last=False)
            self.changed.notify_all()
        for res in results:
            self._after(res)

    # -- destinations and watchdogs (Lambda's DestinationConfig and an EventBridge schedule)
    def _after(self, res: InvocationResult) -> None:
        """Send an ended invocation's destination record; end a watchdog whose job finished."""
        sid = self.scheduled.pop(res.request_id, None)
        schedule = self.schedules.get(sid) if sid else None
        if schedule is not None:
            schedule.failures = 0 if res.ok else schedule.failures + 1
            if res.ok and isinstance(res.payload, dict) and res.payload.get("finished"):
                del self.schedules[sid]
            elif schedule.failures >= MAX_WATCHDOG_FAILURES:
                log.error("watchdog %s: %d invocations in a row failed (last: %s); the watchdog stops", sid,
                          schedule.failures, res.error_text())
                del self.schedules[sid]
        destined = self.destined.pop(res.request_id, None)
        fn = self.functions.get(destined[0]) if destined else None
        target = fn and (fn.on_success if res.ok else fn.on_failure)
        if not target:
            return
        if target not in self.functions:
            log.error("the destination %s of function %s is not deployed: the end of %s is not sent",
                      target, fn.key, res.request_id)
            return
        record = coordinator.destination_record(res.request_id, f"arn:lambdamr:local:function:{fn.key}", destined[1],
                                    res.ok, res.payload if res.ok else res.error)
        self._invoke(self.functions[target], record)

    def _fire_schedules(self) -> None:
        now = time.monotonic()
        for sid, schedule in list(self.schedules.items()):
            if now < schedule.next_at:
                continue
            fn = self.functions.get(schedule.function)
            if fn is None:
                log.warning("watchdog %s: function %s is gone; the watchdog stops", sid, schedule.function)
                del self.schedules[sid]
                continue
            schedule.next_at = now + schedule.every_s
            self.scheduled[self._invoke(fn, schedule.event)] = sid

    # -- connections (one thread each)
    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.geteuid():
                log.warning("refused a connection from uid %d", uid)
                with contextlib.suppress(OSError):
                    send_message(conn, {"ok": False, "error": f"uid {uid} may not use this service "
                                                              f"(it belongs to uid {os.geteuid()})"})
                return
            while True:
                try:
                    request = recv_message(conn)
                except (EOFError, OSError, ValueError, ServiceError):
                    return
                try:
                    reply = self._dispatch(request)
                except (ServiceError, EventError, ValueError, KeyError, TypeError, OSError) as err:
                    reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
                try:
                    send_message(conn, reply)
                except OSError:
                    return
                if request.get("op") == "shutdown":  # answered first: then the main loop stops
                    self.stopping = True
                    return

    def _dispatch(self, request: dict) -> dict:
        op = request.get("op")
        if op == "shutdown":
            return {"ok": True, "pid": os.getpid()}
        if op == "wait":
            return {"ok": True, "outcomes": self._wait(request["request_ids"], float(request.get("timeout", 0)))}
        if op in ("health", "deploy", "invoke", "cancel", "stats", "put_event_invoke_config", "schedule"):
            future: Future = Future()
            self.requests.put((request, future))
            return future.result()
        raise ServiceError(f"unknown request {op!r}: one of health, deploy, invoke, wait, cancel, stats, "
                           f"put_event_invoke_config, schedule, shutdown")

    def _wait(self, request_ids: list[str], timeout: float) -> dict[str, dict]:
        """The outcomes of those of ``request_ids`` that ended (``unknown`` for ids this
        service never ran), waiting up to ``timeout`` for one."""
        end = time.monotonic() + max(0.0, min(timeout, 60.0))
        with self.changed:
            while True:
                found = {rid: self.outcomes[rid] for rid in request_ids if rid in self.outcomes}
                found.update({rid: {"unknown": True} for rid in request_ids
                              if rid not in found and rid not in self.owner})
                remaining = end - time.monotonic()
                if found or remaining <= 0:
                    return found
                self.changed.wait(remaining)

    # -- requests the main thread answers
    def _handle_requests(self) -> None:
        while True:
            try:
                request, future = self.requests.get_nowait()
            except queue.Empty:
                return
            self._answer(request, future)

    def _answer(self, request: dict, future: Future) -> None:
        try:
            future.set_result(getattr(self, f"_op_{request['op']}")(request))
        except Exception as err:  # the client gets the error; the service keeps serving
            future.set_result({"ok": False, "error": f"{type(err).__name__}: {err}"})

    def _op_health(self, request: dict) -> dict:
        return {"ok": True, "pid": os.getpid(), "uid": os.geteuid(), "workers": self.workers}

    def _op_deploy(self, request: dict) -> dict:
        self.last_active = time.monotonic()
        pkg = request["package"]
        package = CodePackage(path=str(pkg["path"]), sha256=str(pkg["sha256"]), size=int(pkg["size"]),
                              modules=tuple(pkg["modules"]), language=str(pkg.get("language", "python")))
        if package.language not in LANGUAGES:
            raise ServiceError(f"unknown handler language {package.language!r}: one of {', '.join(LANGUAGES)}")
        with open(package.path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        if digest != package.sha256:
            raise ServiceError(f"{package.path} has SHA-256 {digest}, not the deployed {package.sha256}")
        memory_mb, timeout_s, tracing = int(request["memory_mb"]), float(request["timeout_s"]), bool(request["tracing"])
        kind = str(request.get("kind", "tasks"))
        if kind not in FUNCTION_KINDS:
            raise ServiceError(f"unknown function kind {kind!r}: one of {', '.join(FUNCTION_KINDS)}")
        key = function_key(package.sha256, memory_mb, timeout_s, tracing) + ("" if kind == "tasks" else f"-{kind}")
        fn = self.functions.get(key)
        if fn is None:
            self._evict()
            fn = _Function(key, LocalRuntime(workers=self.workers, memory_mb=memory_mb, timeout_s=timeout_s,
                                             tracing=tracing, handlers=FUNCTION_KINDS[kind]), kind=kind)
            self.functions[key] = fn
        self.functions.move_to_end(key)
        summary = fn.runtime.deploy(package)
        return {"ok": True, "function": key, "workers": self.workers, "summary": summary}

    def _evict(self) -> None:
        needed = {f.on_success for f in self.functions.values()} | {f.on_failure for f in self.functions.values()}
        needed |= {s.function for s in self.schedules.values()}
        idle = [fn for fn in self.functions.values() if not fn.running and fn.key not in needed]
        while len(self.functions) >= MAX_FUNCTIONS and idle:
            fn = idle.pop(0)
            fn.runtime.close()
            del self.functions[fn.key]

    def _op_invoke(self, request: dict) -> dict:
        fn = self._deployed(request["function"])
        return {"ok": True, "status": 202, "request_id": self._invoke(fn, request["event"], request.get("trace_header"))}

    def _invoke(self, fn: _Function, event: dict, trace_header: str | None = None) -> str:
        if fn.kind == "tasks":
            rid = fn.runtime.invoke(task_from_event(event), trace_header)
        else:
            rid = fn.runtime.invoke_event(fn.kind, event)
        with self.changed:
            fn.running.add(rid)
            self.owner[rid] = fn.key
        if fn.on_success or fn.on_failure:
            self.destined[rid] = (fn.key, event)
        self.last_active = time.monotonic()
        self.invocations += 1
        return rid

    def _op_put_event_invoke_config(self, request: dict) -> dict:
        """Lambda's ``put_function_event_invoke_config`` with a ``DestinationConfig``: where the
        ends of ``function``'s invocations go (a deployed function's key, or None)."""
        fn = self._deployed(request["function"])
        targets = {name: request.get(name) for name in ("on_success", "on_failure")}
        for target in targets.values():
            if target is not None:
                self._deployed(target)
        fn.on_success, fn.on_failure = targets["on_success"], targets["on_failure"]
        return {"ok": True, "function": fn.key, **targets}

    def _op_schedule(self, request: dict) -> dict:
        """A watchdog: invoke ``function`` with ``event`` every ``every_s`` seconds (the first
        time after one interval) until an invocation answers ``{"finished": true}``."""
        fn = self._deployed(request["function"])
        every_s = float(request["every_s"])
        if every_s <= 0:
            raise ServiceError(f"a schedule's every_s must be positive, got {every_s}")
        sid = hashlib.sha256(json.dumps([fn.key, request["event"]], sort_keys=True).encode()).hexdigest()[:16]
        self.schedules[sid] = _Schedule(fn.key, request["event"], every_s, time.monotonic() + every_s)
        return {"ok": True, "schedule": sid}

    def _deployed(self, key: object) -> _Function:
        fn = self.functions.get(str(key))
        if fn is None:
            raise ServiceError(f"function {key!r} is not deployed (the service restarted?): deploy it again")
        return fn

    def _op_cancel(self, request: dict) -> dict:
        rid = str(request["request_id"])
        key = self.owner.get(rid)
        if key is not None and key in self.functions:
            fn = self.functions[key]
            fn.runtime.cancel(rid)
            self._record(fn, [InvocationResult(rid, False, error={
                "errorType": CANCELLED, "errorMessage": f"RequestId: {rid} cancelled by a client"})])
        return {"ok": True, "cancelled": key is not None}

    def _op_stats(self, request: dict) -> dict:
        return {
            "ok": True, "pid": os.getpid(), "dir": str(self.dir), "workers": self.workers,
            "idle_timeout_s": self.idle_timeout_s, "uptime_s": round(time.time() - self.started, 1),
            "invocations": self.invocations,
            "in_flight": sum(len(fn.running) for fn in self.functions.values()),
            "functions": {
                key: {"version": fn.runtime.package.version if fn.runtime.package else None,
                      "memory_mb": fn.runtime.memory_mb, "timeout_s": fn.runtime.timeout_s,
                      "in_flight": len(fn.running), "cold_starts": fn.runtime.cold_starts,
                      "workers_replaced": fn.runtime.workers_replaced}
                for key, fn in self.functions.items()
            },
            "worker_pids": sorted(pid for fn in self.functions.values() for pid in fn.runtime.worker_pids()),
        }


def _package_dict(package: CodePackage) -> dict:
    return {"path": package.path, "sha256": package.sha256, "size": package.size, "modules": list(package.modules),
            "language": package.language}


def _result_to_dict(res: InvocationResult) -> dict:
    return {"ok": res.ok, "payload": res.payload, "error": res.error, "duration_ms": res.duration_ms,
            "billed_ms": res.billed_ms, "init_ms": res.init_ms, "cold_start": res.cold_start,
            "max_memory_mb": res.max_memory_mb}


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux); None where SO_PEERCRED is missing."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# -- clients -----------------------------------------------------------------------------
class ServiceClient:
    """One connection to the service of this user."""

    def __init__(self, directory: Path | None = None, timeout_s: float = 120.0) -> None:
        self.dir = Path(directory) if directory is not None else service_dir()
        check_private(self.dir, "dir")
        sock_path = self.dir / SOCKET
        check_private(sock_path, "socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        try:
            self.sock.connect(str(sock_path))
        except OSError:
            self.sock.close()
            raise

    def request(self, op: str, **fields: object) -> dict:
        send_message(self.sock, {"op": op, **fields})
        try:
            reply = recv_message(self.sock)
        except EOFError as err:
            raise ServiceError(f"the lambdamr service in {self.dir} closed the connection during {op} "
                               f"(it stopped or was killed; see {self.dir / LOG_FILE})") from err
        if not reply.get("ok"):
            raise ServiceError(f"the lambdamr service in {self.dir} refused {op}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def running_pid(directory: Path) -> int | None:
    """The pid of the live daemon of ``directory``; None (removing what a dead one left) if none.

    A live daemon holds the directory's lock; a pid file or socket without it is stale.
    """
    lock_path = directory / LOCK_FILE
    if not lock_path.exists():
        return None
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int((directory / PID_FILE).read_text().strip())
            except (FileNotFoundError, ValueError):
                return -1  # starting up: it holds the lock, and writes the pid file next
        fcntl.flock(fh, fcntl.LOCK_UN)
    for name in (SOCKET, PID_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
    return None


def connect(directory: Path | None = None, *, start: bool = True, workers: int | None = None,
            idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> ServiceClient:
    """A client of the running service, starting it first when ``start`` (and it is not running)."""
    directory = prepare_dir(Path(directory) if directory is not None else service_dir())
    try:
        return ServiceClient(directory)
    except (FileNotFoundError, ConnectionRefusedError):
        if not start:
            raise ServiceError(f"no lambdamr service runs in {directory} (start it: lambdamr service start)") from None
    with open(directory / START_LOCK, "a") as lock:  # one client starts it; the others wait
        os.chmod(directory / START_LOCK, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        end = time.monotonic() + START_TIMEOUT_S
        launched = 0
        while True:
            try:
                return ServiceClient(directory)
            except (FileNotFoundError, ConnectionRefusedError) as err:
                # A daemon that just died may hold its lock a moment longer: look again each time.
                if running_pid(directory) is None:
                    if launched == 2:
                        raise ServiceError(f"the lambdamr service exits as it starts; see "
                                           f"{directory / LOG_FILE}") from err
                    _spawn(directory, workers, idle_timeout_s)
                    launched += 1
                if time.monotonic() > end:
                    raise ServiceError(f"the lambdamr service did not start within {START_TIMEOUT_S:.0f} s; "
                                       f"see {directory / LOG_FILE}") from err
                time.sleep(0.05)


def _spawn(directory: Path, workers: int | None, idle_timeout_s: float) -> None:
    """Start the daemon detached: its own session, no terminal, output to the service log, and
    not a child of this process (it forks once more), so no client has to reap it."""
    args = [sys.executable, "-m", __name__, "serve", "--daemonize", "--dir", str(directory),
            "--idle-timeout", str(idle_timeout_s)]
    if workers:
        args += ["--workers", str(workers)]
    fd = os.open(directory / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        launcher = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                    start_new_session=True, close_fds=True, cwd="/")
    finally:
        os.close(fd)
    if launcher.wait(timeout=START_TIMEOUT_S) != 0:
        raise ServiceError(f"the lambdamr service could not be launched (exit status {launcher.returncode}); "
                           f"see {directory / LOG_FILE}")


def stop_service(directory: Path | None = None, timeout_s: float = 30.0) -> int | None:
    """Ask the running service to stop, and wait until it has; its pid, or None if none ran."""
    directory = Path(directory) if directory is not None else service_dir()
    if not directory.exists() or running_pid(directory) is None:
        return None
    with ServiceClient(directory) as client:
        pid = int(client.request("shutdown")["pid"])
    end = time.monotonic() + timeout_s
    while running_pid(directory) is not None:
        if time.monotonic() > end:
            raise ServiceError(f"the lambdamr service {pid} did not stop within {timeout_s:.0f} s")
        time.sleep(0.05)
    return pid


class ServiceRuntime(Runtime):
    """Runs invocations on the local function service (started on demand).

    Like ``AwsRuntime``: ``invoke`` is an asynchronous invocation, ``poll`` reports what the
    status records say, and ``close`` stops watching (invocations already accepted run to
    completion). The service also reports what leaves no record: a timeout, running out of
    memory, a crashed worker, a cancellation.
    """

    name = "service"

    def __init__(self, directory: Path | str | None = None, *, memory_mb: int = 1536,
                 timeout_s: float = 900.0, tracing: bool = False, workers: int | None = None,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self.tracing = tracing
        self.workers = workers
        self.idle_timeout_s = idle_timeout_s
        self.function: str | None = None
        self.deployment: dict | None = None
        self._client: ServiceClient | None = None
        self._capacity: int | None = None
        self._in_flight: dict[str, TaskSpec] = {}

    def _request(self, op: str, **fields: object) -> dict:
        if self._client is None:
            self._client = connect(self.directory, workers=self.workers, idle_timeout_s=self.idle_timeout_s)
        return self._client.request(op, **fields)

    @property
    def capacity(self) -> int:
        if self._capacity is None:
            self._capacity = int(self._request("health")["workers"])
        return self._capacity

    def deploy(self, package: CodePackage) -> dict:
        reply = self._deploy(package, "tasks", self.memory_mb, self.timeout_s)
        self.function = reply["function"]
        self._capacity = int(reply["workers"])
        self.deployment = {**reply["summary"], "runtime": self.name, "function": self.function,
                           "package": _package_dict(package), "service_dir": str(self._client.dir)}
        return self.deployment

    def _deploy(self, package: CodePackage, kind: str, memory_mb: int, timeout_s: float) -> dict:
        return self._request("deploy", package=_package_dict(package), memory_mb=memory_mb, timeout_s=timeout_s,
                             tracing=self.tracing, kind=kind)

    def deploy_coordinator(self, package: CodePackage, watchdog_event: dict, every_s: float) -> dict:
        """The coordinator as a function of the service; the tasks' ends go to it (emulated
        destinations), and a timer invokes it every ``every_s`` until its job finished."""
        if self.function is None:
            raise RuntimeError("deploy() the job's code package before its coordinator")
        target = self._deploy(package, coordinator.KIND, coordinator.MEMORY_MB, coordinator.TIMEOUT_S)["function"]
        self._request("put_event_invoke_config", function=self.function, on_success=target, on_failure=target)
        schedule = self._request("schedule", function=target, event=watchdog_event, every_s=every_s)["schedule"]
        deployed = {"function": target, "package": _package_dict(package), "watchdog": schedule,
                    "watchdog_every_s": every_s}
        self.deployment = {**(self.deployment or {}), "coordinator": deployed}
        return deployed

    def attach(self, deployment: dict) -> None:
        """Reach the functions another process deployed: deploy them again (the same code and
        configuration: the service keeps them; a restarted service gets them back)."""
        self.directory = Path(deployment["service_dir"])
        self.deploy(CodePackage(**{**deployment["package"], "modules": tuple(deployment["package"]["modules"])}))

    def invoke(self, spec: TaskSpec, trace_header: str | None = None) -> str:
        if self.function is None:
            raise RuntimeError("deploy() a code package before invoking")
        reply = self._request("invoke", function=self.function, event=spec.to_event(), trace_header=trace_header)
        if reply.get("status") != 202:
            raise ServiceError(f"asynchronous invoke returned status {reply.get('status')}, not 202")
        self._in_flight[reply["request_id"]] = spec
        return reply["request_id"]

    def poll(self, timeout: float) -> list[InvocationResult]:
        end = time.monotonic() + max(0.0, timeout)
        while self._in_flight:
            ended = self._request("wait", request_ids=list(self._in_flight),
                                  timeout=max(0.0, end - time.monotonic()))["outcomes"]
            if ended:
                return self._outcomes(ended)
            if time.monotonic() >= end:
                break
        return []

    def _outcomes(self, ended: dict[str, dict]) -> list[InvocationResult]:
        """The results of the invocations that ended: what their status records say, else
        what the service saw (a failure no handler recorded)."""
        specs = {rid: self._in_flight.pop(rid) for rid in ended}
        listing = list_status_dirs(specs.values())
        results = []
        for rid, spec in specs.items():
            seen = ended[rid]
            outcome = outcome_from_records(rid, spec, listing)
            if outcome is None and seen.get("unknown"):
                outcome = InvocationResult(rid, False, error={
                    "errorType": "Runtime.Lost",
                    "errorMessage": f"RequestId: {rid} the lambdamr service no longer knows this invocation "
                                    f"(it was restarted) and no status record exists"})
            elif outcome is None:
                outcome = InvocationResult(rid, bool(seen["ok"]), payload=seen.get("payload"), error=seen.get("error"))
            if not seen.get("unknown"):  # the service measured the invocation itself
                outcome.duration_ms = float(seen.get("duration_ms") or outcome.duration_ms)
                outcome.billed_ms = int(seen.get("billed_ms") or outcome.billed_ms)
                outcome.init_ms = float(seen.get("init_ms") or 0.0)
                outcome.cold_start = bool(seen.get("cold_start"))
                outcome.max_memory_mb = max(outcome.max_memory_mb, float(seen.get("max_memory_mb") or 0.0))
            results.append(outcome)
        return results

    def cancel(self, request_id: str) -> None:
        if self._in_flight.pop(request_id, None) is not None:
            self._request("cancel", request_id=request_id)

    def close(self) -> None:
        """Stop watching; invocations the service accepted run to completion, as on Lambda."""
        self._in_flight.clear()
        if self._client is not None:
            self._client.close()
            self._client = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_lambdamr.engine.runtimes.service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service in the foreground")
    serve.add_argument("--dir", default=None, help=f"its directory (default: ${DIR_ENV} or the per-user one)")
    serve.add_argument("--workers", type=int, default=None, help="warm workers per function (default: CPUs)")
    serve.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="S",
                       help="exit after S seconds with nothing to do")
    serve.add_argument("--daemonize", action="store_true", help="fork, and serve from the child")
    args = parser.parse_args(argv)
    if args.daemonize and os.fork() > 0:
        os._exit(0)  # the launcher's parent reaps it; init adopts the daemon
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    directory = Path(args.dir) if args.dir else service_dir()
    return Service(directory, workers=args.workers, idle_timeout_s=args.idle_timeout).serve()


if __name__ == "__main__":
    sys.exit(main())
