"""The result writers (CSV, JSON Lines, Parquet): the same rows in every format, exact types,
and clear errors for rows that do not fit a schema."""

from __future__ import annotations

import csv
import json
import math
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from lambda_src import contract, output
from lambda_src.contract import EventError, JobConfig


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["part-00000", "part-m-00003", "part-00000.jsonl", "part-00042.parquet",
                                  "part-m-00001.parquet"])
def test_result_file_names_of_every_format(name):
    assert contract.is_result_file_name(name)


@pytest.mark.parametrize("name", ["keep.parquet", "part-00000.csv", "part-00000.parquet.bak", "part-0000.parquet",
                                  "part-00000.jsonl/x", "part-00000.PARQUET", "part-00000.arrow", "../part-00000.parquet"])
def test_other_names_are_not_result_files(name):
    assert not contract.is_result_file_name(name)


def test_part_uris_carry_the_format_extension():
    assert contract.part_uri("s3://b/out", 7, "parquet") == "s3://b/out/part-00007.parquet"
    assert contract.map_only_part_uri("s3://b/out", 2, "jsonl") == "s3://b/out/part-m-00002.jsonl"
    assert contract.part_uri("s3://b/out", 7) == "s3://b/out/part-00007"


def test_the_event_carries_the_output_format():
    cfg = JobConfig(ref="a.b:C", params={}, partitions=2, output_format="parquet")
    assert JobConfig.from_event(cfg.to_event()) == cfg
    assert JobConfig.from_event({"ref": "a.b:C", "partitions": 1}).output_format == "csv"
    with pytest.raises(EventError, match="output_format must be one of csv, jsonl, parquet, got 'orc'"):
        JobConfig.from_event({**cfg.to_event(), "output_format": "orc"})


# -- reading results back ------------------------------------------------------------------------
def _write(tmp_path, fmt, pairs=None, table=None, columns=None, types=None, name="part-00000"):
    uri = str(tmp_path / f"{name}{contract.OUTPUT_FORMATS[fmt]}")
    with output.WRITERS[fmt](uri, "partition 0", columns, types) as writer:
        if table is not None:
            writer.add_table(table)
        else:
            writer.add(pairs)
    return writer


def _read(writer) -> list[list]:
    path = writer.uri
    if writer.format == "csv":
        with open(path, newline="") as fh:
            return [list(row) for row in csv.reader(fh)]
    if writer.format == "jsonl":
        with open(path) as fh:
            return [list(json.loads(line).values()) for line in fh]
    return [list(row.values()) for row in pq.read_table(path).to_pylist()]


def _text(rows: list[list]) -> list[list[str]]:
    return [[output._field(v) for v in row] for row in rows]


KINDS = {
    "bool": hs.booleans(),
    "int": hs.integers(-(2**63), 2**63 - 1),
    "float": hs.floats(allow_nan=False, allow_infinity=False),
    "str": hs.text(hs.characters(blacklist_categories=("Cs",)), max_size=8),
}


@hs.composite
def results(draw):
    """Rows of 2 to 4 columns, each column one kind of value or None; a list value when wide."""
    kinds = draw(hs.lists(hs.sampled_from(sorted(KINDS)), min_size=2, max_size=4))
    n = draw(hs.integers(0, 30))
    cols = [draw(hs.lists(hs.none() | KINDS[k], min_size=n, max_size=n)) for k in kinds]
    rows = [list(r) for r in zip(*cols, strict=True)]
    if len(kinds) == 2:
        return [(r[0], r[1]) for r in rows]
    return [(r[0], r[1:]) for r in rows]


