"""The ``lambdamr`` command's entry point: it starts the local runtime's workers first.

A ``lambdamr run`` on the local runtime spends its first 80 ms or so importing the engine,
and each worker about as long again starting Python and importing pyarrow; until now the
workers started only after the engine was imported. This module imports nothing but the
standard library, reads the command line for a hint (``run``, the local runtime, how many
workers, record mode or not), starts that many workers in standby (Python started, pyarrow
imported, no job code yet) and only then imports the CLI. The runtime adopts a standby
worker when it needs one (``claim``) and sends it the job's code; Lambda's init phase, here
split in two, is still one ``init_ms``.

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
import gc
import os
import socket
import subprocess
import sys
import threading
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


def popen(command: Sequence[str], child: socket.socket, env: Mapping[str, str]) -> subprocess.Popen:
    """Start a worker process that talks over ``child`` (its end of a socket pair)."""
    stderr = sys.stderr
    try:
        stdout = stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stdout = None
    return subprocess.Popen(
        list(command),
        pass_fds=(child.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        env=dict(env),
        start_new_session=True,
    )


class _Standby:
    __slots__ = ("env", "imports", "proc", "sock")

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, env: dict[str, str],
                 imports: tuple[str, ...]) -> None:
        self.proc, self.sock, self.env, self.imports = proc, sock, env, imports


_standby: list[_Standby] = []
_lock = threading.Lock()
_atexit_registered = False


def start(workers: int, env: Mapping[str, str], imports: Sequence[str] = ARROW_IMPORTS) -> None:
    """Start ``workers`` standby workers with ``env`` (see ``early_env``), importing ``imports``."""
    global _atexit_registered
    with _lock:
        for _ in range(workers):
            parent, child = socket.socketpair()
            try:
                proc = popen(python_command(str(child.fileno()), STANDBY_FLAG), child,
                             {**env, STANDBY_IMPORTS_ENV: ",".join(imports)})
            except OSError:
                parent.close()
                return  # the runtime starts its own, and says why if it cannot either
            finally:
                child.close()
            _standby.append(_Standby(proc, parent, dict(env), tuple(imports)))
        if not _atexit_registered:
            atexit.register(discard)
            _atexit_registered = True


def claim(env: Mapping[str, str], imports: Sequence[str]) -> tuple[subprocess.Popen, socket.socket] | None:
    """A standby worker started with exactly ``env`` that imported exactly ``imports`` (what a
    fresh worker would import at init), still running; else None, and every standby worker is
    stopped (they were all started alike)."""
    with _lock:
        while _standby:
            standby = _standby.pop(0)
            if standby.env == dict(env) and standby.imports == tuple(imports) and standby.proc.poll() is None:
                return standby.proc, standby.sock
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
    # A standby worker holds nothing worth a graceful exit, and may be mid-import for a while.
    standby.sock.close()
    if standby.proc.poll() is None:
        standby.proc.kill()
    standby.proc.wait()


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
