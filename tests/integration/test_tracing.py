"""X-Ray: the driver's job segment and the handlers' task subsegments reach the daemon."""

from __future__ import annotations

import json
import socket
import time

import pytest

from airflow_provider_lambdamr.engine import packaging
from tests.helpers import run_job


@pytest.fixture
def xray_daemon(monkeypatch):
    """A UDP listener standing in for the X-Ray daemon; yields the documents received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", f"127.0.0.1:{sock.getsockname()[1]}")
    docs: list[dict] = []

    def drain(seconds: float = 1.0) -> list[dict]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            header, _, body = data.partition(b"\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            docs.append(json.loads(body))
        return docs

    yield drain
    sock.close()


def _walk(doc):
    yield doc
    for sub in doc.get("subsegments", []):
        yield from _walk(sub)


def test_job_and_task_traces_reach_the_daemon(tmp_path, xray_daemon):
    (tmp_path / "in.txt").write_text("a b\nb c\n" * 50)
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                      split_size=200, partitions=2, tracing=True, job_id="traced-1")
    docs = xray_daemon()
    trace_id = summary["trace_id"]
    assert trace_id and trace_id.startswith("1-")
    (job,) = [d for d in docs if d.get("name") == "lambdamr" and "parent_id" not in d]
    assert job["trace_id"] == trace_id
    assert job["annotations"]["job_id"] == "traced-1"
    phases = {s["name"]: s for s in job.get("subsegments", [])}
    assert {"map", "reduce"} <= set(phases)
    tasks = [d for d in docs if d.get("trace_id") == trace_id and d.get("type") == "subsegment"]
    names = {d["name"] for d in tasks}
    assert any(n.startswith("map task 0 of") for n in names), names
    assert any(n.startswith("final reduce task") for n in names), names
    map_task = next(d for d in tasks if d["name"].startswith("map task 0 of"))
    assert map_task["parent_id"] == phases["map"]["id"]
    assert map_task["annotations"] == {"job_id": "traced-1", "task": "map/00000"}
    # in Lambda's context each finished subsegment is streamed as its own document
    inner = {d["name"] for d in tasks if d.get("parent_id") == map_task["id"]}
    inner |= {s["name"] for s in _walk(map_task)}
    assert {"read+map", "write"} <= inner


def test_tracing_off_sends_nothing(tmp_path, xray_daemon):
    (tmp_path / "in.txt").write_text("a b\n")
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"))
    assert summary["trace_id"] is None
    assert xray_daemon(0.5) == []


def test_tracing_zips_carry_the_sdk_and_no_compiled_files():
    plain = packaging.build("lambda_src.jobs.wordcount:WordCount")
    traced = packaging.build("lambda_src.jobs.wordcount:WordCount", tracing=True)
    assert plain.modules == ("lambda_src",)
    assert traced.modules == ("aws_xray_sdk", "lambda_src", "wrapt")
    import zipfile

    with zipfile.ZipFile(traced.path) as zf:
        names = zf.namelist()
    assert "aws_xray_sdk/core/recorder.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyc"))]
