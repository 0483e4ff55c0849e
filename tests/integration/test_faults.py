"""Bad input refused clearly, load without growth, faults through Airflow, no secrets in logs."""

from __future__ import annotations

import gzip
import json
import logging
import os
import tracemalloc
from types import SimpleNamespace

import pytest

from airflow_provider_lambdamr.engine.driver import JobFailed
from lambda_src import storage as st
from tests.helpers import read_counts, run_job


def test_a_broken_symlink_in_the_input_is_an_error_not_a_silent_drop(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.txt").write_text("a\n")
    (tmp_path / "in" / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    with pytest.raises(st.StorageError, match=r"cannot read .*/in/dangling\.txt: a broken symbolic link"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"))


def test_a_corrupt_gzip_fails_at_once_naming_the_object(tmp_path):
    (tmp_path / "in").mkdir()
    data = gzip.compress(os.urandom(4000).hex().encode() + b"\n")
    (tmp_path / "in" / "bad.txt.gz").write_bytes(data[:100] + b"\x00" * 50 + data[150:])
    with pytest.raises(JobFailed) as info:
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"))
    msg = str(info.value)
    assert "failed (not retried: the input itself is at fault)" in msg
    assert "bad.txt.gz: corrupt gzip data near compressed byte" in msg
    assert msg.endswith("(input: " + st.normalize(str(tmp_path / "in" / "bad.txt.gz")) + " (whole, gzip))")


def test_a_line_longer_than_max_line_bytes_is_refused_clearly_whatever_the_splits(tmp_path):
    (tmp_path / "long.txt").write_text("a\n" + "x" * 5000 + "\nb\n")
    with pytest.raises(JobFailed, match=r"long\.txt: the line crossing byte \d+ is longer than 1024 bytes "
                                        r"\(raise --max-line-bytes"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "long.txt")]}, output=str(tmp_path / "out"),
                split_size=1000, max_line_bytes=1024)
    with pytest.raises(JobFailed, match=r"long\.txt: the line at byte 2 is longer than 1024 bytes"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "long.txt")]}, output=str(tmp_path / "one"),
                max_line_bytes=1024)  # one split: no boundary crosses the line
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "long.txt")]}, output=str(tmp_path / "ok"),
                      split_size=1000, max_line_bytes=8192)
    assert read_counts(str(tmp_path / "ok")) == {"a": 1, "b": 1, "x" * 5000: 1}
    assert summary["counters"]["input_records"] == 3


def test_failed_attempts_count_as_invocations_not_as_tasks(tmp_path, fixture_jobs_path):
    """A map and a reduce attempt fail once and are retried: _SUCCESS counts each task once,
    the cost counts every invocation (the failed ones too), and progress ignores the failures."""
    from airflow_provider_lambdamr.engine.driver import phase_state

    for i in range(3):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.txt").write_text(f"w{i} all\n")
    summary = run_job(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                      output=str(tmp_path / "out"), max_files_per_task=1, partitions=1, speculation=False,
                      keep_intermediates=True,
                      params={"fail_once": str(tmp_path / "m1"), "reduce_fail_once": str(tmp_path / "m2")})
    assert (tmp_path / "m1").exists() and (tmp_path / "m2").exists()  # both faults fired
    status = tmp_path / "out" / "_jobs" / summary["job_id"] / "status"
    assert len(list(status.rglob("*.failed-*.json"))) == 2  # and left their failure records
    assert read_counts(str(tmp_path / "out")) == {"w0": 1, "w1": 1, "w2": 1, "all": 3}
    # three files of one task each, one partition in one reduce round; two failed invocations
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    assert summary["invocations"]["reduce"]["failed_invocations"] == 1
    assert (summary["tasks"]["map"], summary["tasks"]["reduce"]) == (3, 1)
    assert summary["cost"]["invocations"] == 3 + 1 + 2
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["tasks"] == summary["tasks"]
    state = phase_state(summary["job_dir"], "map")
    assert (state.done, state.total) == (3, 3)


