"""Worker processes never outlive their driver or their deadline; user code that exits is reported.

The driver is ``lambdamr run`` in a subprocess. The fixture job (tests/fixtures/userjobs/
lifetimes.py) records the pid of every worker that enters a slow task, so the tests know
exactly which processes must be gone.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import jobstate
from tests.conftest import FIXTURES
from tests.helpers import read_counts, run_job
from tests.integration.test_aws_runtime import AsyncLambda
from tests.integration.test_aws_runtime import _runtime as _aws_runtime

JOB = "userjobs.lifetimes:SlowCount"
#: How long anything here may take before the test gives up (a bound, not a measurement).
PATIENCE_S = 60


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


#: The ``lambdamr`` command's entry point (it starts the workers first, through one zygote).
LAMBDAMR = [sys.executable, "-c", "import sys; from airflow_provider_lambdamr.prestart import main; sys.exit(main())"]


def _command(tmp_path: Path, job_id: str, *extra: str, job: str = JOB, entry: list[str] | None = None) -> list[str]:
    return [*(entry or [sys.executable, "-m", "airflow_provider_lambdamr.cli"]), "run", job,
            "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--job-id", job_id,
            "--split-size", "16", "--quiet", *extra]


def _write_input(tmp_path: Path, fast: int, slow: int) -> collections.Counter:
    """One file (one map task) per word: ``fast`` quick ones first, then ``slow`` slow ones."""
    (tmp_path / "in").mkdir()
    (tmp_path / "marks").mkdir()
    expected: collections.Counter = collections.Counter()
    words = [f"fast{i}" for i in range(fast)] + [f"slow{i}" for i in range(slow)]
    for i, word in enumerate(words):
        line = f"{word} all {word}\n"
        (tmp_path / "in" / f"{i:02d}.txt").write_text(line)
        expected.update(line.split())
    return expected


def _wait_for(what: str, predicate, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting ({PATIENCE_S} s) for {what}")
        time.sleep(0.05)


def _worker_pids(marks: Path) -> set[int]:
    return {int(p.name.removeprefix("pid-")) for p in marks.glob("pid-*")}


def _is_worker(pid: int) -> bool:
    """Whether ``pid`` is still a local-runtime worker (Python or Node.js) that has not finished exiting.

    A zombie has exited (its files are closed); a process whose command line is empty is
    exiting, so it still counts, as a worker; another command line is a reused pid.
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X") and (not cmdline or b"_bootstrap.py" in cmdline or b"bootstrap.mjs" in cmdline)


def _kill_leftovers(pids: set[int]) -> None:
    for pid in pids:
        if _is_worker(pid):
            os.kill(pid, signal.SIGKILL)


