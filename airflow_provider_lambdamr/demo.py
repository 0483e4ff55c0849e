"""``make demo``: run the main example DAG on the embedded default, then show what ran.

The main example DAG, ``example_lambdamr_amplab_2a_expanded``, is the product's shape: a task
group whose tasks are the MapReduce (plan, the map fan-out as mapped instances, each reducer
round, the commit), each launching its invocations and deferring until they end. Embedded
default: a SQLite metadata DB in the demo directory, ``airflow dags test`` (no scheduler: it
runs the deferred tasks' triggers in its own process), the local function service (worker
processes that run the Lambda handlers from the versioned zip, outliving the task that
launched them, as Lambda's asynchronous invocations do) and ``file://`` storage. No AWS
account is needed. The demo stops the service it started.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

DAG_ID = "example_lambdamr_amplab_2a_expanded"
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


def airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    exe = Path(sys.executable).with_name("airflow")
    with open(log, "w") as fh:
        code = subprocess.call([str(exe), *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"`airflow {' '.join(args)}` failed (exit {code}); last lines of {log}:\n"
                         + "\n".join(tail))


def task_instances(db: Path) -> list[tuple[str, int, str]]:
    """(task, map index, state) of the DAG's latest run, in the order they started."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        (run_id,) = con.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                (DAG_ID,)).fetchone()
        return con.execute("SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
                           "ORDER BY start_date IS NULL, start_date, task_id, map_index", (DAG_ID, run_id)).fetchall()


def deferrals(log: Path) -> collections.Counter:
    """How many times each task deferred, from the ``airflow dags test`` log."""
    counts: collections.Counter = collections.Counter()
    task = None
    for line in log.read_text(errors="replace").splitlines():
        started = re.search(rf"\[DAG TEST\] running task <TaskInstance: {re.escape(DAG_ID)}\.(\S+) ", line)
        if started:
            task = started.group(1)
        elif task and "invocations in flight; deferring" in line:
            counts[task] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".demo", help="where the Airflow home, sample and result go")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # the demo's own service (a short path: socket paths are limited), stopped at the end
    service_dir = Path(tempfile.mkdtemp(prefix="lmr-demo-", dir="/tmp")) / "svc"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LAMBDAMR_SAMPLE_DIR": str(root / "samples"),
        "LAMBDAMR_SERVICE_DIR": str(service_dir),
        # `dags test` runs each trigger inline, one task at a time: a short poll keeps it brisk
        "LAMBDAMR_EXAMPLE_POLL_S": "2",
    }
    log = root / "airflow-dags-test.log"
    print(f"airflow db migrate (SQLite in {root / 'airflow'}) ...", flush=True)
    airflow(["db", "migrate"], env, root / "airflow-db-migrate.log")
    print(f"airflow dags test {DAG_ID} (deferrable tasks on the local function service, file:// storage) ...",
          flush=True)
    try:
        airflow(["dags", "test", DAG_ID], env, log)
    finally:
        lambdamr = Path(sys.executable).with_name("lambdamr")
        subprocess.run([str(lambdamr), "service", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(service_dir.parent, ignore_errors=True)

    results = sorted((root / "samples" / "results" / "amplab-2a-expanded").glob("*/_SUCCESS"),
                     key=lambda p: p.stat().st_mtime)
    if not results:
        raise SystemExit(f"the DAG run left no result; see {log}")
    summary = json.loads(results[-1].read_text())
    out = results[-1].parent
    c = summary["counters"]
    deferred = deferrals(log)
    print("\nThe DAG run (task, instances, state; how many times they deferred to the trigger):")
    by_task: dict[str, list[str]] = {}
    for task_id, _, state in task_instances(root / "airflow" / "airflow.db"):
        by_task.setdefault(task_id, []).append(state)
    for task_id, states in by_task.items():
        shown = f"{len(states)} mapped instances" if len(states) > 1 else "1 task"
        counted = ", ".join(f"{n} {s}" for s, n in sorted(collections.Counter(states).items()))
        times = f", deferred {deferred[task_id]} times" if deferred[task_id] else ""
        print(f"  {task_id:<28} {shown:<20} {counted}{times}")
    print("\nSELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1")
    print(f"job {summary['job_id']}: {summary['tasks']['map']} map tasks, "
          f"{summary['tasks']['reduce']} reduce tasks, {c['input_records']:,} input rows, "
          f"{c['output_records']:,} result rows, {summary['invocations']['map']['invocations']} map and "
          f"{summary['invocations']['reduce']['invocations']} reduce invocations on the local function service")
    print(f"result: {out}  ({', '.join(summary['files'])}, _SUCCESS)")
    print(f"first rows of {summary['files'][0]}:")
    with open(out / summary["files"][0]) as fh:
        for _, line in zip(range(5), fh, strict=False):
            print("  " + line.rstrip("\n"))
    from lambda_src import contract
    from lambda_src import storage as st

    report = Path(st.local_path(contract.report_uri(summary["job_dir"])))
    if report.exists():
        print(f"job report (a timeline of every task attempt): {report}")
    print(f"Airflow log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