@pytest.mark.slow
def test_five_thousand_map_tasks_with_bounded_driver_memory_and_fan_in(tmp_path):
    """5,000 map tasks into one partition: the reduce rounds (F=16) never merge more than
    16 runs in a task, and the driver's own allocations stay small."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5000):
        (root / f"f{i:05d}.txt").write_text(f"k{i % 7}\n")
    tracemalloc.start()
    try:
        summary = run_job(job="wordcount", inputs={"": [str(root)]}, output=str(tmp_path / "out"),
                          max_files_per_task=1, partitions=1, fan_in=16, keep_intermediates=True,
                          speculation=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["tasks"]["map"] == 5000
    assert read_counts(str(tmp_path / "out")) == {f"k{j}": len(range(j, 5000, 7)) for j in range(7)}
    assert peak < 150 * 1024 * 1024, f"driver allocations peaked at {peak / 2**20:.0f} MB"
    status = tmp_path / "out" / "_jobs" / summary["job_id"] / "status" / "reduce"
    reduce_stats = [json.loads(p.read_text())["stats"] for p in status.rglob("*.json")]
    assert max(s["inputs"] for s in reduce_stats) <= 16
    assert len({p.parent.name for p in status.rglob("*.json")}) == 4  # 5000 -> 313 -> 20 -> 2 -> 1


def test_a_bad_record_fails_the_airflow_task_with_file_and_offset(tmp_path):
    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    good = "1.2.3.4,u,1980-01-01,0.5,ua,USA,USA-EN,w,3\n"
    (tmp_path / "uv.txt").write_text(good * 2 + "9.9.9.9,u,1980-01-01,oops,ua,USA,USA-EN,w,3\n")
    op = LambdaMapOperator(task_id="map", job="amplab-2a", inputs=str(tmp_path / "uv.txt"),
                           output_uri=str(tmp_path / "out"), aws_conn_id=None, workers=1)
    ti = SimpleNamespace(xcom_push=lambda key, value: None)
    with pytest.raises(AirflowException) as info:
        op.execute({"dag": SimpleNamespace(dag_id="d"), "run_id": "r", "ti": ti})
    msg = str(info.value)
    assert f"bad record in {st.normalize(str(tmp_path / 'uv.txt'))} at byte {2 * len(good)}" in msg
    assert "column adRevenue is not a number: 'oops'" in msg


def test_secrets_and_payloads_are_not_logged(tmp_path, caplog, capfd, monkeypatch):
    secret = "SeCrEt-TOKEN-4242"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SeCrEt-KEY-9999")
    monkeypatch.setenv("LAMBDAMR_WORKER_LOG_LEVEL", "DEBUG")
    (tmp_path / "in.txt").write_text("payload-word-7777 other\n" * 20)
    caplog.set_level(logging.DEBUG)
    run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
            params={"token": secret})
    with pytest.raises(JobFailed):
        run_job(job="amplab-2a", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out2"),
                params={"token": secret})
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "lambdamr" in logged or "map task" in logged  # something was logged
    for needle in (secret, "SeCrEt-KEY-9999"):
        assert needle not in logged
    assert logged.count("payload-word-7777") <= 1, "only a bad-record sample may quote input data"


def test_invalid_utf8_fails_with_its_offset_or_is_skipped_and_counted(tmp_path):
    (tmp_path / "in.txt").write_bytes(b"good words\nbad \xff\xfe bytes\nmore words\n")
    with pytest.raises(JobFailed, match=r"bad record in .*in\.txt at byte 11: invalid UTF-8 \(invalid start byte "
                                        r"at byte 15\)"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"))
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "ok"),
                      max_bad_records=1)
    assert summary["counters"]["bad_records"] == 1
    assert read_counts(str(tmp_path / "ok")) == {"good": 1, "words": 2, "more": 1}


def test_the_driver_killed_mid_job_resumes_without_rerunning_done_tasks(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import FIXTURES

    for i in range(8):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.txt").write_text(f"w{i} all\n")
    cmd = [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", "userjobs.faulty:FaultyCount",
           "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--job-id", "killed-1",
           "--workers", "1", "--split-size", "8", "--param", "sleep_always=0.4", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(FIXTURES)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = tmp_path / "out" / "_jobs" / "killed-1" / "status" / "map"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(status.glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the orphaned worker finishes its task, sees its driver gone, and exits
    before = {p.name: p.stat().st_mtime_ns for p in status.glob("*.json")}
    assert 3 <= len(before) < 8
    res = subprocess.run([*cmd[:-1], "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["invocations"]["map"]["invocations"] == 8 - len(before)
    assert {p.name: p.stat().st_mtime_ns for p in status.glob("*.json") if p.name in before} == before
    assert read_counts(str(tmp_path / "out")) == {**{f"w{i}": 1 for i in range(8)}, "all": 8}


def test_nothing_read_from_storage_or_payloads_is_unpickled_or_evaluated():
    """The reference eval-ed failed payloads; our code has no pickle/marshal/eval at all."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [*(root / "lambda_src").rglob("*.py"), *(root / "airflow_provider_lambdamr").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "marshal", "shelve", "dill", "cloudpickle") for n in names):
                    offenders.append(f"{path}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []
