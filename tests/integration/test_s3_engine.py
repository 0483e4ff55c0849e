"""The same jobs with s3:// input, output and job root, against moto's server on 127.0.0.1.

Worker processes inherit AWS_ENDPOINT_URL, so the handlers' boto3 clients reach moto too.
"""

from __future__ import annotations

import collections
import gzip
import json
import re

import boto3

from airflow_provider_lambdamr.engine import amplab_gen
from lambda_src import storage as st
from tests.helpers import read_counts, read_rows, run_job
from tests.integration.test_amplab_duckdb import duckdb_2a


def test_wordcount_on_s3(s3_bucket, tmp_path):
    s3 = boto3.client("s3")
    expected = collections.Counter()
    for i in range(5):
        text = "\n".join(f"w{j % 7} W{(i * j) % 5} it's" for j in range(200 + i))
        expected.update(re.findall(r"[\w']+", text.lower()))
        body = gzip.compress(text.encode()) if i == 0 else text.encode()
        s3.put_object(Bucket=s3_bucket, Key=f"in/part-{i}" + (".gz" if i == 0 else ""), Body=body)
    s3.put_object(Bucket=s3_bucket, Key="in2/not-mine", Body=b"must not be read")
    out = f"s3://{s3_bucket}/out"
    summary = run_job(
        job="wordcount", inputs={"": [f"s3://{s3_bucket}/in"]}, output=out,
        job_root=f"s3://{s3_bucket}/jobs", split_size=700, partitions=2, fan_in=2,
    )
    assert read_counts(out) == dict(expected)
    success = json.loads(s3.get_object(Bucket=s3_bucket, Key="out/_SUCCESS")["Body"].read())
    assert success["job_id"] == summary["job_id"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="jobs/")["Contents"]]
    assert f"jobs/{summary['job_id']}/jobdata.json" in keys
    job = f"jobs/{summary['job_id']}/"
    assert not [k for k in keys if k.startswith((job + "map/", job + "reduce/"))], "intermediates left"
    assert any(k.startswith(job + "status/reduce/") for k in keys)


def test_amplab_2a_on_s3_equals_duckdb(s3_bucket, tmp_path):
    local = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=6000, files=3, seed=5)
    remote = amplab_gen.generate(f"s3://{s3_bucket}/uv", table="uservisits", rows=6000, files=3, seed=5)
    assert [f["bytes"] for f in local] == [f["bytes"] for f in remote]
    for vectorized in (True, False):
        out = f"s3://{s3_bucket}/out-{vectorized}"
        summary = run_job(
            job="amplab-2a", inputs={"": [f"s3://{s3_bucket}/uv"]}, output=out,
            job_root=f"s3://{s3_bucket}/jobs", split_size=150_000, partitions=2, vectorized=vectorized,
        )
        assert summary["tasks"]["map"] > 3
        expected = duckdb_2a([st.local_path(f["uri"]) for f in local])
        got = {r[0]: float(r[1]) for r in read_rows(out)}
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k][0]) <= 1e-9 * max(1.0, abs(expected[k][0])) for k in got)
        assert summary["counters"]["input_records"] == 6000


def test_s3_requests_are_counted_into_the_cost(s3_bucket):
    s3 = boto3.client("s3")
    for i in range(3):
        s3.put_object(Bucket=s3_bucket, Key=f"c/{i}.txt", Body=b"a b c\n" * 10)
    summary = run_job(job="wordcount", inputs={"": [f"s3://{s3_bucket}/c"]}, output=f"s3://{s3_bucket}/o",
                      max_files_per_task=1, partitions=1)
    cost = summary["cost"]
    # at least: 3 map GETs, 3 map run PUTs + 3 status PUTs, the reducer's output and status PUTs
    assert cost["s3_requests"] >= (3 * 0.0004 + 8 * 0.005) / 1000
    assert cost["total"] > cost["lambda_compute"]


def test_amplab_3a_multi_step_on_s3_equals_duckdb(s3_bucket, tmp_path):
    """Named inputs, three steps, pinned later-step plans and cleanup, all on S3."""
    from tests.integration.test_amplab_duckdb import duckdb_3a

    tables = {}
    for table, rows in (("rankings", 2_000), ("uservisits", 30_000)):
        kw = {"rankings_rows": 2_000} if table == "uservisits" else {}
        local = amplab_gen.generate(str(tmp_path / table), table=table, rows=rows, files=2, seed=9, **kw)
        amplab_gen.generate(f"s3://{s3_bucket}/{table}", table=table, rows=rows, files=2, seed=9, **kw)
        tables[table] = [st.local_path(f["uri"]) for f in local]
    out = f"s3://{s3_bucket}/out3a"
    summary = run_job(
        job="amplab-3a", inputs={t: [f"s3://{s3_bucket}/{t}"] for t in tables}, output=out,
        job_root=f"s3://{s3_bucket}/jobs", split_size=400_000, partitions=3, fan_in=2,
        params={"start": "1975-01-01", "end": "1995-12-31", "top": "20"},
    )
    expected = duckdb_3a(tables["uservisits"], tables["rankings"], "1975-01-01", "1995-12-31", 20)
    rows = read_rows(out)
    assert [r[0] for r in rows] == [e[0] for e in expected]
    assert all(abs(float(r[1]) - e[1]) <= 1e-9 * abs(e[1]) for r, e in zip(rows, expected, strict=True))
    assert summary["steps"] == 3
    s3 = boto3.client("s3")
    job = f"jobs/{summary['job_id']}/"
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix=job)
            for o in page.get("Contents", [])]
    assert job + "step-02/plan.json" in keys and job + "step-03/plan.json" in keys
    assert any(k.startswith(job + "status/step-03/reduce/") for k in keys)
    left = [k for k in keys if any(k.startswith(job + d) for d in
                                   ("map/", "reduce/", "step-02/map/", "step-02/reduce/", "step-03/map/"))]
    assert left == [], "intermediates of some step were left behind"
