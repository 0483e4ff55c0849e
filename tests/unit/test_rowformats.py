"""Row formats at the planner and reader level: Parquet row-group packing, statistics pruning
and projection; JSON Lines and CSV records with their offsets; the split contract."""

from __future__ import annotations

import io
import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from airflow_provider_lambdamr.engine import planner
from lambda_src import formats, reader, rowformats
from lambda_src import storage as st
from lambda_src.job import MapReduceJob

STORE = st.LocalStorage()


def _job(**declared) -> MapReduceJob:
    return type("Declared", (MapReduceJob,), declared)()


def _read(path, split_size: int, job: MapReduceJob, input_format: str | None = None):
    """(segments, records with their (unit, offset)) of one object, planned and read."""
    tasks, _ = planner.plan({"": [str(path)]}, split_size, 10_000, input_formats={"": input_format} if input_format
                            else None)
    segs = [seg for t in tasks for seg in t.splits]
    bad: list = []
    records = []
    for seg in segs:
        seg = reader.Segment.from_dict(json.loads(json.dumps(seg.to_dict())))  # through an event
        for block in formats.of(seg).read_blocks(STORE, seg, lambda *a: bad.append(a), 1 << 20, job):
            records.extend((r, block.unit, block.offset(i)) for i, r in enumerate(block.records))
    return segs, records, bad


def _parquet(tmp_path, table: pa.Table, row_group_size: int):
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


TABLE = pa.table({"k": [f"k{i % 37:02d}" for i in range(2000)], "v": list(range(2000)),
                  "w": [i * 0.5 for i in range(2000)]})


@settings(max_examples=25, deadline=None)
@given(row_group_size=st_.integers(20, 700), split_size=st_.one_of(st_.integers(1, 40_000), st_.just(10**9)))
def test_parquet_rows_are_read_once_in_order_whatever_the_packing(tmp_path_factory, row_group_size, split_size):
    path = _parquet(tmp_path_factory.mktemp("pq"), TABLE, row_group_size)
    segs, records, _ = _read(path, split_size, _job(input_columns=("v", "k")))
    assert [r for r, _, _ in records] == list(zip(TABLE.column("v").to_pylist(), TABLE.column("k").to_pylist(),
                                                   strict=True))
    assert [off for _, _, off in records] == list(range(TABLE.num_rows))  # the row's number in its object
    groups = [seg.row_groups for seg in segs]
    if split_size >= path.stat().st_size:
        assert groups == [(0, None)]  # the whole object, to its last row group
    else:
        assert groups[0][0] == 0 and groups[-1][1] == pq.ParquetFile(path).metadata.num_row_groups
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(groups))


def test_small_row_groups_share_a_split_and_a_large_file_makes_many(tmp_path, monkeypatch):
    path = _parquet(tmp_path, TABLE, 100)  # 20 row groups
    meta = pq.ParquetFile(path).metadata
    one = meta.row_group(0).total_byte_size
    fmt = formats.get("parquet")
    info = st.ObjectInfo(st.normalize(str(path)), path.stat().st_size)
    with monkeypatch.context() as m:  # an object that fits a split: its footer is not read to plan it
        m.setattr(rowformats, "_open", lambda *a: pytest.fail("the planner read the footer"))
        (whole,) = fmt.split(info, info.size, None)
    assert whole.row_groups == (0, None) and (whole.start, whole.end) == (0, info.size)
    assert whole.describe().endswith("row groups 0-last")
    segs, records, _ = _read(path, path.stat().st_size * 2, _job())
    assert [s.row_groups for s in segs] == [(0, None)] and len(records) == TABLE.num_rows
    segs, _, _ = _read(path, 5 * one, _job())
    assert 3 <= len(segs) <= 10 and all(s.row_groups[1] - s.row_groups[0] > 1 for s in segs[:-1])
    segs, _, _ = _read(path, 1, _job())
    assert [s.row_groups for s in segs] == [(g, g + 1) for g in range(20)]


def test_a_row_group_the_statistics_rule_out_is_not_read(tmp_path, monkeypatch):
    table = TABLE.sort_by("k")  # row groups of few keys each: their min/max rule most out
    path = _parquet(tmp_path, table, 100)
    read: list[int] = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **kw: read.append(i) or real(self, i, *a, **kw))
    job = _job(input_columns=("k", "v"), input_filter=(("k", "in", ["k03", "k30"]), ("v", ">=", 0)))
    _, records, _ = _read(path, 1 << 30, job)
    expected = [(k, v) for k, v in zip(table.column("k").to_pylist(), table.column("v").to_pylist(), strict=True)
                if k in ("k03", "k30")]
    assert [r for r, _, _ in records] == expected
    assert 0 < len(read) <= 4, f"read row groups {read} of 20"


