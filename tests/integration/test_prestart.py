"""Workers started before the engine is imported (airflow_provider_lambdamr.prestart): adopted
only when started exactly as the runtime would start them, never left behind, and never
hiding a module the job's code ships."""

from __future__ import annotations

import contextlib
import json
import os
import site
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from airflow_provider_lambdamr import prestart
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from tests.conftest import FIXTURES
from tests.helpers import read_rows

PATIENCE_S = 60


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _gone(pids) -> bool:
    pids = list(pids)
    deadline = time.monotonic() + PATIENCE_S
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def no_standby():
    prestart.discard()
    yield
    prestart.discard()


@pytest.fixture(params=["zygote", "one by one"])
def mode(request, monkeypatch):
    """Standby workers forked by one zygote (this process their subreaper, as the CLI's is),
    or started one by one."""
    if request.param == "zygote":
        if not sys.platform.startswith("linux"):
            pytest.skip("a zygote's workers need Linux's PR_SET_CHILD_SUBREAPER")
        monkeypatch.setattr(prestart, "_reaper", False)
        assert prestart.become_reaper()
        try:
            yield request.param
        finally:
            assert prestart._set_subreaper(False)
    else:
        monkeypatch.setattr(prestart, "_reaper", False)
        yield request.param


def _standby_pids() -> list[int]:
    """The standby workers' pids (a zygote's, once it forked them)."""
    return [s.process().pid for s in prestart._standby]


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _run(tmp_path: Path, rt: LocalRuntime, job: str = "userjobs.arrowinit:Vectorized") -> list[list[str]]:
    from airflow_provider_lambdamr.engine.driver import Driver
    from airflow_provider_lambdamr.engine.spec import JobSpec

    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    spec = JobSpec(job=job, inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   split_size=40, partitions=1)
    with rt:
        Driver(spec, rt).run()
    return read_rows(str(tmp_path / "out"))


def test_the_runtime_adopts_workers_started_as_it_would_start_them(tmp_path, fixture_jobs_path, no_standby, mode):
    prestart.start(2, prestart.early_env(dict(os.environ), 2))
    started = _standby_pids()
    assert len(set(started)) == 2
    # a zygote's workers are this process's children, each the leader of its own session
    # (the runtime kills a worker's process group), forked from the one that imported
    assert {_ppid(p) for p in started} == {os.getpid()}
    assert all(os.getsid(p) == p for p in started)
    forked = [b"--zygote" in Path(f"/proc/{p}/cmdline").read_bytes() for p in started]
    assert forked == [mode == "zygote"] * 2
    rt = LocalRuntime(workers=2)
    rows = _run(tmp_path, rt)
    assert rt.adopted == 2 and prestart.waiting() == 0
    # the tasks ran in the standby processes, which had imported pyarrow before the job's code
    assert {int(pid) for pid, _ in rows} <= set(started)
    assert {value for _, value in rows} == {"true"}
    assert _gone(started)


@pytest.mark.parametrize("differs", ["threads", "workers", "environment"])
def test_workers_started_otherwise_are_stopped_and_fresh_ones_started(tmp_path, fixture_jobs_path, no_standby,
                                                                      monkeypatch, differs, mode):
    env = prestart.early_env(dict(os.environ), 2)
    if differs == "threads":
        env["OMP_NUM_THREADS"] = str(int(env["OMP_NUM_THREADS"]) + 3)
    prestart.start(2, env)
    started = _standby_pids()
    if differs == "environment":
        monkeypatch.setenv("LAMBDAMR_TEST_CHANGED", "1")
    rt = LocalRuntime(workers=1 if differs == "workers" else 2)
    rows = _run(tmp_path, rt)
    assert rt.adopted == 0 and prestart.waiting() == 0
    assert rows and not {int(pid) for pid, _ in rows} & set(started)
    assert _gone(started)


