"""Amplab 2a checked against DuckDB on generated data: splits, gzip, many small files, skew."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from airflow_provider_lambdamr.engine import amplab_gen, planner
from lambda_src import storage as st
from tests.helpers import read_rows, run_job

COLUMNS = {
    "sourceIP": "VARCHAR", "destURL": "VARCHAR", "visitDate": "VARCHAR", "adRevenue": "DOUBLE",
    "userAgent": "VARCHAR", "countryCode": "VARCHAR", "languageCode": "VARCHAR",
    "searchWord": "VARCHAR", "duration": "BIGINT",
}


def duckdb_2a(paths: list[str]) -> dict[str, tuple[float, int]]:
    con = duckdb.connect()
    rows = con.execute(
        "SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue), COUNT(*) FROM read_csv(?, header=false, "
        "delim=',', quote='', escape='', columns=?) GROUP BY 1",
        [paths, COLUMNS],
    ).fetchall()
    return {k: (v, n) for k, v, n in rows}


def assert_equal_to_duckdb(output: str, paths: list[str], summary: dict) -> None:
    expected = duckdb_2a(paths)
    got = {row[0]: float(row[1]) for row in read_rows(output)}
    assert len(got) == len(read_rows(output)), "a key appears in two output rows"
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert value == pytest.approx(expected[key][0], rel=1e-9, abs=1e-6), key
    # every input line counted exactly once
    assert summary["counters"]["input_records"] == sum(n for _, n in expected.values())


LAYOUTS = {
    "one file, many splits": dict(files=1, rows=20_000, gzip=False, skew=0.0, split_size=200_000),
    "gzip files": dict(files=4, rows=12_000, gzip=True, skew=0.0, split_size=100_000),
    "many small files": dict(files=150, rows=6_000, gzip=False, skew=0.0, split_size=50_000),
    "skewed keys": dict(files=3, rows=15_000, gzip=False, skew=0.6, split_size=150_000),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("vectorized", [True, False], ids=["vectorized", "record"])
def test_2a_equals_duckdb(tmp_path, layout, vectorized):
    cfg = LAYOUTS[layout]
    files = amplab_gen.generate(
        str(tmp_path / "uv"), table="uservisits", rows=cfg["rows"], files=cfg["files"],
        seed=len(layout), gzip=cfg["gzip"], skew=cfg["skew"],
    )
    out = str(tmp_path / "out")
    summary = run_job(
        job="amplab-2a", inputs={"": [str(tmp_path / "uv")]}, output=out,
        split_size=cfg["split_size"], partitions=3, fan_in=4, vectorized=vectorized,
    )
    mode = "vectorized" if vectorized else "record"
    assert summary["tasks"]["map_modes"] == {mode: summary["tasks"]["map"]}
    assert summary["tasks"]["map"] > 1
    assert_equal_to_duckdb(out, [st.local_path(f["uri"]) for f in files], summary)


def test_2a_with_a_task_falling_back_to_record_mode_mixes_run_kinds(tmp_path):
    """One file with a bad record: its task falls back to record mode (JSON runs) while the
    others write Arrow runs; reducers merge both kinds and the result stays exact."""
    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=8000, files=4, seed=3)
    bad = st.local_path(files[2]["uri"])
    with open(bad, "a") as fh:
        fh.write("1.2.3.4,too,few,columns\n")
    out = str(tmp_path / "out")
    summary = run_job(
        job="amplab-2a", inputs={"": [str(tmp_path / "uv")]}, output=out,
        max_files_per_task=1, partitions=2, fan_in=2, max_bad_records=1,
    )
    assert summary["tasks"]["map_modes"] == {"vectorized": 3, "record": 1}
    assert summary["counters"]["bad_records"] == 1
    with open(bad) as fh:
        good_lines = fh.read().splitlines()[:-1]
    clean = tmp_path / "clean.csv"
    clean.write_text("\n".join(good_lines) + "\n")
    paths = [st.local_path(f["uri"]) for i, f in enumerate(files) if i != 2] + [str(clean)]
    summary["counters"]["input_records"] -= 1  # the skipped bad record was read, not counted by DuckDB
    assert_equal_to_duckdb(out, paths, summary)


RANKINGS = {"pageURL": "VARCHAR", "pageRank": "BIGINT", "avgDuration": "BIGINT"}


@pytest.mark.parametrize("query,threshold", [("amplab-1a", 1000), ("amplab-1b", 100), ("amplab-1c", 10)])
def test_scans_1abc_equal_duckdb_and_are_map_only(tmp_path, query, threshold):
    files = amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=30_000, files=3, seed=4, gzip=True)
    out = str(tmp_path / "out")
    summary = run_job(job=query, inputs={"": [str(tmp_path / "rk")]}, output=out)
    assert summary["tasks"]["reduce"] == 0
    assert all(f.startswith("part-m-") for f in summary["files"])
    expected = duckdb.connect().execute(
        "SELECT pageURL, pageRank FROM read_csv(?, header=false, delim=',', quote='', escape='', columns=?) "
        "WHERE pageRank > ?", [[st.local_path(f["uri"]) for f in files], RANKINGS, threshold]).fetchall()
    got = sorted((r[0], int(r[1])) for r in read_rows(out))
    assert got == sorted(expected) and len(got) > 0
    assert summary["counters"]["input_records"] == 30_000


@pytest.mark.parametrize("query,length", [("amplab-2b", 10), ("amplab-2c", 12)])
def test_2b_2c_with_partitions_equal_duckdb(tmp_path, query, length):
    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=20_000, files=2, seed=5)
    out = str(tmp_path / "out")
    summary = run_job(job=query, inputs={"": [str(tmp_path / "uv")]}, output=out, partitions=4,
                      split_size=500_000)
    assert summary["files"] == [f"part-{p:05d}" for p in range(4)]
    expected = dict(duckdb.connect().execute(
        f"SELECT SUBSTR(sourceIP, 1, {length}), SUM(adRevenue) FROM read_csv(?, header=false, delim=',', "
        "quote='', escape='', columns=?) GROUP BY 1", [[st.local_path(f["uri"]) for f in files], COLUMNS]).fetchall())
    got = {r[0]: float(r[1]) for r in read_rows(out)}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) <= 1e-9 * max(1.0, abs(expected[k])) for k in got)


def test_scan_vectorized_and_record_outputs_are_byte_identical(tmp_path):
    amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=20_000, files=2, seed=9)
    outputs = {}
    for vectorized in (True, False):
        out = tmp_path / f"out-{vectorized}"
        summary = run_job(job="amplab-1b", inputs={"": [str(tmp_path / "rk")]}, output=str(out),
                          vectorized=vectorized, split_size=300_000)
        assert summary["tasks"]["map_modes"] == {("vectorized" if vectorized else "record"): summary["tasks"]["map"]}
        outputs[vectorized] = {p.name: p.read_bytes() for p in sorted(out.glob("part-m-*"))}
    assert outputs[True] == outputs[False] and outputs[True]


def duckdb_3a(visits: list[str], rankings: list[str], start: str, end: str, top: int) -> list[tuple]:
    """Amplab 3a in DuckDB (ties in revenue broken by sourceIP, as the job does)."""
    return duckdb.connect().execute(
        "SELECT sourceIP, SUM(adRevenue) AS totalRevenue, AVG(pageRank) AS avgPageRank "
        "FROM read_csv(?, header=false, delim=',', quote='', escape='', columns=?) AS R, "
        "     read_csv(?, header=false, delim=',', quote='', escape='', columns=?) AS UV "
        "WHERE R.pageURL = UV.destURL AND UV.visitDate BETWEEN ? AND ? "
        "GROUP BY UV.sourceIP ORDER BY totalRevenue DESC, sourceIP LIMIT ?",
        [rankings, RANKINGS, visits, COLUMNS, start, end, top],
    ).fetchall()


LAYOUTS_3A = {
    # name: generator and run settings; "top" large enough returns every group
    "the query": dict(files=2, gzip=False, split_size=300_000, partitions=1, fan_in=2, params={}),
    "gzip, many files, every group": dict(
        files=12, gzip=True, split_size=1 << 20, partitions=3, fan_in=2,
        params={"start": "1975-01-01", "end": "1984-12-31", "top": "1000000"}),
    "small splits, top 25": dict(
        files=1, gzip=False, split_size=60_000, partitions=4, fan_in=3,
        params={"start": "1979-06-01", "end": "1981-06-01", "top": "25"}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS_3A))
def test_3a_join_equals_duckdb(tmp_path, layout):
    cfg = LAYOUTS_3A[layout]
    seed = 7 + len(layout)
    rk = amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=4_000, files=cfg["files"],
                             seed=seed, gzip=cfg["gzip"])
    uv = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=60_000, files=cfg["files"],
                             seed=seed, gzip=cfg["gzip"], rankings_rows=4_000)
    out = str(tmp_path / "out")
    summary = run_job(
        job="amplab-3a", inputs={"uservisits": [str(tmp_path / "uv")], "rankings": [str(tmp_path / "rk")]},
        output=out, split_size=cfg["split_size"], partitions=cfg["partitions"], fan_in=cfg["fan_in"],
        params=cfg["params"],
    )
    params = {"start": "1980-01-01", "end": "1980-04-01", "top": "1", **cfg["params"]}
    expected = duckdb_3a([st.local_path(f["uri"]) for f in uv], [st.local_path(f["uri"]) for f in rk],
                         params["start"], params["end"], int(params["top"]))
    rows = read_rows(out)
    assert len(expected) >= 1 and len(rows) == len(expected)
    if int(params["top"]) > len(expected):  # every group: compare as sets, order is the reducer's
        rows.sort()
        expected.sort()
    for (ip, revenue, avg_rank), (e_ip, e_revenue, e_avg) in zip(rows, expected, strict=True):
        assert ip == e_ip
        assert float(revenue) == pytest.approx(e_revenue, rel=1e-12)
        assert float(avg_rank) == pytest.approx(e_avg, rel=1e-12)
    assert summary["steps"] == 3
    assert summary["counters"]["input_records"] == 64_000
    assert summary["files"] == ["part-00000"]  # the top-N step has one partition


def test_3a_steps_after_the_join_run_on_tables_and_equal_record_mode(tmp_path, monkeypatch):
    """Vectorized, the pairs after the join stay Arrow runs through steps 2 and 3 (every
    later task's mode is "tables"), whichever the join's strategy, and the rows are record
    mode's, ties and order included."""
    amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=3_000, files=2, seed=5)
    amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=40_000, files=2, seed=5,
                        rankings_rows=3_000)
    rows, modes = {}, {}
    # the planner's factor decides the strategy: 0 broadcasts, a huge one partitions
    for run, vectorized, factor in (("broadcast", True, 0), ("partitioned", True, 10**15), ("record", False, 0)):
        monkeypatch.setattr(planner, "BROADCAST_MEMORY_FACTOR", factor)
        out = tmp_path / f"out-{run}"
        summary = run_job(
            job="amplab-3a", inputs={"uservisits": [str(tmp_path / "uv")], "rankings": [str(tmp_path / "rk")]},
            output=str(out), split_size=200_000, partitions=3, fan_in=2, vectorized=vectorized,
            keep_intermediates=True, params={"start": "1978-01-01", "end": "1982-12-31", "top": "40"})
        if vectorized:
            assert summary["join"]["strategy"] == run
        rows[run] = read_rows(str(out))
        status = Path(st.local_path(summary["job_dir"])) / "status"
        modes[run] = {json.loads(p.read_text())["stats"]["mode"] for p in status.glob("step-0[23]/**/*.json")}
    assert modes == {"broadcast": {"tables"}, "partitioned": {"tables"}, "record": {"record"}}
    assert len(rows["record"]) == 40
    for run in ("broadcast", "partitioned"):
        for got, want in zip(rows[run], rows["record"], strict=True):
            assert got[0] == want[0]
            assert [float(v) for v in got[1:]] == pytest.approx([float(v) for v in want[1:]], rel=1e-12)