@pytest.mark.parametrize("cond, keep", [
    (("v", "==", 5), lambda r: r["v"] == 5), (("v", "!=", 5), lambda r: r["v"] != 5),
    (("v", "<", 50), lambda r: r["v"] < 50), (("v", "<=", 50), lambda r: r["v"] <= 50),
    (("v", ">", 1990), lambda r: r["v"] > 1990), (("v", ">=", 1990), lambda r: r["v"] >= 1990),
    (("k", "not in", ["k00", "k01"]), lambda r: r["k"] not in ("k00", "k01")),
    (("w", "in", [0.5, 999.5]), lambda r: r["w"] in (0.5, 999.5)),
])
def test_each_filter_operator_on_parquet_and_json_lines_agrees_with_python(tmp_path, cond, keep):
    rows = [*TABLE.to_pylist(), {"k": None, "v": None, "w": None}]  # a null meets no condition
    table = pa.Table.from_pylist(rows, schema=TABLE.schema)
    pq_path = _parquet(tmp_path, table, 128)
    jl_path = tmp_path / "t.jsonl"
    jl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = _job(input_filter=(cond,))
    expected = [r for r in rows if r[cond[0]] is not None and keep(r)]
    for path in (pq_path, jl_path):
        _, records, bad = _read(path, 4096, job)
        assert [r for r, _, _ in records] == expected and not bad, path.name
        tables = [t for seg in _read(path, 4096, job)[0] for t in formats.of(seg).read_tables(seg, job, 1 << 20)[1]]
        assert pa.concat_tables(tables).to_pylist() == expected, path.name


@settings(max_examples=40, deadline=None)
@given(values=st_.lists(st_.one_of(st_.none(), st_.integers(), st_.text(max_size=8),
                                   st_.dictionaries(st_.text(max_size=3), st_.integers(), max_size=3)), max_size=40),
       blank=st_.sets(st_.integers(0, 40), max_size=5), crlf=st_.booleans(), split_size=st_.integers(1, 300))
def test_json_lines_are_read_once_with_their_offsets_whatever_the_split_size(tmp_path_factory, values, blank,
                                                                             crlf, split_size):
    end = "\r\n" if crlf else "\n"
    lines = []
    for i, value in enumerate(values):
        if i in blank:
            lines.append("  ")
        lines.append(json.dumps(value))
    data = "".join(line + end for line in lines).encode()
    path = tmp_path_factory.mktemp("jl") / "v.jsonl"
    path.write_bytes(data)
    _, records, bad = _read(path, split_size, _job())
    assert [r for r, _, _ in records] == values and not bad
    starts = [sum(len(x.encode()) + len(end) for x in lines[:i]) for i, line in enumerate(lines) if line.strip()]
    assert [off for _, _, off in records] == starts


def test_a_csv_header_is_read_once_per_object_and_quoted_newlines_stay_in_their_field(tmp_path):
    data = b'a,b\r\n1,"x\r\ny"\r\n2,"say ""hi"", twice"\r\n\r\n3,\r\n'
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    segs, records, bad = _read(path, 4, _job(), "csv")
    assert [(s.start, s.end) for s in segs] == [(0, len(data))]  # never cut: a whole object
    assert [r for r, _, _ in records] == [{"a": "1", "b": "x\r\ny"}, {"a": "2", "b": 'say "hi", twice'},
                                          {"a": "3", "b": ""}]
    assert [off for _, _, off in records] == [data.index(b"1,"), data.index(b"2,"), data.index(b"3,")]
    assert not bad
    _, records, _ = _read(path, 4, _job(input_columns=("b",)), "csv")
    assert [r for r, _, _ in records] == [("x\r\ny",), ('say "hi", twice',), ("",)]


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b,a\n1,2,3\n")
    with pytest.raises(reader.InputError, match=r"t\.csv: the CSV header names column\(s\) 'a' more than once"):
        _read(path, 100, _job(), "csv")


