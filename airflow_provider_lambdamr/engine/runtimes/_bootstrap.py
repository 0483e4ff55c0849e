"""The local runtime's worker: one persistent process, like a warm Lambda container.

Run as a script (``python -I _bootstrap.py FD CODE_DIR HANDLER...``) so that it imports
nothing from the driver's environment but the standard library and the packages a Lambda
Python runtime also has: the handlers come from the extracted zip, first on ``sys.path``.
Or, started before its job is known (``python -I _bootstrap.py FD --standby``, see
``airflow_provider_lambdamr.prestart``), it imports pyarrow and waits for the code. Or, as a
zygote (``python -I _bootstrap.py --zygote CTRL_FD FD,FD,...``), it imports pyarrow once,
forks a standby worker for each FD, and exits; the workers wait to become its parent's children
(the parent is their subreaper) before they go on.
Messages are length-prefixed JSON bytes over a socket; nothing is pickled.

A worker never outlives its driver, and never runs an invocation past its deadline, even
when the driver is gone or stuck: see ``Watchdog``.
"""

import ctypes
import importlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback

#: The environment variable naming the driver's pid (the worker's expected parent).
PARENT_PID_ENV = "LAMBDAMR_PARENT_PID"
#: Set (to "1") when the driver spawned the worker from its main thread: see ``die_with_parent``.
PDEATHSIG_ENV = "LAMBDAMR_PDEATHSIG"
#: Exit status of a worker that ended its own invocation at the deadline.
TIMEOUT_EXIT = 124
#: Exit status of a worker whose driver is gone.
ORPHAN_EXIT = 125
#: ``_bootstrap.py --exec PROGRAM ARGS...``: become another language's worker (see ``exec_worker``).
EXEC_FLAG = "--exec"
#: ``_bootstrap.py FD --standby``: start, import the modules ``LAMBDAMR_STANDBY_IMPORTS`` names
#: (comma-separated), then wait for the job's code (see ``standby``).
STANDBY_FLAG = "--standby"
STANDBY_IMPORTS_ENV = "LAMBDAMR_STANDBY_IMPORTS"
#: ``_bootstrap.py --zygote CTRL_FD FD,FD,...``: import once, fork a standby worker per FD (see ``zygote``).
ZYGOTE_FLAG = "--zygote"
#: How long a forked worker waits for the zygote's exit to make it its driver's child.
REPARENT_PATIENCE_S = 10.0
#: How often the watchdog checks that the driver is still the worker's parent.
PARENT_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Exit at once if the driver ``parent_pid`` is gone; on Linux, be SIGKILLed when it goes.

    PR_SET_PDEATHSIG fires when the *thread* that forked the worker exits, so the driver
    asks for it only when it spawns from its main thread; the watchdog's parent check covers
    the other cases and systems without prctl.
    """
    if os.environ.get(PDEATHSIG_ENV) == "1" and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        except (OSError, AttributeError) as err:
            print(f"lambdamr worker: no parent-death signal ({err}); relying on the watchdog",
                  file=sys.stderr)
    # The driver may have died before prctl: then the worker was already reparented.
    if os.getppid() != parent_pid:
        os._exit(ORPHAN_EXIT)


class Watchdog(threading.Thread):
    """Ends the worker when its driver is gone, or when an invocation passes its deadline.

    The main thread reads the socket only between invocations, so only a thread notices
    these during one. Both end the process with ``os._exit``: nothing (no status record, no
    buffered output) is written after the driver died or after the deadline.
    """

    def __init__(self, parent_pid: int) -> None:
        super().__init__(name="lambdamr-watchdog", daemon=True)
        self.parent_pid = parent_pid
        self._deadline: float | None = None
        self._changed = threading.Event()

    def start_invocation(self, deadline_s: float) -> None:
        self._deadline = deadline_s
        self._changed.set()

    def end_invocation(self) -> None:
        self._deadline = None
        self._changed.set()

    def run(self) -> None:
        while True:
            deadline = self._deadline
            wait_s = PARENT_POLL_S
            if deadline is not None:
                wait_s = min(wait_s, max(0.0, deadline - time.time()))
            if self._changed.wait(wait_s):
                self._changed.clear()
                continue
            if os.getppid() != self.parent_pid:
                os._exit(ORPHAN_EXIT)
            if deadline is not None and deadline == self._deadline and time.time() >= deadline:
                print(f"lambdamr worker: invocation passed its deadline; exiting with status "
                      f"{TIMEOUT_EXIT}", file=sys.stderr, flush=True)
                os._exit(TIMEOUT_EXIT)


class Channel:
    """The worker's end of the driver's ``multiprocessing.connection.Connection``: the same
    frames (a 4-byte big-endian length, or -1 and an 8-byte length above 2 GiB, then the
    bytes; the Node.js worker speaks them too), without importing ``multiprocessing``, a
    sizeable share of a worker's start-up."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        if n > 16384:
            self._sock.sendall(header)
            self._sock.sendall(data)
        else:
            self._sock.sendall(header + data)

    def recv_bytes(self) -> bytes:
        (n,) = struct.unpack("!i", self._exactly(4))
        if n == -1:
            (n,) = struct.unpack("!Q", self._exactly(8))
        return self._exactly(n)

    def _exactly(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the driver closed the connection")
            got += k
        return bytes(buf)


class LambdaContext:
    """The attributes and method of the context object Lambda passes to a handler."""

    def __init__(self, request: dict) -> None:
        self.aws_request_id = request["request_id"]
        self.function_name = request["function_name"]
        self.function_version = request.get("function_version", "$LATEST")
        self.memory_limit_in_mb = str(request["memory_mb"])
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{self.function_name}"
        )
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline_ms = request["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _error(err: BaseException, error_type: str | None = None) -> dict:
    message = str(err)
    if isinstance(err, SystemExit):
        message = f"the handler called sys.exit({err.code!r})"
    elif isinstance(err, KeyboardInterrupt):
        message = message or "KeyboardInterrupt raised by the handler"
    return {
        "errorType": error_type or type(err).__name__,
        "errorMessage": message,
        "stackTrace": traceback.format_exception(type(err), err, err.__traceback__)[-20:],
    }


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def exec_worker(argv: list[str]) -> None:
    """Replace this process with another language's worker (a Node.js one), which then dies
    with the driver too: the parent-death signal survives exec, and the worker checks its
    parent itself (``LAMBDAMR_PARENT_PID``)."""
    die_with_parent(int(os.environ.get(PARENT_PID_ENV) or os.getppid()))
    os.execv(argv[0], argv)


def _shadowed(code_dir: str, modules: set[str]) -> bool:
    """Whether ``code_dir`` ships its own copy of any of the top-level ``modules`` (a
    package, a ``.py`` file or an extension module), which must win over one imported before."""
    try:
        names = os.listdir(code_dir)
    except OSError:
        return False
    return any(name.partition(".")[0] in modules for name in names)


def standby_imports() -> tuple[set[str], float]:
    """Import the modules ``STANDBY_IMPORTS_ENV`` names (and take it out of the environment):
    the top-level name of every module they imported, not only of those named (a fresh worker
    imports them all with the code first on its path), and the milliseconds it took."""
    started = time.time()
    before = set(sys.modules)
    for name in filter(None, os.environ.pop(STANDBY_IMPORTS_ENV, "").split(",")):
        try:
            importlib.import_module(name)
        except Exception:  # the job's own import reports it, as in a fresh worker
            continue
    return {name.partition(".")[0] for name in set(sys.modules) - before}, (time.time() - started) * 1000


def zygote(ctrl_fd: int, fds: list[int], parent_pid: int) -> tuple[int, set[str], float]:
    """Import once for all the standby workers, fork one per socket in ``fds``, and exit. In a
    forked worker, return its socket, what was imported and how long it took, once the worker
    is ``parent_pid``'s child.

    The zygote runs no thread of its own before it forks (the watchdog starts in each worker).
    A forked worker starts its own session (the driver kills a worker's process group),
    writes ``INDEX:PID `` (its socket's place in ``fds``, its pid) on ``ctrl_fd`` itself, so
    that the driver knows it even if the zygote dies right after the fork, waits for the
    zygote's exit to make it the driver's child (the driver is the subreaper of its
    descendants), and exits if another process became its parent: the driver is gone."""
    die_with_parent(parent_pid)
    imported, done_ms = standby_imports()
    me = os.getpid()
    for index, fd in enumerate(fds):
        if os.fork() == 0:
            os.setsid()
            try:
                os.write(ctrl_fd, f"{index}:{os.getpid()} ".encode())
            except OSError:  # the driver gave up on the zygote: it will not know this worker
                os._exit(ORPHAN_EXIT)
            for other in (ctrl_fd, *fds):
                if other != fd:
                    os.close(other)
            deadline = time.monotonic() + REPARENT_PATIENCE_S
            while os.getppid() == me:
                if time.monotonic() > deadline:
                    os._exit(ORPHAN_EXIT)
                time.sleep(0.0005)
            return fd, imported, done_ms
    os._exit(0)


def standby(conn: Channel, fd: int, imported: set[str] | None = None, done_ms: float = 0.0
            ) -> tuple[str, list[str], float]:
    """A worker started before its job was known: import what is named (unless a zygote did,
    ``imported``), then wait for ``{"type": "init", "code_dir", "handlers", "env"}``, whose
    environment it adds to its own.

    Returns the code directory, the handlers and the milliseconds spent importing (the part
    of the init phase done in advance). If the code ships its own copy of a module imported
    here, the worker replaces itself (same pid, same socket) with a fresh interpreter that
    imports nothing in advance, so the job's copy is the one it gets. The driver closing the
    socket instead (it needs no more workers) ends the worker."""
    if imported is None:
        imported, done_ms = standby_imports()
    try:
        message = json.loads(conn.recv_bytes())
    except (EOFError, OSError):
        os._exit(0)
    if message.get("type") != "init":
        raise ValueError(f"a standby worker expects an init message first, got {message.get('type')!r}")
    code_dir, handlers = str(message["code_dir"]), [str(h) for h in message["handlers"]]
    os.environ.update({str(k): str(v) for k, v in (message.get("env") or {}).items()})
    if _shadowed(code_dir, imported):
        os.set_inheritable(fd, True)
        os.execv(sys.executable, [sys.executable, "-I", os.path.abspath(__file__), str(fd), code_dir, *handlers])
    return code_dir, handlers, done_ms


def main() -> None:
    if sys.argv[1] == EXEC_FLAG:
        exec_worker(sys.argv[2:])
    parent_pid = int(os.environ.get(PARENT_PID_ENV) or os.getppid())  # unset when run by hand
    imported, init_done_ms = None, 0.0
    if sys.argv[1] == ZYGOTE_FLAG:
        fd, imported, init_done_ms = zygote(int(sys.argv[2]), [int(f) for f in sys.argv[3].split(",")], parent_pid)
        sys.argv[1:] = [str(fd), STANDBY_FLAG]
    die_with_parent(parent_pid)
    watchdog = Watchdog(parent_pid)
    watchdog.start()
    fd = int(sys.argv[1])
    conn = Channel(fd)
    if sys.argv[2:] == [STANDBY_FLAG]:
        code_dir, handler_names, init_done_ms = standby(conn, fd, imported, init_done_ms)
    else:
        code_dir, handler_names, init_done_ms = sys.argv[2], sys.argv[3:], 0.0
    sys.path.insert(0, code_dir)
    os.chdir(code_dir)
    logging.basicConfig(
        level=os.environ.get("LAMBDAMR_WORKER_LOG_LEVEL", "WARNING"),
        format="[%(levelname)s] %(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    started = time.time()
    handlers = {}
    init_error = None
    for name in handler_names:
        module_name, _, attr = name.rpartition(".")
        try:
            handlers[name] = getattr(importlib.import_module(module_name), attr)
        except Exception as err:
            init_error = _error(err, "Runtime.ImportModuleError")
            break
    init_ms = init_done_ms + (time.time() - started) * 1000
    conn.send_bytes(json.dumps({"type": "ready", "init_ms": init_ms, "pid": os.getpid()}).encode())
    cold = True
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        t0 = time.time()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        # Lambda sets the invocation's trace header in the environment; so do we.
        if request.get("trace_header"):
            os.environ["_X_AMZN_TRACE_ID"] = request["trace_header"]
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        reply = {"type": "result", "request_id": request["request_id"], "cold_start": cold}
        if cold:
            reply["init_ms"] = init_ms
        cold = False
        if init_error is not None:
            reply.update(ok=False, error=init_error)
        else:
            handler = handlers[request["handler"]]
            watchdog.start_invocation(request["deadline_ms"] / 1000)
            try:
                payload = handler(request["event"], LambdaContext(request))
                reply.update(ok=True, payload=payload)
            except BaseException as err:  # SystemExit too: report it, as Lambda's runtime does
                reply.update(ok=False, error=_error(err))
            finally:
                watchdog.end_invocation()
        reply["duration_ms"] = (time.time() - t0) * 1000
        reply["max_memory_mb"] = _peak_rss_mb()
        try:
            data = json.dumps(reply).encode()
        except (TypeError, ValueError) as err:
            data = json.dumps(
                {**{k: v for k, v in reply.items() if k != "payload"}, "ok": False,
                 "error": _error(err, "Runtime.MarshalError")}
            ).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send_bytes(data)


if __name__ == "__main__":
    main()