def _workers_of(driver_pid: int) -> list[int]:
    """Live processes started as workers (or a zygote) of ``driver_pid``: their environment names it."""
    mark = f"{prestart.PARENT_PID_ENV}={driver_pid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") and _alive(int(entry)):
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _none_left(driver_pid: int) -> bool:
    deadline = time.monotonic() + PATIENCE_S
    while _workers_of(driver_pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


_REAPER = "prestart.become_reaper(); " if sys.platform.startswith("linux") else ""


@pytest.mark.parametrize("reaper", [_REAPER, ""], ids=["zygote", "one by one"])
def test_unclaimed_standby_workers_are_stopped_when_the_command_exits(tmp_path, reaper):
    code = ("import os; from airflow_provider_lambdamr import prestart; " + reaper +
            "prestart.start(2, prestart.early_env(dict(os.environ), 2)); "
            "print(os.getpid(), *(s.process().pid for s in prestart._standby))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE_S)
    assert res.returncode == 0, res.stderr
    driver, *pids = (int(p) for p in res.stdout.split())
    assert len(set(pids)) == 2
    assert _gone(pids)
    assert _none_left(driver)


def _children() -> set[int]:
    """This process's children, zombies too (until they are reaped)."""
    return {int(pid) for task in os.listdir("/proc/self/task")
            for pid in Path(f"/proc/self/task/{task}/children").read_text().split()}


def _zygote_that_after_its_first_fork(does: str) -> str:
    """A zygote's command line (as ``prestart.python_command``) whose first fork returns to the
    child only: in the zygote, it ``does`` something first (``die``: is SIGKILLed; ``hang``)."""
    script = (
        "import os, runpy, signal, sys, time\n"
        "fork = os.fork\n"
        "def fork_and_stop():\n"
        "    pid = fork()\n"
        "    if pid:\n"
        f"        os.kill(os.getpid(), signal.SIGKILL) if {does!r} == 'die' else time.sleep(3600)\n"
        "    return pid\n"
        "os.fork = fork_and_stop\n"
        f"sys.argv[0] = {prestart.BOOTSTRAP!r}\n"
        f"runpy.run_path({prestart.BOOTSTRAP!r}, run_name='__main__')\n"
    )
    return lambda *args: [sys.executable, "-c", script, *args]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a zygote needs Linux")
@pytest.mark.parametrize("does", ["die", "hang"])
def test_a_worker_forked_by_a_zygote_that_then_fails_is_known(no_standby, monkeypatch, does):
    """A zygote killed between a fork and anything after it, or hanging there until it is
    stopped: the worker it forked is claimed like the others, or stopped with them, not left
    unknown (to end as this process's zombie)."""
    monkeypatch.setattr(prestart, "_reaper", False)
    monkeypatch.setattr(prestart, "python_command", _zygote_that_after_its_first_fork(does))
    assert prestart.become_reaper()
    before = _children()
    env = prestart.early_env(dict(os.environ), 2)
    try:
        prestart.start(2, env, imports=())
        if does == "hang":
            ctrl = prestart._standby[0].zygote.ctrl
            ctrl.settimeout(PATIENCE_S)
            assert ctrl.recv(64, socket.MSG_PEEK)  # the worker it forked reported itself
            prestart.discard()  # the zygote is not done: it is stopped, and its workers with it
            assert not _children() - before
            return
        claimed = prestart.claim(env, ())
    finally:
        prestart._set_subreaper(False)
    assert claimed is not None, "the worker the zygote forked before it was killed was not claimed"
    proc, sock = claimed
    assert isinstance(proc, prestart.ForkedProcess) and proc.pid in _children()
    assert prestart.claim(env, ()) is None  # the second was never forked
    sock.close()  # the worker exits
    assert proc.wait(timeout=PATIENCE_S) == 0
    assert not _children() - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a zygote needs Linux")
@pytest.mark.parametrize("when", ["importing", "forked", "adopted"])
def test_a_zygotes_workers_die_with_a_sigkilled_driver(tmp_path, fixture_jobs_path, when):
    """Killed while the zygote imports, once it forked the workers, or once the runtime
    adopted them: no worker (nor the zygote) outlives the driver."""
    code = (
        "import os, sys, time\n"
        "from airflow_provider_lambdamr import prestart\n"
        "prestart.become_reaper()\n"
        "prestart.start(2, prestart.early_env(dict(os.environ), 2))\n"
        f"when = {when!r}\n"
        "if when != 'importing':\n"
        "    pids = [s.process().pid for s in prestart._standby]\n"
        "if when == 'adopted':\n"
        "    from airflow_provider_lambdamr.engine import packaging\n"
        "    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime\n"
        "    rt = LocalRuntime(workers=2)\n"
        "    rt.deploy(packaging.build('userjobs.arrowinit:Vectorized'))\n"
        "    assert rt.adopted == 2\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
        if when != "importing":
            assert len(_workers_of(proc.pid)) == 2  # the zygote is gone once it forked
        else:
            assert _workers_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert _none_left(proc.pid)


def _invoke(conn: Connection, handler: str) -> dict:
    conn.send_bytes(json.dumps({
        "request_id": "r1", "handler": handler, "function_name": "f", "memory_mb": 128,
        "deadline_ms": (time.time() + PATIENCE_S) * 1000, "trace_header": None, "event": {},
    }).encode())
    assert conn.poll(PATIENCE_S)
    return json.loads(conn.recv_bytes())


@pytest.mark.parametrize("ships_its_own", [True, False])
def test_code_that_ships_a_module_the_standby_worker_imported_gets_its_own(tmp_path, no_standby, ships_its_own):
    """The worker replaces itself (same pid, same socket) with an interpreter that imported
    nothing in advance, so the job's copy wins, as it would in a fresh worker."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(
        "import colorsys\n\ndef handler(event, context):\n"
        "    import sys\n"
        "    return {'colorsys': colorsys.__file__, 'pid': __import__('os').getpid(), 'path': sys.path}\n\n"
        "def exits(event, context):\n    exit(3)\n"
    )
    if ships_its_own:
        (code / "colorsys.py").write_text("SHIPPED = True\n")
    env = prestart.early_env(dict(os.environ), 1)
    prestart.start(1, env, imports=("colorsys",))
    proc, sock = prestart.claim(env, ("colorsys",))
    conn = Connection(sock.detach())
    try:
        conn.send_bytes(json.dumps({"type": "init", "code_dir": str(code), "handlers": ["probe.handler", "probe.exits"],
                                    "env": {"LAMBDAMR_TEST_LATE": "1"}}).encode())
        assert conn.poll(PATIENCE_S)
        ready = json.loads(conn.recv_bytes())
        assert ready["type"] == "ready" and ready["pid"] == proc.pid
        reply = _invoke(conn, "probe.handler")
        assert reply["ok"], reply
        assert reply["payload"]["pid"] == proc.pid
        shipped = str(code / "colorsys.py")
        assert (reply["payload"]["colorsys"] == shipped) is ships_its_own
        # the environment's site-packages on the path, the user's not (-I)
        path = reply["payload"]["path"]
        assert path[0] == str(code)
        assert set(site.getsitepackages()) & set(path)
        assert site.getusersitepackages() not in path
        # ``exit``, which ``site`` provides, is there
        reply = _invoke(conn, "probe.exits")
        assert not reply["ok"] and "sys.exit(3)" in reply["error"]["errorMessage"]
    finally:
        conn.close()
        proc.wait(timeout=PATIENCE_S)


def test_the_lambdamr_command_adopts_the_workers_it_started(tmp_path):
    # wordcount has no table mapper: its workers import no pyarrow at init, and the command
    # line says so (without --no-vectorized the hint's workers import it, and are not adopted)
    (tmp_path / "in").mkdir()
    words = [f"w{i % 7}" for i in range(300)]
    (tmp_path / "in" / "a.txt").write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, 300, 10)) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH")) if p)}
    env.pop(prestart.PRESTART_ENV, None)
    entry = "import sys; from airflow_provider_lambdamr.prestart import main; sys.exit(main())"
    runs = {}
    for setting in ("1", "0"):
        out = tmp_path / f"out{setting}"
        res = subprocess.run(
            [sys.executable, "-c", entry, "-v", "run", "wordcount", "--input", str(tmp_path / "in"),
             "--output", str(out), "--workers", "2", "--quiet", "--no-vectorized"],
            env={**env, prestart.PRESTART_ENV: setting}, capture_output=True, text=True, timeout=PATIENCE_S,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        runs[setting] = res.stderr.count("adopted pre-started worker")
        # the workers it adopted are gone when it exits
        assert _gone(int(line.rsplit(" ", 1)[1]) for line in res.stderr.splitlines() if "adopted" in line)
        counts = {word: int(n) for word, n in read_rows(str(out))}
        assert counts == {f"w{i}": words.count(f"w{i}") for i in range(7)}
    assert runs == {"1": 2, "0": 0}


def test_the_console_script_is_the_prestarting_entry_point():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "lambdamr"]
    assert script.value == "airflow_provider_lambdamr.prestart:main"


def test_a_record_mode_job_does_not_adopt_workers_that_imported_pyarrow(tmp_path, fixture_jobs_path, no_standby,
                                                                        mode):
    """The command line said vectorized (the default), but the job has no table mapper: a fresh
    worker would not import pyarrow at init, so neither may the worker that runs its tasks."""
    prestart.start(2, prestart.early_env(dict(os.environ), 2), prestart.ARROW_IMPORTS)
    started = _standby_pids()
    rt = LocalRuntime(workers=2)
    rows = _run(tmp_path, rt, job="userjobs.arrowinit:RecordMode")
    assert rows and {value for _, value in rows} == {"false"}
    assert rt.adopted == 0 and prestart.waiting() == 0
    assert _gone(started)


@contextlib.contextmanager
def _probe_worker(code: Path, imports: tuple[str, ...], standby: bool = True) -> Iterator[Connection]:
    """A ready worker for ``code``'s ``probe.handler``: a standby one that imported
    ``imports`` and was sent the code, or a fresh one started with it."""
    env = prestart.early_env(dict(os.environ), 1)
    if standby:
        prestart.start(1, env, imports=imports)
        proc, sock = prestart.claim(env, imports)
    else:
        sock, child = socket.socketpair()
        proc = prestart.popen(prestart.python_command(str(child.fileno()), str(code), "probe.handler"), env, child)
        child.close()
    conn = Connection(sock.detach())
    try:
        if standby:
            conn.send_bytes(json.dumps({"type": "init", "code_dir": str(code), "handlers": ["probe.handler"],
                                        "env": {}}).encode())
        assert conn.poll(PATIENCE_S)
        assert json.loads(conn.recv_bytes())["type"] == "ready"
        yield conn
    finally:
        conn.close()
        proc.wait(timeout=PATIENCE_S)


@pytest.mark.parametrize("standby", [True, False])
def test_a_worker_has_the_environments_prefix(tmp_path, no_standby, standby):
    """A worker's ``sys.prefix`` is the virtual environment the driver runs in, standby or
    fresh (packages find their data files below it)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(
        "import sys, sysconfig\n\ndef handler(event, context):\n"
        "    return {'prefix': sys.prefix, 'exec_prefix': sys.exec_prefix,\n"
        "            'purelib': sysconfig.get_paths()['purelib']}\n"
    )
    with _probe_worker(code, ("sysconfig",), standby) as conn:
        reply = _invoke(conn, "probe.handler")
    assert reply["ok"], reply
    assert reply["payload"] == {"prefix": sys.prefix, "exec_prefix": sys.exec_prefix,
                                "purelib": sysconfig.get_paths()["purelib"]}


def test_code_that_ships_a_module_the_standby_imports_pulled_in_gets_its_own(tmp_path, no_standby):
    """Not only the modules named: one they imported (``fractions`` imports ``numbers``) is
    the job's own copy in a fresh worker, whose path starts with the code, and must be here."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(
        "def handler(event, context):\n"
        "    import fractions, sys\n"
        "    return {'numbers': sys.modules['numbers'].__file__}\n"
    )
    (code / "numbers.py").write_text(  # enough of it for fractions and decimal
        "from abc import ABC\n\nclass Number(ABC): pass\nclass Complex(Number): pass\n"
        "class Real(Complex): pass\nclass Rational(Real): pass\nclass Integral(Rational): pass\n")
    with _probe_worker(code, ("fractions",)) as conn:
        reply = _invoke(conn, "probe.handler")
    assert reply["ok"], reply
    assert reply["payload"]["numbers"] == str(code / "numbers.py")


@pytest.mark.parametrize(("ends", "status"), [("exit", 7), ("signal", -9), ("deadline", 124)])
def test_a_standby_workers_exit_status_is_its_own(tmp_path, no_standby, mode, ends, status):
    """How an adopted worker ended (its exit status, the signal that killed it, the status it
    ends an invocation past its deadline with) is what the runtime reads, forked or not."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(
        "import os, signal, time\n\ndef handler(event, context):\n"
        f"    if {ends!r} == 'exit':\n        os._exit(7)\n"
        f"    if {ends!r} == 'signal':\n        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    time.sleep(60)\n"
    )
    env = prestart.early_env(dict(os.environ), 2)
    prestart.start(2, env, imports=())
    proc, sock = prestart.claim(env, ())
    conn = Connection(sock.detach())
    try:
        conn.send_bytes(json.dumps({"type": "init", "code_dir": str(code), "handlers": ["probe.handler"],
                                    "env": {}}).encode())
        assert conn.poll(PATIENCE_S) and json.loads(conn.recv_bytes())["type"] == "ready"
        assert proc.poll() is None
        conn.send_bytes(json.dumps({
            "request_id": "r1", "handler": "probe.handler", "function_name": "f", "memory_mb": 128,
            "deadline_ms": (time.time() + (0.2 if ends == "deadline" else PATIENCE_S)) * 1000,
            "trace_header": None, "event": {},
        }).encode())
        assert proc.wait(timeout=PATIENCE_S) == status
    finally:
        conn.close()
    assert proc.returncode == status and proc.poll() == status
    proc.kill()  # reaped: nothing is signalled (its pid may be another process's now)
