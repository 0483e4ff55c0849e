"""A JavaScript job through the Airflow operators: the deferrable map and reduce operators run
wordcount-js on the local function service (Node.js workers), deferring and resuming as they do
for a Python job."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

from lambda_src import storage as st
from tests.airflow.test_deferral import _context, _drive, _map_op, _reduce_op
from tests.helpers import read_counts
from tests.integration import test_service

svc_dir = test_service.svc_dir  # the fixture: a private service directory

pytestmark = pytest.mark.usefixtures("node")


def test_deferrable_operators_run_a_javascript_job(svc_dir, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    expected: collections.Counter = collections.Counter()
    for i in range(4):
        text = "".join(f"Word{j % 7} it's x{i}\n" for j in range(50 + i))
        (data / f"f{i}.txt").write_text(text)
        expected.update(re.findall(r"[\w']+", text.lower()))
    summary, map_deferrals = _drive(_map_op(tmp_path, str(data), job="wordcount-js"), _context())
    assert summary["map_tasks"] > 2 and map_deferrals
    manifest = json.loads(Path(st.local_path(summary["job_dir"]), "jobdata.json").read_text())
    assert manifest["spec"]["job_ref"].endswith("lambda_src/nodejs/jobs/wordcount.mjs")
    _drive(_reduce_op(summary["job_dir"]), _context())
    assert read_counts(str(tmp_path / "out")) == dict(expected)