def _records(status: Path) -> dict[str, int]:
    return {str(p.relative_to(status)): p.stat().st_mtime_ns for p in status.rglob("*.json")}


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize("sig,exit_code,entry", [
    (signal.SIGTERM, 143, None), (signal.SIGINT, 130, None), (signal.SIGHUP, 129, None), (signal.SIGKILL, -9, None),
    # the lambdamr command's workers, forked by its zygote
    (signal.SIGTERM, 143, LAMBDAMR), (signal.SIGKILL, -9, LAMBDAMR),
], ids=["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGTERM-lambdamr", "SIGKILL-lambdamr"])
def test_a_signal_to_the_driver_leaves_no_worker_running_and_a_rerun_resumes(tmp_path, sig, exit_code, entry):
    expected = _write_input(tmp_path, fast=4, slow=2)
    marks = tmp_path / "marks"
    job_id = f"sig-{sig.name.lower()}"
    # (the job has no table mapper: the lambdamr command's workers are adopted when it says so)
    cmd = _command(tmp_path, job_id, "--workers", "2", "--param", f"marks={marks}",
                   "--param", "sleep_s=120", *(["--no-vectorized"] if entry else []),
                   entry=[*entry, "-v"] if entry else None)
    status = tmp_path / "out" / "_jobs" / job_id / "status"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        _wait_for("both workers to be inside slow tasks", lambda: len(_worker_pids(marks)) == 2, proc)
        pids = _worker_pids(marks)
        done = _records(status)
        assert len([k for k in done if k.startswith("map/") and ".failed-" not in k]) == 4
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=PATIENCE_S)
        assert proc.returncode == exit_code, stderr
        assert stderr.count("adopted pre-started worker") == (2 if entry else 0), stderr
        if sig != signal.SIGKILL:
            assert f"interrupted by {sig.name}; its workers were stopped" in stderr, stderr
            assert f"rerun with --job-id {job_id} to resume" in stderr, stderr
            assert "Traceback" not in stderr, stderr
        _wait_for("the workers to be gone", lambda: not any(_is_worker(p) for p in pids))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pids)
    assert _records(status) == done, "a status record was written after the driver was stopped"
    assert not list(marks.glob("after-*")), "a task ran on after its driver was stopped"

    # The stopped run's invocations are in the job's ledger (a SIGKILLed one recorded none),
    # so the rerun's commit counts them with its own.
    first = jobstate.read_invocations(str(status.parent)).stats["map"].invocations
    assert first == (0 if sig == signal.SIGKILL else 4), first
    # The slow tasks were started once (their markers exist), so they run fast now.
    res = subprocess.run([*cmd, "--json"], env=_env(), capture_output=True, text=True, timeout=PATIENCE_S)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["invocations"]["map"]["invocations"] == first + 2  # only the unfinished tasks ran again
    assert {k: v for k, v in _records(status).items() if k in done} == done
    assert read_counts(str(tmp_path / "out")) == dict(expected)