def test_a_split_carries_its_row_groups_through_an_event_and_refuses_bad_ones():
    seg = reader.Segment("file:///x.parquet", 4, 900, 1000, None, "in", "v1", "parquet", (2, 5))
    assert reader.Segment.from_dict(seg.to_dict()) == seg
    assert seg.to_dict()["row_groups"] == [2, 5] and seg.describe() == "file:///x.parquet row groups 2-4"
    whole = reader.Segment("file:///x.parquet", 0, 1000, 1000, None, None, "", "parquet", (0, None))
    assert reader.Segment.from_dict(whole.to_dict()) == whole and whole.to_dict()["row_groups"] == [0, None]
    for bad in ([3, 2], [-1, 2], [1], ["a", "b"], [True, 2], [None, 2], [-1, None]):
        with pytest.raises(ValueError, match="row_groups must be"):
            reader.Segment.from_dict({**seg.to_dict(), "row_groups": bad})
    with pytest.raises(ValueError, match="a Parquet split names its row groups"):
        formats.of(reader.Segment("file:///x.parquet", 0, 10, 10, format="parquet"))
    for fmt in ("text", "jsonl", "csv"):  # row groups name no bytes: such a split was planned as Parquet
        with pytest.raises(ValueError, match=rf"a {fmt} split has no row groups, got row_groups \[0, None\]"):
            formats.of(reader.Segment("file:///x.parquet", 0, 10, 10, format=fmt, row_groups=(0, None)))


@pytest.mark.parametrize("row_groups, named", [((3, None), "3-last"), ((2, 3), "2-2"), ((0, 3), "0-2")])
def test_a_split_naming_row_groups_the_object_lacks_is_refused_naming_them(tmp_path, row_groups, named):
    path = _parquet(tmp_path, TABLE.slice(0, 10), 5)  # 2 row groups
    info = STORE.stat(st.normalize(str(path)))
    seg = reader.Segment(info.uri, 0, info.size, info.size, None, None, info.version, "parquet", row_groups)
    with pytest.raises(reader.InputError, match=rf"^{info.uri} row groups {named}: the object has 2 row groups$"):
        list(formats.of(seg).read_blocks(STORE, seg, lambda *a: None, 1 << 20, _job()))


def test_a_malformed_filter_or_column_declaration_is_refused():
    with pytest.raises(TypeError, match=r"input_filter: \('v', '~', 1\) is not a \(column, op, value\)"):
        rowformats.check_declaration(type(_job(input_filter=(("v", "~", 1),))))
    with pytest.raises(TypeError, match=r"'in' takes a list of values, got 'abc'"):
        rowformats.check_declaration(type(_job(input_filter=(("v", "in", "abc"),))))
    with pytest.raises(TypeError, match="input_columns must be a tuple of distinct column names"):
        rowformats.check_declaration(type(_job(input_columns=("a", "a"))))


def test_a_text_object_refuses_a_job_that_declares_columns(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a\n")
    with pytest.raises(reader.InputError, match=r"t\.txt: the job declares input columns .* read as text"):
        _read(path, 100, _job(input_columns=("a",)))


def test_parquet_inferred_by_magic_bytes_and_a_compressed_parquet_refused(tmp_path):
    sink = io.BytesIO()
    pq.write_table(TABLE, sink)
    (tmp_path / "noext").write_bytes(sink.getvalue())
    segs, records, _ = _read(tmp_path / "noext", 1 << 20, _job())
    assert {s.format for s in segs} == {"parquet"} and len(records) == TABLE.num_rows
    import gzip

    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(sink.getvalue()))
    with pytest.raises(reader.InputError, match=r"t\.parquet\.gz: a Parquet object compressed as a whole \(gzip\)"):
        _read(tmp_path / "t.parquet.gz", 1 << 20, _job())


def test_vectorized_parquet_reads_only_the_projected_columns_with_declared_types(tmp_path):
    path = _parquet(tmp_path, TABLE, 500)
    job = _job(table_include=("v",), table_types={"v": "float64"})
    segs, _, _ = _read(path, 1 << 20, job)
    tables = [t for seg in segs for t in formats.of(seg).read_tables(seg, job, 1 << 20)[1]]
    out = pa.concat_tables(tables)
    assert out.column_names == ["v"] and out.schema.field("v").type == pa.float64()
    assert out.column("v").to_pylist() == [float(v) for v in range(2000)]


def test_the_arrow_filter_mask_is_the_python_filter(tmp_path):
    table = pa.table({"x": [1, None, 3, 4]})
    mask = rowformats._arrow_mask(table, [("x", "not in", (3,)), ("x", ">", 0)])
    assert mask.to_pylist() == [True, False, False, True]
    assert [rowformats._matches(r.get, [("x", "not in", (3,)), ("x", ">", 0)]) for r in table.to_pylist()] == \
        mask.to_pylist()


def test_a_csv_field_may_be_as_long_as_a_line(tmp_path):
    long = "x" * 300_000  # above the csv module's default field limit (128 KiB)
    path = tmp_path / "t.csv"
    path.write_text(f'a,b\n1,"{long}"\n')
    _, records, bad = _read(path, 100, _job(), "csv")
    assert [r for r, _, _ in records] == [{"a": "1", "b": long}] and not bad
