"""The Amplab generator: row formats, sizes, determinism, joinable URLs, files, gzip, skew."""

from __future__ import annotations

import datetime
import gzip
import re
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import amplab_gen
from lambda_src import storage as st

IP = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
REVENUE = re.compile(r"\d{1,3}\.\d{6}")
COUNTRY = re.compile(r"[A-Z]{3}")
LANGUAGE = re.compile(r"[A-Z]{3}-[A-Z]{2}")
WORD = re.compile(r"[a-z]+( [a-z]+)*")
INT = re.compile(r"[1-9]\d*")


def read_files(files: list[dict]) -> bytes:
    """The concatenated bytes of the files ``generate`` returned, decompressing gzip."""
    out = b""
    for info in files:
        path = st.local_path(info["uri"])
        if path.endswith(".gz"):
            with gzip.open(path) as fh:
                out += fh.read()
        else:
            out += Path(path).read_bytes()
    return out


def rows_of(files: list[dict]) -> list[list[str]]:
    text = read_files(files).decode("ascii")
    assert text == "" or text.endswith("\n")
    return [line.split(",") for line in text.splitlines()]


def test_uservisits_schema(tmp_path: Path) -> None:
    rows = rows_of(amplab_gen.generate(str(tmp_path), table="uservisits", rows=3000, seed=1))
    assert len(rows) == 3000
    for cols in rows:
        assert len(cols) == 9, cols
        ip, _url, date, revenue, agent, country, language, word, duration = cols
        assert IP.fullmatch(ip), ip
        assert DATE.fullmatch(date), date
        assert datetime.date(1970, 1, 1) <= datetime.date.fromisoformat(date) <= datetime.date(2000, 12, 31)
        assert REVENUE.fullmatch(revenue), revenue
        assert 0.0 <= float(revenue) < 1000.0
        assert agent and not set(agent) & set(",\"'\n\r")
        assert COUNTRY.fullmatch(country), country
        assert LANGUAGE.fullmatch(language), language
        assert WORD.fullmatch(word), word
        assert INT.fullmatch(duration) and 1 <= int(duration) <= 10000, duration


def test_rankings_schema_and_page_rank_distribution(tmp_path: Path) -> None:
    rows = rows_of(amplab_gen.generate(str(tmp_path), table="rankings", rows=20_000, seed=1))
    assert len(rows) == 20_000
    ranks = []
    for cols in rows:
        assert len(cols) == 3, cols
        url, rank, duration = cols
        assert url and " " not in url
        assert INT.fullmatch(rank) and INT.fullmatch(duration), cols
        assert 1 <= int(duration) <= 100
        ranks.append(int(rank))
    assert len({cols[0] for cols in rows}) == len(rows), "pageURLs must be unique"

    def above(threshold: int) -> float:
        return sum(r > threshold for r in ranks) / len(ranks)

    assert 0.01 <= above(1000) <= 0.05
    assert 0.10 <= above(100) <= 0.30
    assert 0.50 <= above(10) <= 0.90


@pytest.mark.parametrize(("table", "expected"), [("uservisits", 164), ("rankings", 71)])
def test_average_row_size(tmp_path: Path, table: str, expected: int) -> None:
    files = amplab_gen.generate(str(tmp_path), table=table, rows=20_000, seed=3)
    average = files[0]["bytes"] / 20_000
    assert expected * 0.9 <= average <= expected * 1.1, average
    assert amplab_gen.AVG_ROW_BYTES[table] == expected


def test_visit_dates_cover_the_query_3_window(tmp_path: Path) -> None:
    rows = rows_of(amplab_gen.generate(str(tmp_path), table="uservisits", rows=20_000, seed=4))
    inside = sum("1980-01-01" <= cols[2] <= "1980-04-01" for cols in rows)
    # Uniform over 1970..2000 puts 91 of 11,323 days (0.8%) in the window.
    assert 0.004 * len(rows) <= inside <= 0.013 * len(rows), inside


@pytest.mark.parametrize("table", ["uservisits", "rankings"])
def test_same_arguments_give_identical_bytes(tmp_path: Path, table: str) -> None:
    def run(name: str, seed: int) -> list[bytes]:
        files = amplab_gen.generate(str(tmp_path / name), table=table, rows=2500, files=2, seed=seed)
        return [Path(st.local_path(f["uri"])).read_bytes() for f in files]

    first = run("a", 7)
    assert run("b", 7) == first
    other = run("c", 8)
    assert all(o != f for o, f in zip(other, first, strict=True))


def test_dest_urls_are_rankings_page_urls(tmp_path: Path) -> None:
    rankings = rows_of(amplab_gen.generate(str(tmp_path / "r"), table="rankings", rows=50, files=3, seed=5))
    urls = {cols[0] for cols in rankings}
    assert len(urls) == 50
    assert [cols[0] for cols in rankings] == [amplab_gen.page_url(5, i) for i in range(50)]
    visits = rows_of(
        amplab_gen.generate(str(tmp_path / "u"), table="uservisits", rows=2000, seed=5, rankings_rows=50)
    )
    dest = {cols[1] for cols in visits}
    assert dest <= urls
    assert len(dest) > 40, "visits should spread over the pages"


