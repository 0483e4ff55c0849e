"""Deferral with the real components: ``airflow api-server``, ``scheduler``, ``dag-processor``
and ``triggerer`` (LocalExecutor on SQLite) run a DAG whose map and reduce tasks are
deferrable on the local function service.

The DAG's operators are the provider's, each wrapped (in the DAG file) only to record when
its ``execute`` / ``execute_complete`` ran: the intervals a worker slot was held. The job's
mappers sleep, so the job takes far longer than those intervals add up to.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from lambda_src import storage as st
from tests.helpers import read_counts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "lambdamr_deferral_real"
#: Bounds for waiting (never asserted as durations).
START_S = 120.0
RUN_S = 240.0
MAP_TASKS = 6
SLEEP_S = 4.0
#: The triggers' poll interval: longer than the LocalExecutor takes to report a deferred
#: task's exit, which Airflow 3.3 needs (docs/dev/airflow-3.3-notes.md, "Deferral").
POLL_S = 8.0

DAG_FILE = textwrap.dedent('''
    import json, os, time
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    INTERVALS = os.environ["LAMBDAMR_TEST_INTERVALS"]
    POLL_S = %(poll)s


    def timed(cls):
        """Record (task, method, start, end) of every call: the slot the task held."""
        class Timed(cls):
            def _timed(self, method, *args, **kwargs):
                start = time.time()
                try:
                    return getattr(super(), method)(*args, **kwargs)
                finally:
                    with open(INTERVALS, "a") as fh:
                        fh.write(json.dumps([self.task_id, method, start, time.time()]) + "\\n")

            def execute(self, context):
                return self._timed("execute", context)

            def execute_complete(self, context, event=None):
                return self._timed("execute_complete", context, event)

        Timed.__name__ = cls.__name__
        return Timed


    with DAG(dag_id="%(dag_id)s", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
        mapped = timed(LambdaMapOperator)(
            task_id="map", job="userjobs.faulty:FaultyCount", inputs=os.environ["LAMBDAMR_TEST_INPUT"],
            output_uri=os.environ["LAMBDAMR_TEST_OUTPUT"], job_params={"sleep_always": "%(sleep)s"},
            max_files_per_task=1, partitions=2, fan_in=2, runtime="service", workers=2, speculation=False,
            deferrable=True, poll_interval=POLL_S, aws_conn_id=None,
        )
        timed(LambdaReduceOperator)(task_id="reduce", job_dir=mapped.output["job_dir"], deferrable=True,
                                    poll_interval=POLL_S, aws_conn_id=None)
''') % {"dag_id": DAG_ID, "sleep": SLEEP_S, "poll": POLL_S}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """A temporary Airflow installation and the processes started for it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"airflow {' '.join(args)}: {res.stdout[-2000:]}{res.stderr[-3000:]}"
        return res

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"airflow {name} exited ({proc.returncode}): {self.log(name)[-3000:]}"

    def query(self, sql: str, *params: object) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.home / "airflow.db", timeout=30)) as db:
            return db.execute(sql, params).fetchall()

    def stop(self) -> None:
        """Stop every process group started (SIGTERM, then SIGKILL); no orphans."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 30
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, end - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def airflow_stack(tmp_path):
    from airflow_provider_lambdamr.engine.runtimes import service

    home = Path(tempfile.mkdtemp(prefix="lmr-af-", dir="/tmp"))
    svc_dir = home / "svc"
    port = _free_port()
    (home / "dags").mkdir()
    (home / "dags" / f"{DAG_ID}.py").write_text(DAG_FILE)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "LAMBDAMR_SERVICE_DIR": str(svc_dir),
        "LAMBDAMR_TEST_INTERVALS": str(home / "intervals.jsonl"),
        "LAMBDAMR_TEST_INPUT": str(tmp_path / "in"),
        "LAMBDAMR_TEST_OUTPUT": str(tmp_path / "out"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(FIXTURES)]),
    }
    af = Airflow(home, env)
    af.run("db", "migrate", timeout=300)
    try:
        af.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        af.start("scheduler", "scheduler")
        af.start("dag-processor", "dag-processor")
        af.start("triggerer", "triggerer")
        yield af
    finally:
        groups = [p.pid for p in af.procs.values()]
        af.stop()
        pid_file = svc_dir / service.PID_FILE
        if pid_file.exists():
            pid = int(pid_file.read_text())
            with contextlib.suppress(Exception):
                service.stop_service(svc_dir, timeout_s=10)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not [g for g in groups if _group_alive(g)], "airflow processes outlived the test"
        shutil.rmtree(home, ignore_errors=True)


def _words(tmp_path: Path) -> collections.Counter:
    data = tmp_path / "in"
    data.mkdir()
    expected: collections.Counter = collections.Counter()
    for i in range(MAP_TASKS):
        text = "".join(f"w{j % 11} f{i} common\n" for j in range(40 + i))
        (data / f"f{i}.txt").write_text(text)
        expected.update(text.split())
    return expected


def _wait(af: Airflow, what: str, check, bound: float):
    end = time.monotonic() + bound
    while True:
        af.check_alive()
        value = check()
        if value:
            return value
        assert time.monotonic() < end, f"{what} within {bound:.0f} s; scheduler log: {af.log('scheduler')[-3000:]}"
        time.sleep(1)


def test_deferrable_tasks_run_through_scheduler_triggerer_and_workers_without_holding_slots(
        airflow_stack, tmp_path):
    af = airflow_stack
    expected = _words(tmp_path)
    _wait(af, "the DAG was not parsed", lambda: af.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", DAG_ID),
          START_S)
    af.run("dags", "unpause", DAG_ID)
    af.run("dags", "trigger", DAG_ID, "--run-id", "real1")
    state = _wait(af, "the DAG run did not finish", lambda: [
        s for (s,) in af.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = 'real1'", DAG_ID)
        if s in ("success", "failed")], RUN_S)
    tis = af.query("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = 'real1'",
                   DAG_ID)
    assert state == ["success"], f"run {state}; task instances {tis}; triggerer: {af.log('triggerer')[-3000:]}"
    assert sorted(tis) == [("map", "success", 1), ("reduce", "success", 1)]
    out = tmp_path / "out"
    assert read_counts(str(out)) == expected
    summary = json.loads((out / "_SUCCESS").read_text())

    # each task deferred and resumed (in other worker processes): several short calls each
    intervals = [json.loads(line) for line in (af.home / "intervals.jsonl").read_text().splitlines()]
    calls = collections.defaultdict(list)
    for task_id, method, start, end in intervals:
        calls[task_id].append((method, start, end))
    for task_id in ("map", "reduce"):
        methods = [m for m, _, _ in calls[task_id]]
        assert methods[0] == "execute" and methods.count("execute") == 1, (task_id, methods)
        assert methods.count("execute_complete") >= 1, (task_id, methods)
        # the triggerer ran the task's triggers: their logs hold the events (a log is named by the
        # trigger's row id, which SQLite reuses, so a later deferral's may replace an earlier's)
        logs = af.home / "logs" / f"dag_id={DAG_ID}" / "run_id=real1" / f"task_id={task_id}"
        fired = [line for f in sorted(logs.glob("attempt=1.log.trigger.*.log"))
                 for line in f.read_text().splitlines() if "Trigger fired event" in line]
        assert fired, f"no trigger of task {task_id} fired"
        assert all("'status': 'ready'" in line and summary["job_id"] in line for line in fired), fired
    # the worker slots were held for a fraction of the job: the waiting happened in the triggerer
    held = sum(end - start for task in calls.values() for _, start, end in task)
    first = min(start for task in calls.values() for _, start, _ in task)
    last = max(end for task in calls.values() for _, _, end in task)
    assert last - first >= MAP_TASKS * SLEEP_S / 2, "the mappers sleep: the job cannot be this short"
    assert held < 0.5 * (last - first), f"slots held {held:.1f} s of the tasks' {last - first:.1f} s: {calls}"
    assert st.normalize(str(out)) == summary["output"]
