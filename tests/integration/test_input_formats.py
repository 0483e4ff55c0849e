"""Parquet, JSON Lines and CSV input, plain and compressed, end to end on the local runtime and
on S3 (moto), each result checked against DuckDB reading the same rows; and hostile input."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import random
from pathlib import Path

import boto3
import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from airflow_provider_lambdamr.engine.failures import JobFailed
from lambda_src import storage as st
from tests.helpers import read_rows, run_job

SALES = "userjobs.rows:SalesByRegion"
NORTH_EAST = "userjobs.rows:NorthEast"
ROWS_BY_REGION = "userjobs.rows:RegionRows"
REGIONS = ("north", "south", "east", "west")
NOTES = ("plain", 'say "hi"', "a, b", "two\nlines", "", "caf\u00e9")


def sales(n: int, seed: int) -> pa.Table:
    """Rows of region, amount (quarters: sums are exact in any order), year and a note that
    needs CSV quoting (a quote, a comma, a newline)."""
    rng = random.Random(seed)
    return pa.table({
        "region": [rng.choice(REGIONS) for _ in range(n)],
        "amount": [rng.randint(-40, 400) / 4 for _ in range(n)],
        "year": [rng.randint(2019, 2024) for _ in range(n)],
        "note": [rng.choice(NOTES) for _ in range(n)],
    })


def _zstd(data: bytes) -> bytes:
    return pa.compress(data, codec="zstd", asbytes=True)


CODECS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}


def encode(table: pa.Table, fmt: str, row_group_size: int = 1000) -> bytes:
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=row_group_size)
        return sink.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in table.to_pylist()).encode()
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)  # a header row; quotes where RFC 4180 needs them
    return sink.getvalue()


EXT = {"parquet": ".parquet", "jsonl": ".jsonl", "csv": ".csv"}


def duckdb_sums(paths: list[str], filter_sql: str = "true") -> dict[str, float]:
    """``SELECT region, SUM(amount) ... GROUP BY region`` over Parquet files, by DuckDB."""
    rows = duckdb.sql(
        f"SELECT region, SUM(amount) FROM read_parquet({paths!r}) WHERE {filter_sql} GROUP BY region"
    ).fetchall()
    return {region: float(total) for region, total in rows}


def duckdb_counts(paths: list[str]) -> dict[str, int]:
    rows = duckdb.sql(f"SELECT region, COUNT(*) FROM read_parquet({paths!r}) GROUP BY region").fetchall()
    return dict(rows)


def _sums(output: str) -> dict[str, float]:
    rows = read_rows(output)
    got = {row[0]: float(row[1]) for row in rows}
    assert len(got) == len(rows), "a key in two result rows"
    return got


def _counts(output: str) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in read_rows(output)}


@pytest.fixture
def reference(tmp_path) -> tuple[list[pa.Table], list[str]]:
    """Three tables and their Parquet files (what DuckDB reads)."""
    tables = [sales(n, seed) for seed, n in enumerate((2500, 1800, 3100))]
    paths = []
    for i, table in enumerate(tables):
        path = tmp_path / "ref" / f"t{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(table, path)
        paths.append(str(path))
    return tables, paths


def _write(directory: Path, tables: list[pa.Table], fmt: str, codec: str = "", **kw) -> None:
    directory.mkdir(parents=True)
    for i, table in enumerate(tables):
        (directory / f"part-{i}{EXT[fmt]}{codec}").write_bytes(CODECS[codec.lower()](encode(table, fmt, **kw)))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv"])
@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "record"])
def test_each_format_equals_duckdb(tmp_path, fixture_jobs_path, reference, fmt, vectorized):
    tables, paths = reference
    _write(tmp_path / "in", tables, fmt, row_group_size=300)
    # DuckDB reads our JSON Lines and CSV as the same rows as the Parquet files.
    own = {"jsonl": "read_json", "csv": "read_csv"}.get(fmt, "read_parquet")
    files = sorted(str(p) for p in (tmp_path / "in").iterdir())
    assert dict(duckdb.sql(f"SELECT region, SUM(amount) FROM {own}({files!r}) GROUP BY 1").fetchall()) == duckdb_sums(
        paths)
    formats = {"": "csv"} if fmt == "csv" else None  # a .csv is text lines unless named
    for job, expected, read in ((SALES, duckdb_sums(paths), _sums),
                                (NORTH_EAST, duckdb_sums(paths, "region IN ('north', 'east')"), _sums),
                                (ROWS_BY_REGION, duckdb_counts(paths), _counts)):
        out = str(tmp_path / f"out-{job.rsplit(':')[1]}")
        summary = run_job(job=job, inputs={"": [str(tmp_path / "in")]}, output=out, input_format=formats,
                          split_size=20_000, partitions=2, vectorized=vectorized)
        assert read(out) == expected, job
        vector_reader = fmt != "csv" and job != ROWS_BY_REGION  # RegionRows has no map_table
        assert set(summary["tasks"]["map_modes"]) == {"vectorized" if vectorized and vector_reader else "record"}
        if fmt != "csv":
            assert summary["tasks"]["map"] > 3, "split by row group / byte range into several tasks"
        if job != NORTH_EAST:
            assert summary["counters"]["input_records"] == sum(t.num_rows for t in tables)


@pytest.mark.parametrize("codec", [".gz", ".bz2", ".xz", ".zst"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_each_codec_of_each_text_format_equals_duckdb(tmp_path, fixture_jobs_path, reference, fmt, codec):
    tables, paths = reference
    _write(tmp_path / "in", tables, fmt, codec.upper() if fmt == "csv" else codec)  # any case
    out = str(tmp_path / "out")
    summary = run_job(job=SALES, inputs={"": [str(tmp_path / "in")]}, output=out,
                      input_format={"": "csv"} if fmt == "csv" else None, split_size=5_000,
                      vectorized=fmt == "jsonl")
    assert _sums(out) == duckdb_sums(paths)
    assert summary["tasks"]["map"] == len(tables), "a compressed object is one split"


@pytest.mark.parametrize("codec", [".gz", ".bz2", ".xz", ".zst"])
def test_text_by_magic_bytes_alone_equals_the_plain_text(tmp_path, codec):
    text = "".join(f"w{i % 13} w{i % 7} x\n" for i in range(3000)).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data").write_bytes(text)
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / "data").write_bytes(CODECS[codec](text))  # a name that says nothing
    for name in ("plain", "packed"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / name)]}, output=str(tmp_path / f"out-{name}"))
    assert sorted(read_rows(str(tmp_path / "out-packed"))) == sorted(read_rows(str(tmp_path / "out-plain")))


def test_formats_on_s3_equal_duckdb(s3_bucket, tmp_path, fixture_jobs_path, reference):
    tables, paths = reference
    s3 = boto3.client("s3")
    layouts = {"pq": ("parquet", ""), "jl": ("jsonl", ".zst"), "cs": ("csv", ".bz2"), "jg": ("jsonl", ".GZ"),
               "cx": ("csv", ".xz")}
    for prefix, (fmt, codec) in layouts.items():
        for i, table in enumerate(tables):
            s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/part-{i}{EXT[fmt]}{codec}",
                          Body=CODECS[codec.lower()](encode(table, fmt, row_group_size=250)))
    for prefix, (fmt, _) in layouts.items():
        for vectorized in (True, False):
            out = f"s3://{s3_bucket}/out-{prefix}-{vectorized}"
            summary = run_job(job=NORTH_EAST, inputs={"": [f"s3://{s3_bucket}/{prefix}"]}, output=out,
                              input_format={"": "csv"} if fmt == "csv" else None, job_root=f"s3://{s3_bucket}/jobs",
                              split_size=15_000, partitions=2, vectorized=vectorized)
            assert _sums(out) == duckdb_sums(paths, "region IN ('north', 'east')"), (prefix, vectorized)
            if fmt == "parquet":
                assert summary["tasks"]["map"] > 3


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row_group_size=st_.integers(50, 3000), split_size=st_.integers(2_000, 200_000), workers=st_.integers(1, 3))
def test_the_parquet_result_is_independent_of_row_groups_and_split_size(tmp_path_factory, fixture_jobs_path,
                                                                        row_group_size, split_size, workers):
    tmp = tmp_path_factory.mktemp("pq")
    tables = [sales(n, seed) for seed, n in enumerate((1500, 2600))]
    _write(tmp / "in", tables, "parquet", row_group_size=row_group_size)
    out = str(tmp / "out")
    run_job(workers=workers, job=SALES, inputs={"": [str(tmp / "in")]}, output=out, split_size=split_size,
            partitions=2)
    assert _sums(out) == duckdb_sums(sorted(str(p) for p in (tmp / "in").iterdir()))


def test_mixed_formats_in_one_job(tmp_path, fixture_jobs_path, reference):
    """A Parquet file, a JSON Lines file, a zstd JSON Lines file and (as a named input) CSV."""
    tables, paths = reference
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.parquet").write_bytes(encode(tables[0], "parquet"))
    (mixed / "b.ndjson").write_bytes(encode(tables[1], "jsonl"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "c.csv.gz").write_bytes(gzip.compress(encode(tables[2], "csv")))
    out = str(tmp_path / "out")
    run_job(job=SALES, inputs={"rows": [str(mixed)], "sheet": [str(tmp_path / "c")]}, output=out,
            input_format={"sheet": "csv"})
    assert _sums(out) == duckdb_sums(paths)


def test_empty_objects_zero_row_groups_and_a_header_only_csv_add_no_rows(tmp_path, fixture_jobs_path, reference):
    tables, paths = reference
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "data.parquet").write_bytes(encode(tables[0], "parquet"))
    for name in ("empty.parquet", "empty.jsonl", "empty.jsonl.gz", "empty.ndjson.zst"):
        (inp / name).write_bytes(b"")
    with pq.ParquetWriter(inp / "groups.parquet", tables[0].schema) as writer:  # row groups of 0, n, 0 rows
        for part in (tables[1].slice(0, 0), tables[1], tables[1].slice(0, 0)):
            writer.write_table(part)
    with pq.ParquetWriter(inp / "none.parquet", tables[0].schema):  # a schema and no row group
        pass
    assert pq.ParquetFile(inp / "groups.parquet").metadata.num_row_groups == 3
    (inp / "blank.jsonl").write_bytes(b"\n  \n")
    out = str(tmp_path / "out")
    summary = run_job(job=SALES, inputs={"": [str(inp)]}, output=out)
    assert _sums(out) == duckdb_sums(paths[:2])
    assert summary["counters"]["input_records"] == tables[0].num_rows + tables[1].num_rows
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "header-only.csv").write_bytes(b"region,amount,year,note\r\n")
    (tmp_path / "csv" / "data.csv").write_bytes(encode(tables[2], "csv"))
    run_job(job=SALES, inputs={"": [str(tmp_path / "csv")]}, output=str(tmp_path / "out-csv"), input_format="csv")
    assert _sums(str(tmp_path / "out-csv")) == duckdb_sums(paths[2:])


# -- hostile input ---------------------------------------------------------------------------------
def test_a_parquet_object_that_is_text_is_refused_naming_it(tmp_path, fixture_jobs_path):
    path = tmp_path / "in" / "fake.parquet"
    path.parent.mkdir()
    path.write_bytes(b"region,amount\nnorth,1\n")
    with pytest.raises(JobFailed, match=rf"{st.normalize(str(path))}: not a readable Parquet file") as err:
        run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / "out"))
    # An object that fits one split is not opened to plan it: its map task finds out, and
    # does not retry what the input itself is at fault for.
    assert err.value.phase == "map" and "not retried: the input itself is at fault" in str(err.value)


def test_a_gz_object_that_is_not_gzip_is_refused_naming_it(tmp_path):
    path = tmp_path / "in" / "data.txt.gz"
    path.parent.mkdir()
    path.write_bytes(b"plain text\n")
    with pytest.raises(JobFailed, match=r"data\.txt\.gz: not gzip data \(it starts with b'plain te'"):
        run_job(job="wordcount", inputs={"": [str(path)]}, output=str(tmp_path / "out"))


def test_a_corrupt_parquet_row_group_is_an_error_naming_the_object_and_row_group(tmp_path, fixture_jobs_path):
    table = sales(3000, 7)
    data = bytearray(encode(table, "parquet", row_group_size=1000))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    col = meta.row_group(1).column(1)  # amount, row group 1
    for i in range(col.data_page_offset, col.data_page_offset + col.total_compressed_size - 8):
        data[i] = 0xA5
    path = tmp_path / "in" / "bad.parquet"
    path.parent.mkdir()
    path.write_bytes(bytes(data))
    for vectorized in (True, False):
        with pytest.raises(JobFailed, match=rf"{st.normalize(str(path))}: row group 1 is corrupt"):
            run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / f"out-{vectorized}"),
                    vectorized=vectorized)


def test_a_truncated_zstd_object_is_an_error_naming_it(tmp_path, fixture_jobs_path):
    path = tmp_path / "in" / "cut.jsonl.zst"
    path.parent.mkdir()
    path.write_bytes(_zstd(encode(sales(2000, 3), "jsonl"))[:-40])
    for vectorized in (True, False):
        with pytest.raises(JobFailed, match=r"cut\.jsonl\.zst: corrupt zstd data: the stream ends before its end"):
            run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / f"out-{vectorized}"),
                    vectorized=vectorized)


def test_an_unknown_format_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown input format 'orc' \(known: csv, jsonl, parquet, text\)"):
        run_job(job="wordcount", inputs={"": [str(tmp_path)]}, output=str(tmp_path / "out"), input_format="orc")


def test_bad_json_lines_and_csv_records_are_bad_records_with_their_offsets(tmp_path, fixture_jobs_path):
    good = encode(sales(50, 1), "jsonl")
    bad_line = b'{"region": "north", "amount": \n'
    path = tmp_path / "in" / "rows.jsonl"
    path.parent.mkdir()
    path.write_bytes(good + bad_line + good)
    for vectorized in (True, False):
        with pytest.raises(JobFailed, match=rf"bad record in {st.normalize(str(path))} at byte {len(good)}: "
                                            r"invalid JSON Lines record"):
            run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / f"out-{vectorized}"),
                    vectorized=vectorized)
    summary = run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / "out-ok"), max_bad_records=1)
    assert summary["counters"]["bad_records"] == 1
    assert summary["counters"]["input_records"] == 100
    table = sales(40, 2)
    good_csv = encode(table, "csv")
    short = b'north,"1.5"\n'
    csv_path = tmp_path / "csv" / "rows.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes(good_csv + short + good_csv.split(b"\n", 1)[1])
    with pytest.raises(JobFailed, match=rf"bad record in {st.normalize(str(csv_path))} at byte {len(good_csv)}: "
                                        r"CSV record of 2 fields, the header has 4"):
        run_job(job=SALES, inputs={"": [str(csv_path)]}, output=str(tmp_path / "out-csv"), input_format="csv")


def test_columns_the_job_reads_must_exist(tmp_path, fixture_jobs_path):
    for name, data, fmt in (("x.parquet", encode(pa.table({"region": ["a"]}), "parquet"), None),
                            ("x.csv", b"region,total\na,1\n", "csv")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(JobFailed, match=rf"{st.normalize(str(path))}: the .* has no column amount that the job reads"):
            run_job(job=SALES, inputs={"": [str(path)]}, output=str(tmp_path / f"out-{name}"), input_format=fmt,
                    vectorized=False)


# -- naming the format: the CLI and the operators (both generated from JobSpec) --------------------
def test_the_cli_names_the_format_per_input(tmp_path, reference):
    import os
    import subprocess
    import sys

    from tests.conftest import FIXTURES, ROOT

    tables, paths = reference
    _write(tmp_path / "a", tables[:2], "jsonl")
    _write(tmp_path / "b", tables[2:], "csv", ".xz")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(FIXTURES)])}
    res = subprocess.run(
        [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", SALES, "--input", f"rows={tmp_path / 'a'}",
         "--input", f"sheet={tmp_path / 'b'}", "--input-format", "sheet=csv", "--output", str(tmp_path / "out"),
         "--workers", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert _sums(str(tmp_path / "out")) == duckdb_sums(paths)
    res = subprocess.run(
        [sys.executable, "-m", "airflow_provider_lambdamr.cli", "run", SALES, "--input", f"rows={tmp_path / 'a'}",
         "--input-format", "other=csv", "--output", str(tmp_path / "out2")],
        capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0 and "--input-format other=csv names no input (the inputs: rows)" in res.stderr


def test_the_map_operator_takes_a_format_or_formats_by_input(tmp_path):
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    for value, spec_value in (("parquet", {"": "parquet"}), ({"a": "csv"}, {"a": "csv"}), (None, {})):
        op = LambdaMapOperator(task_id="m", job="wordcount", inputs={"a": str(tmp_path / "i")}, output_uri=str(tmp_path / "o"),
                               job_id="j", input_format=value)
        assert op.build_spec({}).input_format == spec_value
    assert "input_format" in LambdaMapOperator.template_fields


def test_a_job_or_its_first_step_declares_the_format_and_the_input_format_option_overrides_it(
        tmp_path, fixture_jobs_path):
    rows = [{"region": r} for r in ("a", "b", "a", "c", "a", "b")]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.txt").write_text("".join(json.dumps(r) + "\n" for r in rows))  # the name says text
    run_job(job="userjobs.rows:DeclaredJsonLines", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "o1"))
    assert _counts(str(tmp_path / "o1")) == {"a": 3, "b": 2, "c": 1}
    run_job(job="userjobs.rows:TwoStepsOverJsonLines", inputs={"": [str(tmp_path / "in")]},
            output=str(tmp_path / "o2"))
    assert sorted(read_rows(str(tmp_path / "o2"))) == [["1", "c"], ["2", "b"], ["3", "a"]]  # a list: columns
    # Read as CSV, the first line is a header of one column named '{"region": "a"}'.
    with pytest.raises(JobFailed, match=r"bad record in \S+/rows\.txt at byte 16: KeyError: 'region'"):
        run_job(job="userjobs.rows:DeclaredJsonLines", inputs={"": [str(tmp_path / "in")]},
                output=str(tmp_path / "o3"), input_format="csv", vectorized=False)
    with pytest.raises(TypeError, match="step 2 declares an input_format, but only the first step reads"):
        run_job(job="userjobs.rows:LaterStepDeclaresAFormat", inputs={"": [str(tmp_path / "in")]},
                output=str(tmp_path / "o4"))