def test_page_urls_do_not_depend_on_file_count(tmp_path: Path) -> None:
    one = rows_of(amplab_gen.generate(str(tmp_path / "one"), table="rankings", rows=100, seed=2))
    four = rows_of(amplab_gen.generate(str(tmp_path / "four"), table="rankings", rows=100, files=4, seed=2))
    assert [c[0] for c in one] == [c[0] for c in four]


def test_default_rankings_rows_is_a_tenth(tmp_path: Path) -> None:
    visits = rows_of(amplab_gen.generate(str(tmp_path), table="uservisits", rows=500, seed=6))
    assert {cols[1] for cols in visits} <= {amplab_gen.page_url(6, i) for i in range(50)}


def test_rows_are_spread_over_files(tmp_path: Path) -> None:
    files = amplab_gen.generate(tmp_path.as_uri(), table="uservisits", rows=1001, files=3)
    assert [Path(st.local_path(f["uri"])).name for f in files] == [
        "part-00000.csv",
        "part-00001.csv",
        "part-00002.csv",
    ]
    assert [f["rows"] for f in files] == [334, 334, 333]
    for info in files:
        path = Path(st.local_path(info["uri"]))
        assert path.parent == tmp_path
        assert info["bytes"] == path.stat().st_size
        assert path.read_bytes().count(b"\n") == info["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"part-0000{i}.csv" for i in range(3)]


@pytest.mark.parametrize("table", ["uservisits", "rankings"])
def test_gzip_holds_the_same_text(tmp_path: Path, table: str) -> None:
    args = {"table": table, "rows": 3000, "files": 2, "seed": 9, "skew": 0.0}
    plain = amplab_gen.generate(str(tmp_path / "plain"), **args)
    packed = amplab_gen.generate(str(tmp_path / "gz"), gzip=True, **args)
    assert [Path(st.local_path(f["uri"])).name for f in packed] == ["part-00000.csv.gz", "part-00001.csv.gz"]
    assert read_files(packed) == read_files(plain)
    for info in packed:
        data = Path(st.local_path(info["uri"])).read_bytes()
        assert info["bytes"] == len(data)
        assert data[:2] == b"\x1f\x8b"
    again = amplab_gen.generate(str(tmp_path / "gz2"), gzip=True, **args)
    assert [Path(st.local_path(f["uri"])).read_bytes() for f in again] == [
        Path(st.local_path(f["uri"])).read_bytes() for f in packed
    ]


def test_skew_sends_that_fraction_to_hot_ips(tmp_path: Path) -> None:
    hot = set(amplab_gen.HOT_IPS)
    assert len({ip[:8] for ip in hot}) == 1
    visits = rows_of(amplab_gen.generate(str(tmp_path / "s"), table="uservisits", rows=10_000, skew=0.5))
    fraction = sum(cols[0] in hot for cols in visits) / len(visits)
    assert 0.45 <= fraction <= 0.55, fraction
    assert {cols[0] for cols in visits} >= hot
    flat = rows_of(amplab_gen.generate(str(tmp_path / "f"), table="uservisits", rows=10_000))
    assert sum(cols[0] in hot for cols in flat) == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"table": "orders"}, "table"),
        ({"rows": -1}, "rows"),
        ({"files": 0}, "files"),
        ({"skew": 1.5}, "skew"),
        ({"skew": -0.1}, "skew"),
        ({"skew": float("nan")}, "skew"),
        ({"rankings_rows": 0}, "rankings_rows"),
    ],
)
def test_bad_arguments_name_the_parameter(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"table": "uservisits", "rows": 10, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} "):
        amplab_gen.generate(str(tmp_path), **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [False, True])
def test_zero_rows_write_empty_files(tmp_path: Path, compress: bool) -> None:
    files = amplab_gen.generate(str(tmp_path), table="rankings", rows=0, files=2, gzip=compress)
    assert [f["rows"] for f in files] == [0, 0]
    assert len(list(tmp_path.iterdir())) == 2
    assert read_files(files) == b""
    for info in files:
        assert info["bytes"] == Path(st.local_path(info["uri"])).stat().st_size


def test_progress_reports_rows_up_to_the_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    total = 2 * amplab_gen.BATCH_ROWS + 10
    amplab_gen.generate(
        str(tmp_path), table="uservisits", rows=total, files=2, progress=lambda d, t: calls.append((d, t))
    )
    assert len(calls) >= 2
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total

    empty: list[tuple[int, int]] = []
    amplab_gen.generate(
        str(tmp_path / "e"), table="rankings", rows=0, progress=lambda d, t: empty.append((d, t))
    )
    assert empty == [(0, 0)]