@settings(max_examples=150, deadline=None)
@given(pairs=results(), as_table=hs.booleans())
def test_the_rows_do_not_depend_on_the_output_format(tmp_path_factory, pairs, as_table):
    tmp_path = tmp_path_factory.mktemp("w")
    want = [output.result_fields(k, v) for k, v in pairs]
    got = {}
    for fmt in output.WRITERS:
        table = None
        if as_table and pairs:  # the vectorized path: the rows as an Arrow table
            columns = list(zip(*want, strict=True))
            table = pa.table({f"c{i}": pa.array(col, type=pa.array([v for v in col if v is not None] or [None]).type)
                              for i, col in enumerate(columns)})
        writer = _write(tmp_path, fmt, pairs=pairs, table=table)
        if not writer.written:
            assert fmt == "parquet" and not pairs  # nothing could type it
            got[fmt] = []
            continue
        assert writer.records == len(pairs)
        got[fmt] = _read(writer)
    assert got["csv"] == _text(want)
    assert got["jsonl"] == want  # typed, exactly: JSON keeps int, float, bool, str and None apart
    assert _text(got["parquet"]) == _text(want)
    assert [[type(v) for v in r] for r in got["parquet"]] == [[type(v) for v in r] for r in want]


# -- Parquet: schemas, errors --------------------------------------------------------------------
def test_a_column_typed_only_after_a_batch_of_nones_is_typed_and_written_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(output, "BATCH_ROWS", 10)
    monkeypatch.setattr(output, "ROW_GROUP_ROWS", 25)
    pairs = [(f"k{i:03d}", None if i < 37 else float(i)) for i in range(100)]
    writer = _write(tmp_path, "parquet", pairs)
    meta = pq.ParquetFile(writer.uri).metadata
    assert meta.num_row_groups > 1
    table = pq.read_table(writer.uri)
    assert table.schema == pa.schema([("key", pa.string()), ("value", pa.float64())])
    assert [tuple(r.values()) for r in table.to_pylist()] == pairs
    assert writer.output(3) == [{"partition": 3, "uri": writer.uri, "records": 100, "bytes": writer.bytes,
                                 "columns": ["key", "value"], "types": ["string", "double"]}]
    assert writer.bytes == (tmp_path / "part-00000.parquet").stat().st_size


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_type_change_after_the_first_row_group_names_the_key(tmp_path, monkeypatch):
    """A row group is written when the bad row comes: the file is dropped, its writer closed."""
    monkeypatch.setattr(output, "BATCH_ROWS", 10)
    monkeypatch.setattr(output, "ROW_GROUP_ROWS", 10)
    pairs = [(f"k{i:03d}", i) for i in range(30)] + [("late", "text")]
    with pytest.raises(output.OutputSchemaError,
                       match=r"partition 0: column 'value' holds int64 in earlier rows and string \(key 'late'\)"):
        _write(tmp_path, "parquet", pairs)
    assert not list(tmp_path.iterdir()), "a failed file must not appear"


@pytest.mark.parametrize("pairs,message", [
    ([("a", 1), ("b", 2.0)], r"column 'value' holds int \(key 'a'\) and float \(the row of key 'b': 2.0\)"),
    ([("a", True), ("b", 1)], r"column 'value' holds bool \(key 'a'\) and int"),
    ([("a", {"x": 1})], r"column 'value' holds a dict, which an inferred Parquet type cannot hold"),
    ([("a", [1, [2]])], r"column 'value_2' holds a list"),
    ([("a", 2**63)], r"the row of key 'a' has 9223372036854775808 in column 'value', which is not a int64"),
    ([("a", 1), ("b", [1, 2])], r"the row of key 'b' has 3 columns, not 2 \(key, value\)"),
])
def test_rows_that_fit_no_inferred_schema_are_named(tmp_path, pairs, message):
    with pytest.raises(output.OutputSchemaError, match=message):
        _write(tmp_path, "parquet", pairs)


def test_declared_types_convert_or_name_the_row(tmp_path):
    writer = _write(tmp_path, "parquet", [("a", 1), ("b", 2.5)], columns=("k", "v"), types={"v": "float64"})
    assert pq.read_table(writer.uri).to_pylist() == [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.5}]
    with pytest.raises(output.OutputSchemaError, match=r"the row of key 'b' has 'x' in column 'v', which is not a "
                                                       r"double"):
        _write(tmp_path, "parquet", [("a", 1), ("b", "x")], columns=("k", "v"), types={"v": "float64"})
    with pytest.raises(output.OutputSchemaError, match=r"partition 0: output_types names \['w'\], which are not among "
                                                       r"the columns \['k', 'v'\] \(output_columns\)"):
        _write(tmp_path, "parquet", [], columns=("k", "v"), types={"w": "int64"})
    for table in (None, pa.table({"key": ["a"], "value": [1]})):  # named by the first row, or the table
        with pytest.raises(output.OutputSchemaError, match=r"output_types names \['v'\], which are not among the "
                                                           r"columns \['key', 'value'\] \(.*declare output_columns\)"):
            _write(tmp_path, "parquet", [("a", 1)], table=table, types={"v": "int64"})
    with pytest.raises(output.OutputSchemaError, match="the type 'money', which is not a pyarrow type name"):
        _write(tmp_path, "parquet", [], columns=("k", "v"), types={"v": "money"})


