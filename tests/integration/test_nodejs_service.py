"""The local function service runs Node.js workers next to Python ones: a JavaScript job and a
Python job, one after the other and at once, each on its own warm workers in one service."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine.runtimes import service
from tests.helpers import read_counts
from tests.integration import test_service

svc_dir = test_service.svc_dir  # the fixture: a private service directory

pytestmark = pytest.mark.usefixtures("node")


def test_javascript_and_python_jobs_share_one_service(svc_dir, tmp_path):
    data, expected = test_service.words_input(tmp_path)

    def run(job: str, out: str) -> dict:
        summary, _ = test_service.run_on_service(svc_dir, job=job, inputs={"": [str(data)]},
                                                  output=str(tmp_path / out), partitions=2, split_size=2048)
        return summary

    run("wordcount-js", "js-first")  # starts the service
    with ThreadPoolExecutor(2) as pool:
        js, py = pool.map(run, ["wordcount-js", "wordcount"], ["js", "py"])
    for out in ("js-first", "js", "py"):
        assert read_counts(str(tmp_path / out)) == dict(expected)
    with service.ServiceClient(svc_dir) as client:
        stats = client.request("stats")
    assert len(stats["functions"]) == 2, "one warm function (its own workers) per code version"
    assert stats["invocations"] >= sum(s["tasks"]["map"] + s["tasks"]["reduce"] for s in (js, py))
    scripts = sorted(next(Path(arg).name for arg in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                          if arg.endswith((".py", ".mjs"))) for pid in stats["worker_pids"])
    assert scripts == ["_bootstrap.py"] * 2 + ["bootstrap.mjs"] * 2, "two Python and two Node.js workers"