def _zombie_of(pid: int) -> int | None:
    """The parent of ``pid`` if it has exited unreaped (a zombie), else None (running, or gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]) if fields[0] == "Z" else None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_lambdamr_command_does_not_adopt_a_jobs_orphans(tmp_path):
    """The command is its zygote's workers' subreaper only until they are its children: a
    process a task leaves behind (a daemon) is not left a zombie of the command's, one per
    task, for as long as the job runs."""
    _write_input(tmp_path, fast=2, slow=2)
    marks = tmp_path / "marks"
    cmd = _command(tmp_path, "orphans", "--workers", "2", "--param", f"marks={marks}", "--param", "sleep_s=120",
                   "--param", "orphan=1", "--no-vectorized", entry=[*LAMBDAMR, "-v"])
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        _wait_for("both workers to be inside slow tasks", lambda: len(_worker_pids(marks)) == 2, proc)
        pids = _worker_pids(marks)
        _wait_for("the orphan to have a new parent", lambda: list(marks.glob("orphan-*")), proc)
        (orphan,) = (int(p.name.removeprefix("orphan-")) for p in marks.glob("orphan-*"))
        _wait_for("the orphan to exit", lambda: not _running(orphan), proc)
        assert _zombie_of(orphan) != proc.pid, "the command adopted a task's orphan and left it a zombie"
    finally:
        proc.kill()
        _, stderr = proc.communicate()
        _kill_leftovers(pids)
    assert stderr.count("adopted pre-started worker") == 2, stderr


def test_workers_started_from_another_thread_die_with_a_sigkilled_host_process(tmp_path):
    """A process that runs the driver off its main thread (no parent-death signal then)."""
    _write_input(tmp_path, fast=0, slow=2)
    marks = tmp_path / "marks"
    spec = {"job": JOB, "inputs": {"": [str(tmp_path / "in")]}, "output": str(tmp_path / "out"),
            "job_id": "thread-1", "split_size": 16, "params": {"marks": str(marks), "sleep_s": "120"}}
    script = (
        "import json, sys, threading\n"
        "from airflow_provider_lambdamr.engine.driver import Driver\n"
        "from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime\n"
        "from airflow_provider_lambdamr.engine.spec import JobSpec\n"
        "def run():\n"
        "    with LocalRuntime(workers=2) as rt:\n"
        "        Driver(JobSpec(**json.loads(sys.argv[1])), rt).run()\n"
        "threading.Thread(target=run).start()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(spec)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        _wait_for("both workers to be inside slow tasks", lambda: len(_worker_pids(marks)) == 2, proc)
        pids = _worker_pids(marks)
        proc.kill()
        proc.wait()
        _wait_for("the workers to be gone", lambda: not any(_is_worker(p) for p in pids))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pids)
    assert not list((tmp_path / "out" / "_jobs" / "thread-1" / "status").rglob("*.json"))
    assert not list(marks.glob("after-*"))


def test_a_worker_ends_its_invocation_at_the_deadline_when_the_driver_cannot(tmp_path):
    _write_input(tmp_path, fast=0, slow=1)
    marks = tmp_path / "marks"
    job_id = "deadline-1"
    cmd = _command(tmp_path, job_id, "--workers", "1", "--timeout-s", "4", "--param", f"marks={marks}",
                   "--param", "sleep_s=120")
    status = tmp_path / "out" / "_jobs" / job_id / "status"
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: set[int] = set()
    try:
        _wait_for("the worker to be inside the slow task", lambda: len(_worker_pids(marks)) == 1, proc)
        pids = _worker_pids(marks)
        proc.send_signal(signal.SIGSTOP)  # the driver can no longer enforce the timeout
        _wait_for("the worker to end its own invocation", lambda: not any(_is_worker(p) for p in pids))
        assert not list(status.rglob("*.json")), "the timed-out task wrote a status record"
        assert not list(marks.glob("after-*")), "the task ran on past its deadline"
    finally:
        proc.kill()
        proc.wait()
        _kill_leftovers(pids)


def test_a_worker_that_ends_itself_at_the_deadline_is_reported_as_timed_out(tmp_path, fixture_jobs_path):
    from airflow_provider_lambdamr.engine import packaging
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
    from lambda_src import contract, task
    from lambda_src import storage as st

    _write_input(tmp_path, fast=0, slow=1)
    marks = tmp_path / "marks"
    uri = st.normalize(str(tmp_path / "in" / "00.txt"))
    size = (tmp_path / "in" / "00.txt").stat().st_size
    event = {
        "version": task.EVENT_VERSION, "job_id": "deadline-2", "job_dir": st.normalize(str(tmp_path / "job")),
        "job": {"ref": JOB, "params": {"marks": str(marks), "sleep_s": "120"}, "partitions": 1},
        "task": {"phase": "map", "index": 0, "count": 1, "attempt": 1},
        "splits": [{"uri": uri, "start": 0, "end": size, "size": size}],
    }
    with LocalRuntime(workers=1, timeout_s=3.0) as rt:
        rt.deploy(packaging.build(JOB))
        rt.invoke(contract.task_from_event(event))
        early: list = []  # polled until the task is under way (the worker is ready, then busy)
        _wait_for("the worker to be inside the slow task",
                  lambda: early.extend(rt.poll(0.05)) or early or _worker_pids(marks))
        assert not early, early
        (pid,) = _worker_pids(marks)
        # No longer polled, this driver enforces nothing: the worker must end the invocation itself.
        _wait_for("the worker to end its own invocation", lambda: not _is_worker(pid))
        results = rt.poll(PATIENCE_S)
    assert [r.error["errorType"] for r in results] == ["Sandbox.Timedout"], results
    assert "Task timed out after 3.00 seconds" in results[0].error["errorMessage"]
    assert not list((tmp_path / "job").rglob("*.json"))


@pytest.mark.parametrize("param,reported", [
    ("exit_code=3", "SystemExit: the job called sys.exit(3)"),
    ("interrupt=1", "KeyboardInterrupt: KeyboardInterrupt raised by the job"),
])
def test_sys_exit_or_keyboard_interrupt_in_a_mapper_fails_at_once_blaming_the_job(tmp_path, param, reported):
    _write_input(tmp_path, fast=1, slow=0)
    job_id = "exits-1"
    res = subprocess.run(_command(tmp_path, job_id, "--workers", "1", "--param", param),
                         env=_env(), capture_output=True, text=True, timeout=PATIENCE_S)
    assert res.returncode == 1, res.stderr
    assert ("map task 0 of 1 failed (not retried: a bug in the job's code, which a retry cannot fix): "
            + reported) in res.stderr, res.stderr
    assert "Runtime exited" not in res.stderr and "input itself" not in res.stderr, res.stderr
    status = tmp_path / "out" / "_jobs" / job_id / "status" / "map"
    (failed,) = status.glob("00000.failed-a1-*.json")  # one attempt only
    error = json.loads(failed.read_text())["error"]
    assert f"{error['type']}: {error['message']}" == reported
    assert error["failure"] == "TaskJobError"


def test_a_combiner_that_changes_its_key_fails_at_once_blaming_the_job(tmp_path):
    _write_input(tmp_path, fast=1, slow=0)
    job_id = "combiner-1"
    res = subprocess.run(
        _command(tmp_path, job_id, "--workers", "1", job="userjobs.lifetimes:KeyChangingCombiner"),
        env=_env(), capture_output=True, text=True, timeout=PATIENCE_S,
    )
    assert res.returncode == 1, res.stderr
    assert ("map task 0 of 1 failed (not retried: a bug in the job's code, which a retry cannot fix): "
            "CombinerKeyError: the combiner changed key \"fast0\" into \"fast0!\"") in res.stderr, res.stderr
    status = tmp_path / "out" / "_jobs" / job_id / "status" / "map"
    assert len(list(status.glob("00000.failed-*.json"))) == 1


def test_a_missing_job_class_names_the_module_and_the_attribute(tmp_path):
    _write_input(tmp_path, fast=1, slow=0)
    res = subprocess.run(_command(tmp_path, "missing-1", job="userjobs.lifetimes:NoSuchJob"),
                         env=_env(), capture_output=True, text=True, timeout=PATIENCE_S)
    assert res.returncode == 2, res.stderr
    assert "job module 'userjobs.lifetimes' (" in res.stderr, res.stderr
    assert ("has no attribute 'NoSuchJob'; its MapReduceJob classes: KeyChangingCombiner, SlowCount"
            in res.stderr), res.stderr


def test_on_the_aws_runtime_a_job_bug_is_blamed_on_the_job_and_a_lost_invocation_hints_at_memory(
        lambda_client, role_arn, tmp_path, fixture_jobs_path):
    from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
    from airflow_provider_lambdamr.engine.spec import JobSpec

    _write_input(tmp_path, fast=1, slow=0)
    spec = JobSpec(job="userjobs.lifetimes:KeyChangingCombiner", inputs={"": [str(tmp_path / "in")]},
                   output=str(tmp_path / "out"))
    with pytest.raises(JobFailed, match=r"map task 0 of 1 failed \(not retried: a bug in the job's code, "
                                        r"which a retry cannot fix\): CombinerKeyError: the combiner changed"):
        Driver(spec, _aws_runtime(AsyncLambda(lambda_client), role_arn)).run()
    # Lambda kills a function out of memory: no status record, which the AWS runtime cannot
    # tell from a timeout or a lost event, so the hint names both limits.
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out2"),
                   max_attempts=2, memory_mb=512)
    with pytest.raises(JobFailed, match=r"failed after 2 attempts: Sandbox\.Timedout: .*ran out of memory.*; "
                                        r"raise --timeout-s, or lower --split-size; or, if it ran out of "
                                        r"memory, raise --memory-mb \(now 512\)"):
        Driver(spec, _aws_runtime(AsyncLambda(lambda_client, crash={"map:0:1", "map:0:2"}), role_arn)).run()


@pytest.mark.parametrize("error,peak_mb,hint", [
    ({"errorType": "Runtime.OutOfMemory", "errorMessage": "RequestId: r Error: Runtime exited with error: "
      "signal: killed (Max Memory Used: 260 MB of 256 MB)"}, 260, "raise --memory-mb (now 256)"),
    ({"errorType": "Runtime.ExitError", "errorMessage": "RequestId: r Error: Runtime exited with error: "
      "signal: killed"}, 250, "raise --memory-mb (now 256)"),
    ({"errorType": "Runtime.ExitError", "errorMessage": "RequestId: r Error: Runtime exited with error: "
      "signal: killed"}, 40, None),
    ({"errorType": "TaskError", "errorMessage": "map task 0 of 1 failed: MemoryError: "}, 0,
     "raise --memory-mb (now 256)"),
])
def test_an_out_of_memory_failure_names_memory_mb_whichever_way_it_is_reported(tmp_path, error, peak_mb, hint):
    from airflow_provider_lambdamr.engine.failures import task_failed
    from airflow_provider_lambdamr.engine.runtimes.base import InvocationResult
    from airflow_provider_lambdamr.engine.scheduler import Task
    from airflow_provider_lambdamr.engine.spec import JobSpec

    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), memory_mb=256)
    task = Task(key="map/00000", spec=None, describe="map task 0 of 1",
                 input_desc="in.txt", attempts=3)
    res = InvocationResult("r", False, error=error, max_memory_mb=peak_mb)
    failure = task_failed(spec, "map", task, res.error_text(), True, res)
    if hint is None:
        assert "--memory-mb" not in str(failure)
    else:
        assert hint in str(failure)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_share_out_the_cores_to_their_thread_pools(tmp_path, fixture_jobs_path, monkeypatch, workers):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    out = tmp_path / "out"
    run_job(workers=workers, job="userjobs.probes:Threads", inputs={"": [str(tmp_path / "in.txt")]},
            output=str(out), split_size=200, partitions=1)
    threads = {int(line.split(",")[1]) for line in (out / "part-00000").read_text().splitlines()}
    assert threads == {max(1, (os.cpu_count() or 1) // workers)}


def test_a_thread_count_given_in_the_runtimes_environment_is_the_workers(tmp_path, fixture_jobs_path, monkeypatch):
    from airflow_provider_lambdamr.engine.driver import Driver
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
    from airflow_provider_lambdamr.engine.spec import JobSpec
    from airflow_provider_lambdamr.prestart import worker_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(200)))
    out = tmp_path / "out"
    given = worker_threads(2) + 2  # not what the runtime would choose
    spec = JobSpec(job="userjobs.probes:Threads", inputs={"": [str(tmp_path / "in.txt")]}, output=str(out),
                   split_size=200, partitions=1)
    with LocalRuntime(workers=2, env={"OMP_NUM_THREADS": str(given)}) as rt:
        Driver(spec, rt).run()
    threads = {int(line.split(",")[1]) for line in (out / "part-00000").read_text().splitlines()}
    assert threads == {given}


@pytest.mark.parametrize(("job", "at_init"), [("RecordMode", False), ("Vectorized", True)])
def test_workers_import_pyarrow_at_init_only_for_vectorized_map_tasks(tmp_path, fixture_jobs_path, job, at_init):
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(50)))
    out = tmp_path / "out"
    summary = run_job(job=f"userjobs.arrowinit:{job}", inputs={"": [str(tmp_path / "in.txt")]}, output=str(out),
                      split_size=100, partitions=1)
    assert summary["tasks"]["map_modes"] == {"vectorized" if at_init else "record": summary["tasks"]["map"]}
    rows = [line.split(",") for line in (out / "part-00000").read_text().splitlines()]
    assert rows and {value for _, value in rows} == {str(at_init).lower()}


@pytest.mark.parametrize("given", [None, "system"])
def test_workers_use_the_functions_arrow_memory_pool_unless_one_is_given(tmp_path, fixture_jobs_path, monkeypatch,
                                                                         given):
    import platform

    import pyarrow

    from lambda_src.contract import arrow_memory_pool
    from lambda_src.function_env import JEMALLOC_CONF

    if given is None:
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    else:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", given)
    expected = given or arrow_memory_pool(platform.machine())
    if expected not in pyarrow.supported_memory_backends():
        pytest.skip(f"this pyarrow has no {expected} memory pool (it has {pyarrow.supported_memory_backends()})")
    (tmp_path / "in.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    out = tmp_path / "out"
    run_job(job="userjobs.probes:MemoryPool", inputs={"": [str(tmp_path / "in.txt")]}, output=str(out),
            split_size=100, partitions=1)
    pools = {row[1] for row in csv.reader((out / "part-00000").read_text().splitlines())}
    assert pools == {f"{expected} {JEMALLOC_CONF}"}
