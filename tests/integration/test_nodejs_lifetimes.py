"""Node.js workers of the local runtime live and die like the Python ones: they never outlive the
driver (the parent-death signal, set by the Python bootstrap before it execs node), and a task
that passes its deadline is killed and reported as Lambda reports a timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.integration.test_lifetimes import _is_worker, _kill_leftovers, _wait_for

JOB = str(FIXTURES / "nodejobs" / "slow.mjs")
pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
              pytest.mark.usefixtures("node")]


def _input(tmp_path: Path) -> Path:
    (tmp_path / "marks").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("quick slow1 quick\n")
    return tmp_path / "marks"


def test_a_node_worker_dies_with_a_sigkilled_driver(tmp_path):
    marks = _input(tmp_path)
    cmd = [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", JOB, "--input", str(tmp_path / "in"),
           "--output", str(tmp_path / "out"), "--workers", "1", "--quiet", "--param", f"marks={marks}",
           "--param", "sleep_s=120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: set[int] = set()
    try:
        _wait_for("the worker to be inside the slow task", lambda: list(marks.glob("pid-*")), proc)
        pids = {int(p.name.removeprefix("pid-")) for p in marks.glob("pid-*")}
        assert all(b"bootstrap.mjs" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)
        proc.kill()
        proc.wait()
        _wait_for("the worker to be gone", lambda: not any(_is_worker(p) for p in pids))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_leftovers(pids)
    assert not list(marks.glob("after-*"))


def test_a_node_task_past_its_deadline_is_killed_and_reported_as_timed_out(tmp_path):
    from airflow_provider_lambdamr.engine.failures import JobFailed
    from tests.helpers import run_job

    marks = _input(tmp_path)
    with pytest.raises(JobFailed, match=r"map task 0 of 1 failed after 2 attempts: Sandbox.Timedout: .*Task timed "
                                        r"out after 2.00 seconds"):
        run_job(job=JOB, inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), timeout_s=2,
                max_attempts=2, speculation=False, params={"marks": str(marks), "sleep_s": "120"}, workers=1)
    assert not list(marks.glob("after-*")), "the task ran on past its deadline"
