"""``make demo``: run the main example DAG on the embedded default, then show the result.

Embedded default: a SQLite metadata DB in the demo directory, ``airflow dags test`` (no
scheduler), the local runtime (worker processes that run the Lambda handlers from the
versioned zip) and ``file://`` storage. No AWS account and no services are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DAG_ID = "example_lambdamr_amplab_2a"
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


def airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    exe = Path(sys.executable).with_name("airflow")
    with open(log, "w") as fh:
        code = subprocess.call([str(exe), *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"`airflow {' '.join(args)}` failed (exit {code}); last lines of {log}:\n"
                         + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".demo", help="where the Airflow home, sample and result go")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LAMBDAMR_SAMPLE_DIR": str(root / "samples"),
    }
    print(f"airflow db migrate (SQLite in {root / 'airflow'}) ...", flush=True)
    airflow(["db", "migrate"], env, root / "airflow-db-migrate.log")
    print(f"airflow dags test {DAG_ID} (local runtime, file:// storage) ...", flush=True)
    airflow(["dags", "test", DAG_ID], env, root / "airflow-dags-test.log")

    results = sorted((root / "samples" / "results" / "amplab-2a").glob("*/_SUCCESS"),
                     key=lambda p: p.stat().st_mtime)
    if not results:
        raise SystemExit(f"the DAG run left no result; see {root / 'airflow-dags-test.log'}")
    summary = json.loads(results[-1].read_text())
    out = results[-1].parent
    c = summary["counters"]
    print("\nSELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1")
    print(f"job {summary['job_id']}: {summary['tasks']['map']} map tasks, "
          f"{summary['tasks']['reduce']} reduce tasks, {c['input_records']:,} input rows, "
          f"{c['output_records']:,} result rows")
    print(f"result: {out}  ({', '.join(summary['files'])}, _SUCCESS)")
    print(f"first rows of {summary['files'][0]}:")
    with open(out / summary["files"][0]) as fh:
        for _, line in zip(range(5), fh, strict=False):
            print("  " + line.rstrip("\n"))
    print(f"Airflow log: {root / 'airflow-dags-test.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
