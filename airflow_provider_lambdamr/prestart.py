"""The ``lambdamr`` command's entry point: it starts the local runtime's workers first.

A ``lambdamr run`` on the local runtime spends its first 80 ms or so importing the engine,
and each worker about as long again starting Python and importing pyarrow; until now the
workers started only after the engine was imported. This module imports nothing but the
standard library, reads the command line for a hint (``run``, the local runtime, how many
workers, record mode or not), starts that many workers in standby (Python started, pyarrow
imported, no job code yet) and only then imports the CLI. The runtime adopts a standby
worker when it needs one (``claim``) and sends it the job's code; Lambda's init phase, here
split in two, is still one ``init_ms``.

Several workers are started as one: a zygote process imports once, forks the workers and
exits, and they become this process's children (it is their subreaper: see ``become_reaper``),
so two workers cost one interpreter start and one pyarrow import, not two. Only the CLI's
process becomes a subreaper; elsewhere (the tests, the library) each worker starts alone.

The command line is only a hint. The runtime adopts a standby worker only when the worker
was started with exactly the environment the runtime would give a new one (worker count,
thread share, memory pool, the caller's environment) and imported exactly what a new one
would import at init (nothing for a record-mode job); otherwise it stops them all and
starts its own. A job whose code ships its own copy of a module a standby worker imported
(pyarrow) gets a fresh interpreter: the worker replaces itself with one (see
``_bootstrap.standby``). Unclaimed workers are stopped at exit, and die with this process
in any case. ``LAMBDAMR_PRESTART=0`` turns this off.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from lambda_src.function_env import arrow_allocator_env

#: "0": never start workers before the runtime asks for them.
PRESTART_ENV = "LAMBDAMR_PRESTART"
#: The worker script (run as a file: see its docstring).
BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine", "runtimes", "_bootstrap.py")
# These names are _bootstrap's own (it is run as a script and imports nothing of ours;
# importing it here would cost what this module saves): tests/unit/test_prestart.py keeps
# them equal.
STANDBY_FLAG = "--standby"
ZYGOTE_FLAG = "--zygote"
STANDBY_IMPORTS_ENV = "LAMBDAMR_STANDBY_IMPORTS"
PARENT_PID_ENV = "LAMBDAMR_PARENT_PID"
PDEATHSIG_ENV = "LAMBDAMR_PDEATHSIG"
#: What a vectorized job's mapper imports in its init phase (``lambda_src.mapper``).
ARROW_IMPORTS = ("pyarrow", "pyarrow.compute", "pyarrow.csv")
#: The CLI's default runtime (``JobSpec.runtime``; a unit test keeps them equal).
DEFAULT_RUNTIME = "local"


def worker_threads(workers: int) -> int:
    """Threads for each of ``workers`` workers' thread pools: this machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def python_command(*args: str) -> list[str]:
    """The command line of a Python worker: isolated (``-I``: no user site-packages, no
    ``PYTHON*`` variables), the worker script, then ``args``."""
    return [sys.executable, "-I", BOOTSTRAP, *args]


def early_env(given: Mapping[str, str], workers: int) -> dict[str, str]:
    """A local worker's environment, all but what depends on the job's code: ``given`` (the
    driver's environment and the runtime's ``env``) and what the runtime sets for every worker.

    Nothing the job decides may be here: a standby worker starts with this before the job
    is known, and ``LocalRuntime`` sends the rest with the code."""
    return {
        **given,
        "PYTHONDONTWRITEBYTECODE": "1",
        **arrow_allocator_env(os.uname().machine, dict(given)),
        # Arrow's thread pool: the workers' share of this machine's cores (a Lambda function
        # has its own vCPUs), so that W workers do not run W times as many threads as cores.
        "OMP_NUM_THREADS": given.get("OMP_NUM_THREADS") or str(worker_threads(workers)),
        # The worker dies with this process (see _bootstrap.die_with_parent).
        PARENT_PID_ENV: str(os.getpid()),
        PDEATHSIG_ENV: "1" if threading.current_thread() is threading.main_thread() else "0",
    }


def popen(command: Sequence[str], env: Mapping[str, str], *socks: socket.socket) -> subprocess.Popen:
    """Start a worker process (or a zygote) that talks over ``socks`` (its ends of socket pairs)."""
    stderr = sys.stderr
    try:
        stdout = stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stdout = None
    return subprocess.Popen(
        list(command),
        pass_fds=tuple(s.fileno() for s in socks),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        env=dict(env),
        start_new_session=True,
    )


