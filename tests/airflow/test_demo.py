"""``make demo``: the main example DAG (the expanded form, deferrable, on the local function
service) through ``airflow dags test``, as a user's first run does it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_amplab_duckdb import assert_equal_to_duckdb

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_runs_the_expanded_dag_deferring_on_the_service_and_stops_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LAMBDAMR"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-m", "airflow_provider_lambdamr.demo", "--dir", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^  (amplab_2a\.\S+)\s+(.*)$", res.stdout, re.M)}
    # the map fan-out and the first round are mapped instances, and each deferred to its trigger
    for task in ("amplab_2a.map", "amplab_2a.round_1"):
        got = re.fullmatch(r"(\d+) mapped instances\s+\1 success, deferred (\d+) times", lines[task])
        assert got and int(got.group(2)) >= int(got.group(1)), (task, lines[task])
    assert "success" in lines["amplab_2a.commit"]
    # the result is the query's, exactly
    (success,) = (tmp_path / "samples" / "results" / "amplab-2a-expanded").glob("*/_SUCCESS")
    summary = json.loads(success.read_text())
    inputs = sorted(str(p) for p in (tmp_path / "samples" / "uservisits").iterdir() if p.is_file())
    assert_equal_to_duckdb(str(success.parent), inputs, summary)
    assert f"{summary['invocations']['map']['invocations']} map and" in res.stdout
    # the commit wrote the job's report, and the demo says where
    (report,) = re.findall(r"^job report \(a timeline of every task attempt\): (.+)$", res.stdout, re.M)
    assert Path(report).is_file() and "<svg" in Path(report).read_text()
    # the demo's own service is stopped: no service process is left
    left = subprocess.run(["pgrep", "-f", "lmr-demo-"], capture_output=True, text=True).stdout.split()
    assert not left, f"a demo service process outlived the demo: {left}"
