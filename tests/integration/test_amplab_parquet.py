"""Amplab 1a, 2a and 3a on the Parquet tables ``amplab-gen --format parquet`` writes, both
mapper modes, locally and on S3, checked against DuckDB's answer on the same Parquet files."""

from __future__ import annotations

import duckdb
import pytest

from airflow_provider_lambdamr.engine import amplab_gen
from lambda_src import storage as st
from tests.helpers import read_rows, run_job

SQL = {
    "amplab-1a": "SELECT pageURL, pageRank FROM rankings WHERE pageRank > 1000",
    "amplab-2a": "SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY 1",
    "amplab-3a": (
        "SELECT sourceIP, SUM(adRevenue) AS totalRevenue, AVG(pageRank) AS avgPageRank "
        "FROM rankings AS R, uservisits AS UV WHERE R.pageURL = UV.destURL "
        "AND UV.visitDate BETWEEN '1975-01-01' AND '1990-12-31' "
        "GROUP BY UV.sourceIP ORDER BY totalRevenue DESC, sourceIP LIMIT 20"
    ),
}
PARAMS = {"amplab-3a": {"start": "1975-01-01", "end": "1990-12-31", "top": "20"}}


def duckdb_answer(query: str, tables: dict[str, list[str]]) -> list[tuple]:
    con = duckdb.connect()
    for name, paths in tables.items():
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({paths!r})")
    return con.execute(SQL[query]).fetchall()


def assert_same(got: list[list[str]], want: list[tuple], query: str) -> None:
    assert len(got) == len(want) > 0, query
    mine = {row[0]: row[1:] for row in got}
    theirs = {str(row[0]): row[1:] for row in want}
    assert mine.keys() == theirs.keys(), query
    for key, values in mine.items():
        for a, b in zip(values, theirs[key], strict=True):
            if isinstance(b, int):
                assert int(a) == b, (query, key)
            else:
                assert float(a) == pytest.approx(b, rel=1e-9, abs=1e-9), (query, key)


def _tables(base: str) -> dict[str, list[str]]:
    files = {
        "rankings": amplab_gen.generate(f"{base}/rankings", table="rankings", rows=3000, files=2, seed=9,
                                        fmt="parquet"),
        "uservisits": amplab_gen.generate(f"{base}/uservisits", table="uservisits", rows=9000, files=3, seed=9,
                                          rankings_rows=3000, fmt="parquet"),
    }
    return {t: [f["uri"] for f in fs] for t, fs in files.items()}


def _inputs(query: str, base: str) -> dict[str, list[str]]:
    if query == "amplab-3a":
        return {"uservisits": [f"{base}/uservisits"], "rankings": [f"{base}/rankings"]}
    return {"": [f"{base}/{'rankings' if query == 'amplab-1a' else 'uservisits'}"]}


@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "record"])
def test_amplab_on_parquet_equals_duckdb(tmp_path, vectorized):
    base = str(tmp_path / "data")
    uris = _tables(base)
    local = {t: [st.local_path(u) for u in us] for t, us in uris.items()}
    for query in SQL:
        out = str(tmp_path / f"{query}-out")
        summary = run_job(job=query, inputs=_inputs(query, base), output=out, partitions=2, vectorized=vectorized,
                          params=PARAMS.get(query, {}), split_size=200_000)
        modes = summary["tasks"]["map_modes"]
        if query != "amplab-3a":  # 3a is three steps: record mode
            assert modes == {"vectorized" if vectorized else "record": summary["tasks"]["map"]}, query
        tables = {t: local[t] for t in ("rankings", "uservisits") if t in SQL[query]}
        assert_same(read_rows(out), duckdb_answer(query, tables), query)
        read = [u for us in _inputs(query, base).values() for u in us]
        assert summary["counters"]["input_records"] == sum(9000 if "uservisits" in u else 3000 for u in read)


def test_amplab_on_parquet_in_s3_equals_duckdb(s3_bucket, tmp_path):
    base = f"s3://{s3_bucket}/data"
    _tables(base)
    local = _tables(str(tmp_path / "data"))  # the same bytes, for DuckDB
    for query in ("amplab-2a", "amplab-3a"):
        out = f"s3://{s3_bucket}/{query}"
        run_job(job=query, inputs=_inputs(query, base), output=out, job_root=f"s3://{s3_bucket}/jobs",
                partitions=2, params=PARAMS.get(query, {}), output_format="parquet")
        rows = _parquet_rows_from_s3(s3_bucket, query, tmp_path / f"{query}-result")
        tables = {t: [st.local_path(u) for u in local[t]] for t in ("rankings", "uservisits") if t in SQL[query]}
        assert_same(rows, duckdb_answer(query, tables), query)


def _parquet_rows_from_s3(bucket: str, prefix: str, into) -> list[list[str]]:
    import json

    import boto3

    from lambda_src import output

    s3 = boto3.client("s3")
    into.mkdir()
    files = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS")["Body"].read())["files"]
    for name in files:
        s3.download_file(bucket, f"{prefix}/{name}", str(into / name))
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{into}/*.parquet')").fetchall()
    return [[output._field(v) for v in row] for row in rows]
