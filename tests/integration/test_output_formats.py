"""--output-format jsonl and parquet, end to end: every result read back by DuckDB as it is
(the whole output directory, one glob) and compared, row by row and exactly, with the CSV
result of the same job on the same input; locally and on S3 (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import duckdb
import pytest

from airflow_provider_lambdamr.engine import amplab_gen
from airflow_provider_lambdamr.engine.failures import JobFailed
from lambda_src import output
from tests.helpers import read_rows, run_job

READERS = {"jsonl": "read_json('{}/*.jsonl', format='newline_delimited')",
           "parquet": "read_parquet('{}/*.parquet')"}


def duckdb_rows(directory: Path, fmt: str) -> tuple[list[str], list[list[str]]]:
    """The column names and rows DuckDB reads from a result directory, each value as the
    CSV result writes it."""
    rel = duckdb.sql(f"SELECT * FROM {READERS[fmt].format(directory)}")
    return rel.columns, [[output._field(v) for v in row] for row in rel.fetchall()]


def _data(tmp_path: Path) -> dict[str, list[str]]:
    amplab_gen.generate(str(tmp_path / "rankings"), table="rankings", rows=1500, files=2, seed=4)
    amplab_gen.generate(str(tmp_path / "uservisits"), table="uservisits", rows=4000, files=3, seed=4,
                        rankings_rows=1500)
    (tmp_path / "words").mkdir()
    (tmp_path / "words" / "a.txt").write_text("the cat and the hat\nThe end, the END\n" * 40)
    return {
        "wordcount": {"": [str(tmp_path / "words")]},
        "amplab-1a": {"": [str(tmp_path / "rankings")]},
        "amplab-2a": {"": [str(tmp_path / "uservisits")]},
        "amplab-3a": {"uservisits": [str(tmp_path / "uservisits")], "rankings": [str(tmp_path / "rankings")]},
    }


#: (job, vectorized, the columns the job names): a record-mode and an Arrow reduce, a
#: map-only job both ways, and a three-step job.
CASES = [
    ("wordcount", True, ["key", "value"]),
    ("amplab-1a", True, ["pageURL", "pageRank"]),
    ("amplab-1a", False, ["pageURL", "pageRank"]),
    ("amplab-2a", True, ["sourceIPPrefix", "adRevenue"]),
    ("amplab-2a", False, ["sourceIPPrefix", "adRevenue"]),
    ("amplab-3a", False, ["sourceIP", "totalRevenue", "avgPageRank"]),
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_each_format_reads_back_in_duckdb_as_the_csv_result(tmp_path, fmt):
    inputs = _data(tmp_path)
    for job, vectorized, columns in CASES:
        common = dict(job=job, inputs=inputs[job], partitions=3, vectorized=vectorized, split_size=60_000,
                      params={"start": "1970-01-01", "end": "2000-12-31", "top": "5"} if job == "amplab-3a" else {})
        name = f"{job}-{vectorized}"
        want = run_job(output=str(tmp_path / f"{name}-csv"), **common)
        got = run_job(output=str(tmp_path / f"{name}-{fmt}"), output_format=fmt, **common)
        csv_rows = read_rows(str(tmp_path / f"{name}-csv"))
        assert csv_rows, name
        names, rows = duckdb_rows(tmp_path / f"{name}-{fmt}", fmt)
        assert names == columns, name
        assert sorted(rows) == sorted(csv_rows), name
        assert got["format"] == fmt and got["columns"] == columns
        assert got["counters"]["output_records"] == len(csv_rows) == want["counters"]["output_records"]
        listed = sorted(p.name for p in (tmp_path / f"{name}-{fmt}").glob("part-*"))
        assert listed == sorted(got["files"]) and all(f.endswith("." + fmt) for f in listed), name
        if fmt == "parquet":
            assert got["types"] == [t for t in duckdb_types(tmp_path / f"{name}-{fmt}")], name


def duckdb_types(directory: Path) -> list[str]:
    arrow = {"VARCHAR": "string", "BIGINT": "int64", "DOUBLE": "double", "BOOLEAN": "bool"}
    described = duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{directory}/*.parquet')").fetchall()
    return [arrow[t] for _, t, *_ in described]


def test_formats_on_s3(s3_bucket, tmp_path):
    """Written through S3; the files _SUCCESS lists, downloaded, are the CSV result."""
    s3 = boto3.client("s3")
    amplab_gen.generate(f"s3://{s3_bucket}/uv", table="uservisits", rows=5000, files=2, seed=6)
    common = dict(job="amplab-2a", inputs={"": [f"s3://{s3_bucket}/uv"]}, job_root=f"s3://{s3_bucket}/jobs",
                  partitions=2, split_size=150_000)
    run_job(output=f"s3://{s3_bucket}/csv", **common)
    csv_rows = sorted(read_rows(f"s3://{s3_bucket}/csv"))
    assert len(csv_rows) > 100
    for fmt in ("jsonl", "parquet"):
        for vectorized in (True, False):
            prefix = f"{fmt}-{vectorized}"
            summary = run_job(output=f"s3://{s3_bucket}/{prefix}", output_format=fmt, vectorized=vectorized,
                              **common)
            success = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())
            assert success["files"] == summary["files"] and success["format"] == fmt
            local = tmp_path / prefix
            local.mkdir()
            for name in success["files"]:
                s3.download_file(s3_bucket, f"{prefix}/{name}", str(local / name))
            assert sorted(duckdb_rows(local, fmt)[1]) == csv_rows, prefix


# -- the Parquet schema: exact, or a clear error --------------------------------------------------
def _run_fixture_job(tmp_path, fixture_jobs_path, job: str, fmt: str = "parquet", **kwargs) -> dict:
    (tmp_path / "in.txt").write_text("x\n")
    return run_job(job=f"userjobs.mixed_output:{job}", inputs={"": [str(tmp_path / "in.txt")]},
                   output=str(tmp_path / "out"), output_format=fmt, **kwargs)


def test_a_column_of_mixed_types_fails_naming_the_partition_and_the_keys(tmp_path, fixture_jobs_path):
    with pytest.raises(JobFailed) as failed:
        _run_fixture_job(tmp_path, fixture_jobs_path, "IntThenFloat", max_attempts=3)
    message = str(failed.value)
    assert "partition 0: column 'value' holds int (key 'a') and float" in message
    assert "key 'b'" in message and "output_types" in message
    assert "not retried" in message  # the job's fault: a retry writes the same rows


def test_declared_types_convert_and_an_empty_partition_still_gets_its_file(tmp_path, fixture_jobs_path):
    summary = _run_fixture_job(tmp_path, fixture_jobs_path, "Declared", partitions=4)
    assert summary["columns"] == ["name", "amount"] and summary["types"] == ["string", "double"]
    files = sorted(p.name for p in (tmp_path / "out").glob("part-*"))
    assert files == [f"part-{p:05d}.parquet" for p in range(4)] == summary["files"]
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path}/out/*.parquet') ORDER BY 1")
    assert rel.fetchall() == [("a", 1.0), ("b", 2.5)]


def test_files_whose_inferred_types_disagree_are_not_committed(tmp_path, fixture_jobs_path):
    """One partition's column is None in every row: DuckDB could not read the files as one."""
    with pytest.raises(JobFailed, match=r"disagree on their columns: part-0000\d.parquet has \(key string, "
                                        r"value (int64|null)\), part-0000\d.parquet has \(key string, value "
                                        r"(int64|null)\)"):
        _run_fixture_job(tmp_path, fixture_jobs_path, "NoneInOnePartition", partitions=2)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_jsonl_refuses_nan_naming_the_key(tmp_path, fixture_jobs_path):
    with pytest.raises(JobFailed, match=r"partition 0: the row of key 'n' is not JSON: Out of range float"):
        _run_fixture_job(tmp_path, fixture_jobs_path, "NotANumber", fmt="jsonl")


# -- --overwrite over a JSON Lines or Parquet result ----------------------------------------------
@pytest.mark.parametrize("old,new", [("parquet", "csv"), ("jsonl", "parquet"), ("parquet", "parquet")])
def test_overwrite_deletes_only_the_listed_files_of_a_result_in_another_format(tmp_path, old, new):
    (tmp_path / "in.txt").write_text("a b c a\n")
    out = tmp_path / "out"
    first = run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(out), partitions=3,
                    output_format=old, job_id="one")
    assert len(first["files"]) >= 2
    bystanders = {"keep.parquet": b"PAR1 not ours", "notes.jsonl": b"{}\n", "sub/part-00000.parquet": b"x"}
    for rel, data in bystanders.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    second = run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(out), partitions=2,
                     output_format=new, job_id="two", overwrite=True)
    for rel, data in bystanders.items():
        assert (out / rel).read_bytes() == data
    top = {p.name for p in out.iterdir() if p.is_file()}
    assert top == {"_SUCCESS", *second["files"], *(n for n in bystanders if "/" not in n)}
