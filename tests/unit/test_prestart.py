"""The ``lambdamr`` entry point's reading of the command line, and the names it shares."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from unittest import mock

import pytest

from airflow_provider_lambdamr import prestart
from airflow_provider_lambdamr.engine.runtimes import _bootstrap
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract, function_env

CPUS = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "wordcount", "--input", "in", "--output", "out"], (CPUS, True)),
        (["run", "wordcount", "--workers", "3"], (3, True)),
        (["run", "wordcount", "--workers=5", "--runtime=local"], (5, True)),
        (["-v", "run", "wordcount", "--runtime", "local", "--no-vectorized"], (CPUS, False)),
        (["--verbose", "run", "j", "--workers", "1"], (1, True)),
        # not a local run, or not sure: no workers started
        (["run", "wordcount", "--runtime", "aws"], None),
        (["run", "wordcount", "--runtime=service"], None),
        (["run", "wordcount", "--runtime"], None),
        (["run", "wordcount", "--workers", "two"], None),
        (["run", "wordcount", "--workers", "0"], None),
        (["run", "wordcount", "--config", "driverconfig.json"], None),
        (["run", "wordcount", "--detach"], None),
        (["run", "wordcount", "--coordinator"], None),
        (["run", "--help"], None),
        (["run", "wordcount", "--run", "aws"], None),  # argparse would read --runtime aws
        (["run", "wordcount", "--work", "3"], None),
        (["status", "file:///x"], None),
        (["service", "start"], None),
        ([], None),
        (["--version"], None),
    ],
)
def test_the_hint_starts_workers_only_for_a_local_run_it_is_sure_of(argv, expected):
    assert prestart.hint(argv, {}) == expected


def test_the_hint_starts_no_large_pool_before_the_command_line_is_known_to_be_valid():
    most = prestart.max_prestart()
    assert prestart.hint(["run", "wordcount", "--workers", str(most)], {}) == (most, True)
    assert prestart.hint(["run", "wordcount", "--workers", str(most + 1)], {}) is None
    assert prestart.hint(["run", "wordcount", "--workers", "100000"], {}) is None


def test_the_hint_is_off_when_the_environment_says_so():
    assert prestart.hint(["run", "wordcount"], {prestart.PRESTART_ENV: "0"}) is None
    assert prestart.hint(["run", "wordcount"], {prestart.PRESTART_ENV: "1"}) == (CPUS, True)


def test_the_names_it_shares_with_the_worker_script_and_the_spec_are_theirs():
    for name in ("STANDBY_FLAG", "ZYGOTE_FLAG", "STANDBY_IMPORTS_ENV", "PARENT_PID_ENV", "PDEATHSIG_ENV"):
        assert getattr(prestart, name) == getattr(_bootstrap, name), name
    assert os.path.abspath(_bootstrap.__file__) == prestart.BOOTSTRAP
    runtime = next(f for f in dataclasses.fields(JobSpec) if f.name == "runtime")
    assert runtime.default == prestart.DEFAULT_RUNTIME
    assert contract.ARROW_POOL_ENV in prestart.early_env({}, 2)
    assert prestart.early_env({}, 2)[function_env.JEMALLOC_CONF_ENV] == function_env.JEMALLOC_CONF
    assert prestart.early_env({function_env.JEMALLOC_CONF_ENV: "narenas:1"}, 2)[function_env.JEMALLOC_CONF_ENV] == (
        "narenas:1")


def test_the_early_environment_holds_nothing_the_job_decides():
    env = prestart.early_env({"X": "1"}, 2)
    assert env["X"] == "1"
    assert env["OMP_NUM_THREADS"] == str(prestart.worker_threads(2))
    for late in ("LAMBDA_TASK_ROOT", contract.ARROW_AT_INIT_ENV, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                 "LAMBDAMR_TRACING"):
        assert late not in env
    # what the caller gives wins
    assert prestart.early_env({"OMP_NUM_THREADS": "9", contract.ARROW_POOL_ENV: "system"}, 2)["OMP_NUM_THREADS"] == "9"


def _child(code: str) -> prestart.ForkedProcess:
    """A child process that no ``Popen`` owns, as a zygote's worker is once it is adopted."""
    return prestart.ForkedProcess(os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ)))


@pytest.mark.skipif(not hasattr(os, "posix_spawn"), reason="needs os.posix_spawn")
def test_a_forked_worker_reports_its_exit_as_popen_does():
    assert _child("import sys; sys.exit(124)").wait(timeout=60) == 124
    assert _child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)").wait() == -signal.SIGKILL
    proc = _child("import time; time.sleep(60)")
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.05)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert proc.poll() == -signal.SIGKILL
    # reaped: its pid may be anyone's now, and is never signalled again
    with mock.patch.object(os, "kill") as kill:
        proc.kill()
        proc.send_signal(signal.SIGTERM)
    kill.assert_not_called()


@pytest.mark.skipif(not hasattr(os, "posix_spawn"), reason="needs os.posix_spawn")
def test_a_forked_worker_reaped_elsewhere_counts_as_exited():
    proc = _child("pass")
    os.waitpid(proc.pid, 0)  # what SIGCHLD set to SIG_IGN does
    assert proc.poll() == 0 and proc.wait() == 0