class ForkedProcess:
    """A worker a zygote forked, now this process's child (see ``become_reaper``): what
    ``subprocess.Popen`` offers the runtime (``pid``, ``returncode``, ``poll``, ``wait``,
    ``kill``), by ``os.waitpid``. Like ``Popen``, it never signals a pid it has reaped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.args = [f"<forked worker {pid}>"]
        self.returncode: int | None = None

    def _reaped(self, flags: int) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): Popen says 0 too
            self.returncode = 0
        else:
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode if self.returncode is not None else self._reaped(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            return self._reaped(0)  # type: ignore[return-value]
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: How long ``claim`` waits for a zygote to import and fork before it gives up on it.
ZYGOTE_PATIENCE_S = 120.0


class _Zygote:
    """The process that imports once for several standby workers, forks them and exits; each
    worker it forks writes ``INDEX:PID `` on the control socket first thing."""

    def __init__(self, proc: subprocess.Popen, ctrl: socket.socket, count: int) -> None:
        self.proc, self.ctrl, self.count = proc, ctrl, count
        self.pids: list[int | None] | None = None

    def forked(self, wait: bool = True) -> list[int | None]:
        """The pid of each worker (None for one not forked), once the zygote is done; with
        ``wait=False``, once it is stopped if it is not done."""
        if self.pids is not None:
            return self.pids
        data = bytearray()
        try:
            self._read_reports(data, ZYGOTE_PATIENCE_S if wait else 0)
        except OSError:  # too slow, or not done (wait=False): it forks no more workers
            self.proc.kill()
            # but those it forked report themselves (and close their ends) at once
            with contextlib.suppress(OSError):
                self._read_reports(data, ZYGOTE_PATIENCE_S)
        self.ctrl.close()
        self.proc.wait()  # its workers are this process's children once it is reaped
        _zygote_reaped()
        pids: list[int | None] = [None] * self.count
        for report in data.split():
            index, _, pid = report.partition(b":")
            pids[int(index)] = int(pid)
        self.pids = pids
        return pids

    def _read_reports(self, data: bytearray, timeout: float) -> None:
        """Add to ``data`` what is written on the control socket until its last writer closes
        it (the zygote, and each worker once it reported), waiting ``timeout`` seconds at
        most for each read (raising OSError then: at once with 0 if the zygote is not done)."""
        self.ctrl.settimeout(timeout)
        while chunk := self.ctrl.recv(4096):
            data += chunk


class _Standby:
    __slots__ = ("env", "imports", "index", "proc", "sock", "zygote")

    def __init__(self, proc: subprocess.Popen | ForkedProcess | None, sock: socket.socket, env: dict[str, str],
                 imports: tuple[str, ...], zygote: _Zygote | None = None, index: int = 0) -> None:
        self.proc, self.sock, self.env, self.imports = proc, sock, env, imports
        self.zygote, self.index = zygote, index

    def process(self, wait: bool = True) -> subprocess.Popen | ForkedProcess | None:
        """Its process; for a worker a zygote forks, once forked (None if it was not)."""
        if self.proc is None and self.zygote is not None:
            pid = self.zygote.forked(wait)[self.index]
            self.proc = ForkedProcess(pid) if pid is not None else None
            self.zygote = None
        return self.proc


_standby: list[_Standby] = []
_lock = threading.Lock()
_atexit_registered = False
#: Whether this process is its orphaned descendants' reaper (``become_reaper``).
_reaper = False
#: Zygotes started and not reaped yet: their workers are not this process's children yet.
_unreaped_zygotes = 0
_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_reaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux's
    ``PR_SET_CHILD_SUBREAPER``), so that workers a zygote forks become its children when the
    zygote exits; then ``start`` starts several workers through one zygote. Only until they
    are: once its zygote is reaped (or could not start), this process reaps no orphans (a
    process a job's task leaves behind, a daemon, would otherwise stay its zombie until it
    exits), and later workers start one by one. Only from the main thread, whose exit the
    workers' parent-death signal then follows. Returns whether this process is a reaper."""
    global _reaper
    if not _reaper and sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        _reaper = _set_subreaper(True)
    return _reaper


def _zygote_reaped() -> None:
    """A zygote was reaped (or not started): when none is left, stop being a reaper."""
    global _reaper, _unreaped_zygotes
    _unreaped_zygotes -= 1
    if _reaper and not _unreaped_zygotes:
        _set_subreaper(False)
        _reaper = False


