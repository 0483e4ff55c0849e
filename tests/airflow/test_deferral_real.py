"""Deferral with the real components: ``airflow api-server``, ``scheduler``, ``dag-processor``
and ``triggerer`` (LocalExecutor on SQLite) run two DAGs at once, both deferrable on the local
function service: the compact form (a map task and a reduce task) and the expanded form
(``lambdamr_task_group``: mapped map batches, a mapped task per reduce round, the commit).

The DAGs' operators are the provider's, each wrapped (in the DAG file) only to record when
its ``execute`` / ``execute_complete`` ran: the intervals a worker slot was held. The jobs'
mappers sleep, so the jobs take far longer than those intervals add up to.
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
from tests.helpers import read_counts, stop_test_service

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "lambdamr_deferral_real"
#: Bounds for waiting (never asserted as durations).
START_S = 120.0
RUN_S = 420.0
MAP_TASKS = 6
SLEEP_S = 4.0
#: The triggers' poll interval: longer than the LocalExecutor takes to report a deferred
#: task's exit, which Airflow 3.3 needs (docs/dev/airflow-3.3-notes.md, "Deferral").
POLL_S = 8.0

DAG_FILE = textwrap.dedent('''
    import json, os, time
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_lambdamr import task_group as tg
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    INTERVALS = os.environ["LAMBDAMR_TEST_INTERVALS"]
    POLL_S = %(poll)s


    def timed(cls):
        \"\"\"Record (dag, task, map index, method, start, end) of every call: the slot the task held.\"\"\"
        class Timed(cls):
            def _timed(self, method, context, *args):
                start = time.time()
                try:
                    return getattr(super(), method)(context, *args)
                finally:
                    with open(INTERVALS, "a") as fh:
                        fh.write(json.dumps([self.dag_id, self.task_id, context["ti"].map_index, method, start,
                                             time.time()]) + "\\n")

            def execute(self, context):
                return self._timed("execute", context)

            def execute_complete(self, context, event=None):
                return self._timed("execute_complete", context, event)

        Timed.__name__ = cls.__name__
        return Timed


    JOB = dict(job="userjobs.faulty:FaultyCount", inputs=os.environ["LAMBDAMR_TEST_INPUT"],
               job_params={"sleep_always": "%(sleep)s"}, max_files_per_task=1, partitions=2, fan_in=2,
               runtime="service", workers=2, speculation=False, deferrable=True, poll_interval=POLL_S,
               aws_conn_id=None)

    with DAG(dag_id="%(dag_id)s", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
        mapped = timed(LambdaMapOperator)(task_id="map", output_uri=os.environ["LAMBDAMR_TEST_OUTPUT"], **JOB)
        timed(LambdaReduceOperator)(task_id="reduce", job_dir=mapped.output["job_dir"], deferrable=True,
                                    poll_interval=POLL_S, aws_conn_id=None)

    # the expanded form: the task group's launching tasks, timed the same way
    for name in ("LambdaMapBatchOperator", "LambdaReduceGroupsOperator", "LambdaReduceOperator"):
        setattr(tg, name, timed(getattr(tg, name)))
    with DAG(dag_id="%(dag_id)s_expanded", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
        tg.lambdamr_task_group("wc", output_uri=os.environ["LAMBDAMR_TEST_OUTPUT_EXPANDED"],
                               max_parallel_instances=3, max_map_tasks=8, **JOB)
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
        "LAMBDAMR_TEST_OUTPUT_EXPANDED": str(tmp_path / "out-expanded"),
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
        stop_test_service(svc_dir)
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
    """Both forms of one job, run at once: every map and reduce task (each mapped instance of
    the expanded form) launches, defers to the triggerer and resumes in another worker
    process; no slot is held for the job's duration; both results are exact."""
    af = airflow_stack
    expected = _words(tmp_path)
    expanded = f"{DAG_ID}_expanded"
    for dag_id in (DAG_ID, expanded):
        _wait(af, f"DAG {dag_id} was not parsed",
              lambda d=dag_id: af.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", d), START_S)
        af.run("dags", "unpause", dag_id)
        af.run("dags", "trigger", dag_id, "--run-id", "real1")
    for dag_id in (DAG_ID, expanded):
        state = _wait(af, f"the run of {dag_id} did not finish", lambda d=dag_id: [
            s for (s,) in af.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = 'real1'", d)
            if s in ("success", "failed")], RUN_S)
        tis = af.query("SELECT task_id, map_index, state, try_number FROM task_instance "
                       "WHERE dag_id = ? AND run_id = 'real1'", dag_id)
        assert state == ["success"], f"{dag_id} run {state}; task instances {tis}; triggerer: " \
                                     f"{af.log('triggerer')[-3000:]}"
        assert all(try_number == 1 for *_, try_number in tis), tis
    compact = _tis(af, DAG_ID)
    assert compact == {("map", -1): "success", ("reduce", -1): "success"}
    tis = _tis(af, expanded)
    # three map batches (6 map tasks, at most 3 instances), mapped; the rounds the job needs ran
    assert [tis[("wc.map", i)] for i in range(3)] == ["success"] * 3 and ("wc.map", 3) not in tis
    assert tis[("wc.round_1", 0)] == "success" and tis[("wc.commit", -1)] == "success"

    intervals = [json.loads(line) for line in (af.home / "intervals.jsonl").read_text().splitlines()]
    calls = collections.defaultdict(list)
    for dag_id, task_id, map_index, method, start, end in intervals:
        calls[(dag_id, task_id, map_index)].append((method, start, end))
    launching = [(DAG_ID, "map", -1), (DAG_ID, "reduce", -1), *((expanded, "wc.map", i) for i in range(3)),
                 *((expanded, t, i) for (t, i), state in tis.items() if t.startswith("wc.round_") and
                   "_groups" not in t and state == "success")]
    for key in launching:
        methods = [m for m, _, _ in calls[key]]
        # launched once, then resumed (in another worker process) after a trigger event
        assert methods[0] == "execute" and methods.count("execute") == 1, (key, methods)
        assert methods.count("execute_complete") >= 1, (key, methods)
    # the triggerer ran the compact tasks' triggers: their logs hold the events (a log is named
    # by the trigger's row id, which SQLite reuses, so a later deferral's may replace an earlier's)
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    for task_id in ("map", "reduce"):
        logs = af.home / "logs" / f"dag_id={DAG_ID}" / "run_id=real1" / f"task_id={task_id}"
        fired = [line for f in sorted(logs.glob("attempt=1.log.trigger.*.log"))
                 for line in f.read_text().splitlines() if "Trigger fired event" in line]
        assert fired, f"no trigger of task {task_id} fired"
        assert all("'status': 'ready'" in line and summary["job_id"] in line for line in fired), fired
    for dag_id, out in ((DAG_ID, tmp_path / "out"), (expanded, tmp_path / "out-expanded")):
        assert read_counts(str(out)) == expected, dag_id
        done = json.loads((out / "_SUCCESS").read_text())
        assert st.normalize(str(out)) == done["output"]
        # every map invocation counted, though launched and adopted by several processes
        assert done["invocations"]["map"]["invocations"] == MAP_TASKS, (dag_id, done["invocations"])
        # the worker slots were held for a fraction of the job: the waiting happened in the triggerer
        spans = [c for key, c in calls.items() if key[0] == dag_id]
        held = sum(end - start for c in spans for _, start, end in c)
        first = min(start for c in spans for _, start, _ in c)
        last = max(end for c in spans for _, _, end in c)
        assert last - first >= MAP_TASKS * SLEEP_S / 2, "the mappers sleep: the job cannot be this short"
        assert held < 0.5 * (last - first), f"{dag_id}: slots held {held:.1f} s of {last - first:.1f} s: {spans}"


def _tis(af: Airflow, dag_id: str) -> dict[tuple[str, int], str]:
    return {(t, i): s for t, i, s in af.query(
        "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = 'real1'", dag_id)}
