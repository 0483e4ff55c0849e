"""The ``lambdamr`` command, run as a user would: exit codes, messages, results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_src import function_env

LAMBDAMR = [sys.executable, "-m", "airflow_provider_lambdamr.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LAMBDAMR, *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_amplab_gen_then_run_2a(tmp_path):
    gen = run("amplab-gen", "--output", str(tmp_path / "data"), "--rows", "3000", "--files", "2", "--seed", "4")
    assert gen.returncode == 0, gen.stderr
    assert "uservisits: 2 files" in gen.stdout and "rankings: 2 files" in gen.stdout
    res = run("run", "amplab-2a", "--input", str(tmp_path / "data" / "uservisits"), "--output",
              str(tmp_path / "out"), "--workers", "2", "--split-size", "100KB", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["counters"]["input_records"] == 3000
    assert "map:" in res.stderr and "tasks" in res.stderr  # progress lines
    assert (tmp_path / "out" / "_SUCCESS").is_file()


def test_amplab_3a_joins_two_named_inputs_and_names_them_when_missing(tmp_path):
    gen = run("amplab-gen", "--output", str(tmp_path / "data"), "--rows", "20000", "--files", "2", "--seed", "6")
    assert gen.returncode == 0, gen.stderr
    data = tmp_path / "data"
    res = run("run", "amplab-3a", "--input", f"uservisits={data / 'uservisits'}", "--input",
              f"rankings={data / 'rankings'}", "--output", str(tmp_path / "out"), "--json",
              "--param", "start=1970-01-01", "--param", "end=2000-12-31")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 3 and summary["counters"]["output_records"] == 1
    assert "step 2/3 map:" in res.stderr and "step 3/3 reduce:" in res.stderr  # progress per step
    ip, revenue, avg_rank = (tmp_path / "out" / "part-00000").read_text().strip().split(",")
    visits = [line.split(",") for p in sorted((data / "uservisits").iterdir())
              for line in p.read_text().splitlines()]
    ranks = {line.split(",")[0]: int(line.split(",")[1]) for p in sorted((data / "rankings").iterdir())
             for line in p.read_text().splitlines()}
    mine = [v for v in visits if v[0] == ip]  # every visit joins: the window spans all dates
    assert float(revenue) == pytest.approx(max(  # the top source IP, recomputed from the files
        sum(float(v[3]) for v in visits if v[0] == other) for other in {v[0] for v in visits}), rel=1e-12)
    assert float(avg_rank) == pytest.approx(sum(ranks[v[1]] for v in mine) / len(mine), rel=1e-12)

    res = run("run", "amplab-3a", "--input", f"uservisits={data / 'uservisits'}", "--input",
              f"rankings={data / 'rankings'}", "--output", str(tmp_path / "o3"), "--param", "top=x")
    assert res.returncode == 2 and "parameter top must be an integer, got 'x'" in res.stderr
    assert not (tmp_path / "o3").exists(), "refused before anything was planned or run"

    res = run("run", "amplab-3a", "--input", str(data / "uservisits"), "--output", str(tmp_path / "o2"))
    assert res.returncode == 1
    assert "reads the named inputs uservisits, rankings (got one unnamed input)" in res.stderr
    assert "--input uservisits=URI --input rankings=URI" in res.stderr
    assert "Traceback" not in res.stderr


def test_user_job_by_module_path(tmp_path):
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "first.py").write_text(
        "from lambda_src.job import MapReduceJob\n"
        "class FirstLetters(MapReduceJob):\n"
        "    def mapper(self, key, line):\n"
        "        if line: yield line[0], 1\n"
        "    def reducer(self, key, values):\n"
        "        yield key, sum(values)\n"
    )
    (tmp_path / "in.txt").write_text("apple\navocado\nbanana\n\ncherry\n")
    res = run("run", "mine.first:FirstLetters", "--input", str(tmp_path / "in.txt"), "--output",
              str(tmp_path / "out"), "--partitions", "1", env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert "succeeded" in res.stdout and "3 output rows" in res.stdout
    assert sorted((tmp_path / "out" / "part-00000").read_text().splitlines()) == ["a,2", "b,1", "c,1"]


def test_failure_exits_1_with_a_specific_message(tmp_path):
    (tmp_path / "uv.txt").write_text("1.2.3.4,only,three\n")
    res = run("run", "amplab-2a", "--input", str(tmp_path / "uv.txt"), "--output", str(tmp_path / "out"),
              "--workers", "1")
    assert res.returncode == 1
    assert "map task 0 of 1 failed" in res.stderr
    assert "expected 9 comma-separated columns, found 3" in res.stderr
    assert "at byte 0" in res.stderr and "uv.txt" in res.stderr
    assert "Traceback" not in res.stderr
    assert "--job-id" in res.stderr  # how to resume


def test_usage_errors_exit_2_without_traceback(tmp_path):
    cases = [
        (["run", "nosuchjob", "--input", "x", "--output", "y"], "unknown job 'nosuchjob'"),
        (["run", "wordcount", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
         "matched no objects"),
        (["run", "wordcount", "--input", "x", "--output", "y", "--split-size", "lots"], "invalid --split-size"),
        (["run", "wordcount", "--input", "x", "--output", "y", "--job-id", "../etc"], "invalid job id"),
        (["run", "wordcount", "--input", "gs://b/x", "--output", "y"], "unsupported storage scheme"),
    ]
    for args, message in cases:
        res = run(*args)
        assert res.returncode in (1, 2), (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("lambdamr")
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("lambdamr ")


def test_deploy_prints_a_stable_json_summary(aws_env, tmp_path):
    import uuid

    import boto3

    role = boto3.client("iam").create_role(
        RoleName=f"cli-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}),
    )["Role"]["Arn"]
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    args = ["deploy", "wordcount", "--role", role, "--function-prefix", prefix, "--memory-mb", "512",
            "--timeout-s", "30", "--architecture", "arm64", "--runtime-version", "python3.13"]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert set(summary["functions"]) == {"mapper", "reducer"}
    assert summary["functions"]["mapper"]["name"] == f"{prefix}-mapper"
    assert summary["architecture"] == "arm64" and summary["memory_mb"] == 512
    second = run(*args)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == summary


def test_deploy_builds_attaches_and_reports_the_pyarrow_layer(aws_env, s3_bucket, tmp_path):
    import uuid

    import boto3

    from airflow_provider_lambdamr.engine import packaging
    from tests.helpers import fake_pyarrow_wheel

    fake_pyarrow_wheel(tmp_path, version=packaging.pyarrow_version(), python="3.12")
    role = boto3.client("iam").create_role(
        RoleName=f"cli-{uuid.uuid4().hex[:8]}",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))["Role"]["Arn"]
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    args = ["deploy", "amplab-2a", "--role", role, "--function-prefix", prefix, "--pyarrow-layer",
            "--code-uri", f"s3://{s3_bucket}/code"]
    res = run(*args, env={"LAMBDAMR_WHEEL_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    layer = json.loads(res.stdout)["pyarrow_layer"]
    assert layer["arn"].startswith(f"arn:aws:lambda:us-east-1:123456789012:layer:{prefix}-pyarrow:")
    assert layer["pyarrow"] == packaging.pyarrow_version() and 0 < layer["room_left_bytes"] < 262_144_000
    cfg = boto3.client("lambda").get_function_configuration(FunctionName=f"{prefix}-reducer")
    assert [x["Arn"] for x in cfg["Layers"]] == [layer["arn"]]
    assert cfg["Environment"]["Variables"]["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"  # x86_64, the default
    assert cfg["Environment"]["Variables"]["JE_ARROW_MALLOC_CONF"] == function_env.JEMALLOC_CONF
    old = run(*args, "--runtime-version", "python3.11", env={"LAMBDAMR_WHEEL_DIR": str(tmp_path / "none")})
    assert old.returncode == 1 and "Traceback" not in old.stderr
    assert "Lambda's python3.11 runs on Amazon Linux 2 (glibc 2.26)" in old.stderr
    assert "use --runtime-version python3.12 or later, or name a layer holding pyarrow with --layer ARN" in old.stderr


def test_the_summary_line_says_how_the_map_tasks_ran(tmp_path):
    gen = run("amplab-gen", "--output", str(tmp_path / "data"), "--rows", "2000", "--files", "2", "--seed", "3")
    assert gen.returncode == 0, gen.stderr
    for flags, mode in (((), "vectorized"), (("--no-vectorized",), "record")):
        res = run("run", "amplab-1a", "--input", str(tmp_path / "data" / "rankings"), "--output",
                  str(tmp_path / f"out-{mode}"), "--workers", "2", "--max-files-per-task", "1", *flags)
        assert res.returncode == 0, res.stderr
        assert f" 2 map tasks (2 {mode}), " in res.stdout
        assert f"; map tasks {mode}) (projection for Lambda)" in res.stdout  # the cost line says what it assumes
        cost = json.loads((tmp_path / f"out-{mode}" / "_SUCCESS").read_text())["cost"]
        assert cost["mode"] == mode and cost["map_modes"] == {mode: 2}
        assert cost["note"].startswith(f"projection for AWS Lambda from local task durations; assumes the map "
                                       f"tasks {'vectorized' if mode == 'vectorized' else 'in record mode'}")


def test_aws_runtime_needs_a_role(tmp_path):
    (tmp_path / "in.txt").write_text("a\n")
    res = run("run", "wordcount", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "o"),
              "--runtime", "aws")
    assert res.returncode == 2
    assert "--runtime aws needs --role ARN" in res.stderr


def test_iam_role_lifecycle(aws_env):
    import uuid

    import boto3

    name = f"cli-role-{uuid.uuid4().hex[:8]}"
    policy = run("iam", "policy", "--input", "s3://in/data/", "--job-root", "s3://jobs/root", "--output", "s3://out/res")
    assert policy.returncode == 0, policy.stderr
    doc = json.loads(policy.stdout)
    lists = [s for s in doc["Statement"] if "s3:ListBucket" in s["Action"]]
    assert lists and all("/" not in r.split(":::", 1)[1] for s in lists for r in s["Resource"])
    created = run("iam", "create-role", "--name", name, "--input", "s3://in/data/", "--job-root",
                  "s3://jobs/root", "--output", "s3://out/res")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["created"] is True
    assert boto3.client("iam").get_role(RoleName=name)["Role"]["Arn"] == json.loads(created.stdout)["role_arn"]
    gone = run("iam", "delete-role", "--name", name)
    assert json.loads(gone.stdout) == {"role_name": name, "deleted": True}
    bad = run("iam", "policy", "--job-root", "/local/dir")
    assert bad.returncode == 2 and "job_root must be an s3:// URI" in bad.stderr