def test_writes_to_s3(s3_bucket: str) -> None:
    import boto3

    prefix = f"s3://{s3_bucket}/data/uservisits"
    files = amplab_gen.generate(prefix, table="uservisits", rows=100, files=2, gzip=True)
    assert [f["uri"] for f in files] == [f"{prefix}/part-00000.csv.gz", f"{prefix}/part-00001.csv.gz"]
    client = boto3.client("s3")
    for info in files:
        _, key = st.split_s3(info["uri"])
        body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert len(body) == info["bytes"]
        assert gzip.decompress(body).count(b"\n") == info["rows"]


# -- Parquet --------------------------------------------------------------------------------------
@pytest.mark.parametrize("table", amplab_gen.TABLES)
def test_parquet_holds_the_rows_of_the_csv_typed_and_named(tmp_path: Path, table: str, monkeypatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setattr(amplab_gen, "PARQUET_ROW_GROUP_ROWS", 3 * amplab_gen.BATCH_ROWS)
    rows = 7 * amplab_gen.BATCH_ROWS + 5
    text = rows_of(amplab_gen.generate(str(tmp_path / "csv"), table=table, rows=rows, files=2, seed=3))
    files = amplab_gen.generate(str(tmp_path / "pq"), table=table, rows=rows, files=2, seed=3, fmt="parquet")
    assert [st.basename(f["uri"]) for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    got = []
    for info in files:
        path = st.local_path(info["uri"])
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == info["rows"] and info["bytes"] == Path(path).stat().st_size
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sizes[:-1] == [3 * amplab_gen.BATCH_ROWS] * (len(sizes) - 1) and 0 < sizes[-1] <= sizes[0]
        got.extend(pq.read_table(path).to_pylist())
    names = [name for name, _ in amplab_gen.SCHEMAS[table]]
    assert list(got[0]) == names
    typed = {"string": str, "float64": float, "int64": int}
    want = [{name: typed[t](v) for (name, t), v in zip(amplab_gen.SCHEMAS[table], row, strict=True)}
            for row in text]
    assert got == want


def test_parquet_is_deterministic_and_refuses_gzip(tmp_path: Path) -> None:
    a = amplab_gen.generate(str(tmp_path / "a"), table="rankings", rows=500, seed=2, fmt="parquet")
    b = amplab_gen.generate(str(tmp_path / "b"), table="rankings", rows=500, seed=2, fmt="parquet")
    assert Path(st.local_path(a[0]["uri"])).read_bytes() == Path(st.local_path(b[0]["uri"])).read_bytes()
    with pytest.raises(ValueError, match="gzip applies to csv only"):
        amplab_gen.generate(str(tmp_path / "c"), table="rankings", rows=5, gzip=True, fmt="parquet")
    with pytest.raises(ValueError, match="fmt must be one of csv, parquet; got 'orc'"):
        amplab_gen.generate(str(tmp_path / "c"), table="rankings", rows=5, fmt="orc")
    assert not (tmp_path / "c").exists()


def test_parquet_without_rows_has_the_schema(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    files = amplab_gen.generate(str(tmp_path), table="uservisits", rows=0, fmt="parquet")
    table = pq.read_table(st.local_path(files[0]["uri"]))
    assert table.num_rows == 0 and table.column_names == [n for n, _ in amplab_gen.SCHEMAS["uservisits"]]


def test_writes_parquet_to_s3(s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    prefix = f"s3://{s3_bucket}/data/rankings"
    files = amplab_gen.generate(prefix, table="rankings", rows=300, files=1, seed=4, fmt="parquet")
    local = amplab_gen.generate(str(tmp_path), table="rankings", rows=300, files=1, seed=4, fmt="parquet")
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key="data/rankings/part-00000.parquet")["Body"].read()
    assert len(body) == files[0]["bytes"]
    assert body == Path(st.local_path(local[0]["uri"])).read_bytes()


def test_a_sample_generated_by_concurrent_runs_is_whole_and_written_once(tmp_path):
    """Two runs of an example DAG at once: each gets the whole sample, never a half-written
    one, and no private copy is left behind."""
    import threading

    target = str(tmp_path / "samples" / "uservisits")
    got: list[str] = []
    runs = [threading.Thread(target=lambda: got.append(amplab_gen.sample(target, table="uservisits", rows=3_000,
                                                                         files=3, seed=7))) for _ in range(4)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert got == [target] * 4
    reference = tmp_path / "reference"
    amplab_gen.generate(str(reference), table="uservisits", rows=3_000, files=3, seed=7)
    written = sorted(p.name for p in (tmp_path / "samples" / "uservisits").iterdir())
    assert written == sorted(p.name for p in reference.iterdir())
    for name in written:
        assert (tmp_path / "samples" / "uservisits" / name).read_bytes() == (reference / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["uservisits"]
    assert amplab_gen.run_directory("/r", "amplab-2a", "manual__2024-01-01T00:00:00+00:00") == \
        "/r/results/amplab-2a/manual__2024-01-01T00_00_00_00_00"