def start(workers: int, env: Mapping[str, str], imports: Sequence[str] = ARROW_IMPORTS) -> None:
    """Start ``workers`` standby workers with ``env`` (see ``early_env``), importing ``imports``:
    through one zygote when this process is their reaper (``become_reaper``), else one by one."""
    global _atexit_registered, _unreaped_zygotes
    env = dict(env)
    started = {**env, STANDBY_IMPORTS_ENV: ",".join(imports)}
    with _lock:
        if not _atexit_registered:
            atexit.register(discard)
            _atexit_registered = True
        if _reaper and workers > 1 and env.get(PDEATHSIG_ENV) == "1":
            pairs = [socket.socketpair() for _ in range(workers)]
            ctrl, ctrl_child = socket.socketpair()
            children = [child for _, child in pairs]
            _unreaped_zygotes += 1
            try:
                proc = popen(python_command(ZYGOTE_FLAG, str(ctrl_child.fileno()),
                                            ",".join(str(c.fileno()) for c in children)),
                             started, ctrl_child, *children)
            except OSError:
                _zygote_reaped()
                for sock in (ctrl, *(parent for parent, _ in pairs)):
                    sock.close()
                return  # the runtime starts its own, and says why if it cannot either
            finally:
                for sock in (ctrl_child, *children):
                    sock.close()
            zygote = _Zygote(proc, ctrl, workers)
            _standby.extend(_Standby(None, parent, env, tuple(imports), zygote, i)
                            for i, (parent, _) in enumerate(pairs))
            return
        for _ in range(workers):
            parent, child = socket.socketpair()
            try:
                proc = popen(python_command(str(child.fileno()), STANDBY_FLAG), started, child)
            except OSError:
                parent.close()
                return
            finally:
                child.close()
            _standby.append(_Standby(proc, parent, env, tuple(imports)))


def claim(env: Mapping[str, str], imports: Sequence[str]
          ) -> tuple[subprocess.Popen | ForkedProcess, socket.socket] | None:
    """A standby worker started with exactly ``env`` that imported exactly ``imports`` (what a
    fresh worker would import at init), still running; else None, and every standby worker is
    stopped (they were all started alike). A worker a zygote forks is waited for."""
    with _lock:
        while _standby:
            standby = _standby.pop(0)
            if standby.env == dict(env) and standby.imports == tuple(imports):
                proc = standby.process()
                if proc is not None and proc.poll() is None:
                    return proc, standby.sock
            _stop(standby)
            _discard_locked()
    return None


def waiting() -> int:
    """How many standby workers wait to be claimed."""
    with _lock:
        return len(_standby)


def discard() -> None:
    """Stop every unclaimed standby worker."""
    with _lock:
        _discard_locked()


def _discard_locked() -> None:
    while _standby:
        _stop(_standby.pop())


def _stop(standby: _Standby) -> None:
    # A standby worker holds nothing worth a graceful exit, and may be mid-import for a while:
    # a zygote not done yet is killed (a worker it forked reads the end of its socket, closed
    # here, and exits).
    standby.sock.close()
    proc = standby.process(wait=False)
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def hint(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[int, bool] | None:
    """(workers, vectorized) when ``argv`` is a ``run`` on the local runtime, else None.

    A hint only, read without the CLI's parser (importing it is what this saves): anything
    it is unsure of (an abbreviated option, ``--config``, help) gives None, and a wrong guess
    costs only the standby workers' start-up, never a different run (see ``claim``)."""
    args = list(argv)
    while args and args[0] in ("-v", "--verbose"):  # the one option before the command
        args.pop(0)
    if environ.get(PRESTART_ENV) == "0" or not args or args.pop(0) != "run":
        return None
    runtime, workers, vectorized = DEFAULT_RUNTIME, None, True
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--runtime", "--workers"):
            if not eq:
                if i + 1 >= len(args):
                    return None
                i += 1
                value = args[i]
            if name == "--runtime":
                runtime = value
            else:
                try:
                    workers = int(value)
                except ValueError:
                    return None
        elif name == "--no-vectorized":
            vectorized = False
        elif name in ("-h", "--help", "--config", "--detach", "--coordinator", "--version"):
            return None
        elif arg == "--":
            break
        elif name.startswith("--") and len(name) > 2 and any(
            full.startswith(name) for full in ("--runtime", "--workers", "--no-vectorized", "--config",
                                               "--detach", "--coordinator", "--help")
        ):
            return None  # an abbreviation argparse would accept
        i += 1
    workers = (os.cpu_count() or 1) if workers is None else workers
    if runtime != "local" or not 1 <= workers <= max_prestart():
        return None  # a large pool starts as before, once the command line is known to be valid
    return workers, vectorized


def max_prestart() -> int:
    """The most workers started ahead of the parser: a typo must not start hundreds."""
    return max(8, 2 * (os.cpu_count() or 1))


def main(argv: Sequence[str] | None = None) -> int:
    """``lambdamr``: start the local runtime's workers if the command will want them, then run it."""
    args = sys.argv[1:] if argv is None else list(argv)
    planned = hint(args, os.environ)
    if planned is not None:
        workers, vectorized = planned
        if workers > 1:
            become_reaper()
        start(workers, early_env(dict(os.environ), workers), ARROW_IMPORTS if vectorized else ())
    from airflow_provider_lambdamr.cli import main as cli_main

    try:
        return cli_main(args)
    finally:
        # The command is done. Its last act, the interpreter's teardown, ran the cyclic garbage
        # collector over every object of some 200 modules (17 ms of each command on this
        # project's VM); nothing waits on those collections, and objects are still freed by
        # reference counting, so files are still flushed and closed.
        gc.freeze()