def test_a_table_is_renamed_and_cast_to_the_declared_schema(tmp_path):
    table = pa.table({"key": ["a", "b"], "value": pa.array([1, 2], pa.int32())})
    writer = _write(tmp_path, "parquet", table=table, columns=("k", "v"), types={"v": pa.int64()})
    assert pq.read_table(writer.uri).schema == pa.schema([("k", pa.string()), ("v", pa.int64())])
    with pytest.raises(output.OutputSchemaError, match=r"the result table has 2 columns \['key', 'value'\], not 3"):
        _write(tmp_path, "parquet", table=table, columns=("a", "b", "c"))


def test_no_rows_write_no_parquet_file_unless_every_type_is_declared(tmp_path):
    assert not _write(tmp_path, "parquet", []).written
    assert not _write(tmp_path, "parquet", [], columns=("k", "v"), types={"v": "int64"}).written
    assert not list(tmp_path.iterdir())
    writer = _write(tmp_path, "parquet", [], columns=("k", "v"), types={"k": "string", "v": "int64"})
    assert pq.read_table(writer.uri).schema == pa.schema([("k", pa.string()), ("v", pa.int64())])
    assert writer.output(0)[0]["records"] == 0


def test_a_column_none_in_every_row_stays_null(tmp_path):
    writer = _write(tmp_path, "parquet", [("a", None), ("b", None)])
    assert writer.schema()["types"] == ["string", "null"]
    assert pq.read_table(writer.uri).to_pylist() == [{"key": "a", "value": None}, {"key": "b", "value": None}]


def test_jsonl_refuses_what_json_cannot_say(tmp_path):
    for value in (math.nan, math.inf):
        with pytest.raises(output.OutputSchemaError, match=r"partition 0: the row of key 'k' is not JSON"):
            _write(tmp_path, "jsonl", [("k", value)])
    assert not list(tmp_path.iterdir())


def test_jsonl_names_list_keys_and_values_and_keeps_nested_values(tmp_path):
    writer = _write(tmp_path, "jsonl", [(["a", 1], [{"x": [1, 2]}, None])])
    assert (tmp_path / "part-00000.jsonl").read_text() == (
        '{"key_1":"a","key_2":1,"value_1":{"x":[1,2]},"value_2":null}\n')
    assert writer.schema() == {"columns": ["key_1", "key_2", "value_1", "value_2"]}


@pytest.mark.parametrize("as_table", [False, True])
def test_a_carriage_return_in_a_csv_field_is_quoted(tmp_path, as_table):
    """The csv module quoted only "\\n" (its line terminator): a reader split the row at "\\r"."""
    pairs = [("a\rb", 1), ("c", "d\r")]
    table = pa.table({"key": ["a\rb", "c"], "value": ["1", "d\r"]}) if as_table else None
    writer = _write(tmp_path, "csv", pairs=pairs, table=table)
    assert _read(writer) == [["a\rb", "1"], ["c", "d\r"]]


def test_parquet_without_pyarrow_fails_once_saying_so(tmp_path, monkeypatch):
    from lambda_src import task

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as in a function without pyarrow
    with pytest.raises(output.OutputError, match="partition 0: --output-format parquet needs pyarrow") as err:
        output.result_writer(str(tmp_path / "part-00000.parquet"), "parquet", None, "partition 0")
    assert task.failure_class(err.value) is task.TaskJobError  # not retried
    assert task.failure_class(output.OutputSchemaError("x")) is task.TaskJobError
