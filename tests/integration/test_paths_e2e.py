"""Real jobs (local runtime, worker processes) over names that need encoding, links and S3 keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from lambda_src import storage as st
from tests.helpers import read_counts, run_job

ROOT = str(Path(__file__).resolve().parents[2])  # this tree, in the CLI's processes too
NAMES = ["a%41.txt", "aA.txt", "h#sh.txt", "q?.txt", "sp ace.txt", "ü.txt"]


def _word(i: int) -> str:
    return f"only{'abcdef'[i]}"


def test_every_oddly_named_file_is_read_once_and_an_output_named_o_hash_x_holds_its_state(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(NAMES):
        (src / name).write_text(f"shared {_word(i)}\n")
    out = tmp_path / "o#x"
    summary = run_job(job="wordcount", inputs={"": [str(src)]}, output=str(out), job_id="odd-names", partitions=2)
    assert read_counts(str(out)) == {"shared": len(NAMES), **{_word(i): 1 for i in range(len(NAMES))}}
    assert summary["counters"]["input_objects"] == len(NAMES)
    assert sorted(os.listdir(tmp_path)) == ["in", "o#x"]  # no "o" holding job state
    assert (out / "_jobs" / "odd-names" / "jobdata.json").is_file()
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["output"] == st.normalize(str(out)) and success["output"].endswith("/o%23x")
    assert st.local_path(success["output"]) == str(out)


def test_the_cli_reads_a_symlinked_directory_and_survives_a_cycle(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "top.txt").write_text("top\n")
    (tmp_path / "data" / "deep").mkdir(parents=True)
    (tmp_path / "data" / "deep" / "x.txt").write_text("deep deep\n")
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "data")
    (tmp_path / "data" / "deep" / "loop").symlink_to(tmp_path / "data")
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", "wordcount",
         "--input", str(tmp_path / "in"), "--output", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "symbolic link cycle" in res.stderr
    assert read_counts(str(out)) == {"top": 1, "deep": 2}


@pytest.mark.parametrize(("inputs", "output", "extra", "error"), [
    (["in"], "in/out", [], "the output file://{t}/in/out lies inside the input file://{t}/in"),
    (["in"], "out", ["--job-root", "in/jobs"], "the job root file://{t}/in/jobs lies inside the input"),
    (["in", "in"], "out", [], "the input lists file://{t}/in twice"),
    (["in", "in/f.txt"], "out", [], "lists file://{t}/in/f.txt and file://{t}/in, which holds it"),
    (["in"], "/", [], "the output must not be the file system root (file:///)"),
])
def test_the_cli_refuses_overlapping_locations_before_running(tmp_path, inputs, output, extra, error):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "f.txt").write_text("one two\n")
    args = [a for i in inputs for a in ("--input", i)]
    res = subprocess.run(
        [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", "wordcount", *args,
         "--output", output, *extra, "--workers", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert res.returncode != 0
    assert error.format(t=tmp_path) in res.stderr
    assert sorted(os.listdir(tmp_path / "in")) == ["f.txt"]  # nothing written into the input


def test_s3_keys_with_special_characters_run_through_a_job(s3_bucket):
    s3 = boto3.client("s3")
    keys = [f"in dir/{n}" for n in NAMES] + ["in dir/100%.txt"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=f"shared w{i}\n".encode())
    out = f"s3://{s3_bucket}/o#x ?%"
    run_job(job="wordcount", inputs={"": [f"s3://{s3_bucket}/in dir"]}, output=out, job_id="s3-odd",
            partitions=2)
    assert read_counts(out) == {"shared": len(keys), **{f"w{i}": 1 for i in range(len(keys))}}
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="o#x ?%/")["Contents"]]
    assert "o#x ?%/_SUCCESS" in listed and "o#x ?%/_jobs/s3-odd/jobdata.json" in listed
