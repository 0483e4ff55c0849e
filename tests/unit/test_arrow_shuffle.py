"""The Arrow shuffle agrees with the record-mode shuffle and formats rows the same way."""

from __future__ import annotations

import os
import zlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from lambda_src import arrow_shuffle as ash
from lambda_src import output, shuffle
from lambda_src import storage as st

KEYS = ["plain", 'quo"te', "back\\slash", "tab\tnl\n", "\x01ctl", "é日本", "", "x" * 50, "del\x7f"]


@pytest.mark.parametrize("partitions", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("keys", [KEYS, KEYS[:1] + KEYS[5:6], list(range(-3, 30))])
def test_rows_go_to_the_record_mode_partition(keys, partitions):
    table = pa.table({"key": keys, "value": [1.0] * len(keys)})
    parts = ash.partition_table(table, partitions)
    assert len(parts) == partitions
    seen = []
    for p, part in enumerate(parts):
        if part is None:
            continue
        for key in part.column("key").to_pylist():
            assert shuffle.CODEC.partition_of(shuffle.CODEC.encode_key(key), partitions) == p
            seen.append(key)
    assert sorted(map(str, seen)) == sorted(map(str, keys))


def test_runs_round_trip_and_convert_to_sorted_lines(tmp_path):
    table = pa.table({"key": ["b", "a", "c"], "value": [2.5, 1.0, None]})
    uri = st.normalize(str(tmp_path / "run.arrow"))
    assert ash.write_run(uri, table)[0] == 3
    back = ash.read_run(uri)
    assert back.equals(table)
    assert list(ash.as_lines(back)) == [b'"a"\t1.0\n', b'"b"\t2.5\n', b'"c"\tnull\n']


def test_a_corrupt_run_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.arrow"
    path.write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match=r"bad\.arrow is not a valid Arrow run"):
        ash.read_run(st.normalize(str(path)))


def _overrunning_run() -> bytes:
    """An Arrow run whose key column's last offset points past its 8-byte data buffer (into
    the value column's bytes that follow it in the stream: a read there stays in memory)."""
    table = pa.table({"key": ["abcd", "efgh"], "value": [1.0, 2.0]})
    stream = ash.to_buffer(table).to_pybytes()
    offsets = (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + (8).to_bytes(4, "little")
    assert stream.count(offsets) == 1
    return stream.replace(offsets, offsets[:8] + (16).to_bytes(4, "little"))


def test_a_run_whose_offsets_overrun_their_data_is_a_clear_error(tmp_path):
    path = tmp_path / "overrun.arrow"
    path.write_bytes(_overrunning_run())
    with pytest.raises(ValueError, match=r"overrun\.arrow is not a valid Arrow run: .*binary offsets"):
        ash.read_run(st.normalize(str(path)))


@pytest.mark.parametrize("search", ["memchr", "copy"])
def test_the_byte_search_never_reads_past_a_string_columns_data(monkeypatch, search):
    # an array Arrow's IPC reader made without validating it: the search checks the offsets itself
    keys = pa.ipc.open_stream(_overrunning_run()).read_all().column("key")
    if search == "copy":
        monkeypatch.setattr(ash, "_memchr", lambda: None)
    with pytest.raises(ValueError, match=r"not a valid string array: .* bytes 0 to 16 of a data buffer of 8"):
        ash._absent(keys, '"')


@pytest.mark.parametrize(
    "columns",
    [
        {"k": ["a", "b", "c"], "v": [3.0, 0.1 + 0.2, -0.0]},
        {"k": ["a", "b"], "n": [1, None], "ok": [True, False]},
        {"k": ["needs,quote", 'q"x', "fine"], "v": [1.5, 2.5, 1e16]},
        {"k": ["only", ""]},
        {"k": ["nested"], "v": [[1, 2]]},
    ],
)
def test_table_csv_matches_the_record_mode_formatter(columns):
    table = pa.table(columns)
    expected = output.columns_to_csv([table.column(n).to_pylist() for n in table.column_names])
    assert bytes(ash.table_to_csv(table)) == expected
    # and both equal the csv module's rendering of csv_fields
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in zip(*[table.column(n).to_pylist() for n in table.column_names], strict=True):
        writer.writerow(output.csv_fields(row[0], list(row[1:])) if len(row) > 1 else output.csv_fields(row[0], []))
    assert expected.decode() == buf.getvalue()


FLOATS = st_.floats(allow_nan=True, allow_infinity=True, width=64)
#: Magnitudes where Python and Arrow switch notation, and their neighbours.
EDGES = st_.sampled_from([1e-4, 9.999999999999999e-05, 1e-5, 1e15, 1e16, 9999999999999998.0, 1e14,
                          123456789012345.6, 0.0, -0.0, 3.0, 100.0, 0.30000000000000004])


@settings(max_examples=300, deadline=None)
@given(values=st_.lists(st_.one_of(FLOATS, EDGES, st_.none()), min_size=1, max_size=30),
       keys=st_.lists(st_.one_of(st_.text(max_size=6), st_.text(st_.sampled_from('ab ,"\r\n\x00\x7fé'), max_size=4)),
                      min_size=30, max_size=30))
@pytest.mark.parametrize("float_type", [pa.float64(), pa.float32()])
def test_any_floats_and_strings_are_written_as_the_record_mode_writes_them(values, keys, float_type):
    table = pa.table({"k": pa.array(keys[: len(values)], pa.string()), "v": pa.array(values, pa.float64()).cast(
        float_type, safe=False)})
    expected = output.columns_to_csv([table.column(n).to_pylist() for n in table.column_names])
    assert bytes(ash.table_to_csv(table)) == expected


@settings(max_examples=200, deadline=None)
@given(keys=st_.lists(st_.one_of(st_.text(max_size=8), st_.text(st_.sampled_from('ab "\\\t\x00\x1f\x7fé'), max_size=4)),
                      min_size=1, max_size=20))
def test_json_as_is_is_exactly_whether_json_writes_the_string_unescaped(keys):
    import json

    expected = all(json.dumps(k, ensure_ascii=False) == f'"{k}"' and "\x7f" not in k for k in keys)
    assert (ash._json_plain(pa.array(keys, pa.string())) is not None) == expected
    # the same strings in other layouts: sliced out of a longer array, in chunks, large_string
    padded = pa.array(['"\\\x01', *keys, '\x7f"'], pa.string()).slice(1, len(keys))
    half = len(keys) // 2
    for layout in (padded, pa.chunked_array([padded.slice(0, half), padded.slice(half)], pa.string()),
                   pa.array(keys, pa.large_string())):
        assert (ash._json_plain(layout) is not None) == expected


@settings(max_examples=200, deadline=None)
@given(strings=st_.lists(st_.text(st_.sampled_from('ab,"e\\\né'), max_size=5), min_size=1, max_size=20),
       chars=st_.sampled_from([',"', '"\\', "e", "\n"]))
@pytest.mark.parametrize("search", ["memchr", "copy"])
def test_the_byte_search_reads_exactly_the_strings_bytes(strings, chars, search):
    expected = not any(c in s for s in strings for c in chars)
    # neighbours holding every character searched for: a search past either end finds them
    padded = pa.array([',"\\\ne', *strings, ',"\\\ne'], pa.string()).slice(1, len(strings))
    half = len(strings) // 2
    layouts = [pa.array(strings, pa.string()), padded, pa.array(strings, pa.large_string()),
               pa.chunked_array([padded.slice(0, half), padded.slice(half, 0), padded.slice(half)], pa.string())]
    with pytest.MonkeyPatch.context() as mp:
        if search == "copy":
            mp.setattr(ash, "_memchr", lambda: None)
        else:
            assert ash._memchr() is not None  # this machine has a C library: the fast way is tested
        for layout in layouts:
            assert ash._absent(layout, chars) == expected


@pytest.mark.parametrize("columns", [
    {"k": pa.array(["north", "south"], pa.large_string())},
    {"k": pa.array(["north", None], pa.large_string()), "v": pa.array([1.5, 2.0])},
    {"n": pa.array([1, 2]), "k": pa.chunked_array([pa.array(["a"], pa.large_string()), pa.array(["b"], pa.large_string())])},
])
def test_large_strings_are_written_as_the_record_mode_writes_them(columns):
    # pandas and polars write Parquet whose text columns read back as large_string
    table = pa.table(columns)
    assert bytes(ash.table_to_csv(table)) == output.columns_to_csv([table.column(n).to_pylist() for n in table.column_names])


def test_runs_read_together_do_not_hold_a_file_descriptor_each(tmp_path):
    """A reduce task keeps every run it read (``fan_in`` of them, up to 10,000) until it is
    done: mapped runs must not each keep a descriptor open, or the task runs out of them
    (Lambda's limit is 1,024) and its next open fails."""
    import resource

    extra = 64
    runs = []
    for i in range(2 * extra):
        uri = f"file://{tmp_path}/run-{i}.arrow"
        ash.write_run(uri, pa.table({"key": [f"k{i}"], "value": [i]}))
        runs.append(uri)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + extra, hard))
    try:
        tables = [ash.read_run(uri) for uri in runs]
        # the task still opens files: its output, two at once
        with open(tmp_path / "a", "wb"), open(tmp_path / "b", "wb"):
            pass
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [t.column("value").to_pylist() for t in tables] == [[i] for i in range(2 * extra)]


# -- key blocks: a reduce task aggregates a partition one block of keys at a time ----------

def _crc(key) -> int:
    return zlib.crc32(shuffle.CODEC.encode_key(key))


block_keys = st_.lists(st_.text(alphabet='ab"\\\té日\x01', max_size=4), max_size=60) | st_.lists(
    st_.integers(-10**12, 10**12), max_size=60)


@settings(max_examples=60, deadline=None)
@given(keys=block_keys, partitions=st_.integers(1, 5), blocks=st_.sampled_from([1, 2, 4, 8]))
def test_each_row_lands_in_its_keys_partition_and_block(keys, partitions, blocks):
    table = pa.table({"key": keys, "value": list(range(len(keys)))})
    parts = ash.partition_blocks(table, partitions, blocks)
    assert len(parts) == partitions
    seen = []
    for p, part in enumerate(parts):
        if part is None:
            continue
        rows, sizes = part
        assert len(sizes) == blocks and sum(sizes) == rows.num_rows > 0
        start = 0
        for block, size in enumerate(sizes):
            for key, value in zip(*(rows.slice(start, size).column(c).to_pylist() for c in ("key", "value")),
                                  strict=True):
                # the reference: the codec's CRC, the partition its remainder, the block the bits above
                assert _crc(key) % partitions == p
                assert _crc(key) // partitions % blocks == block
                seen.append((key, value))
            start += size
    assert sorted(seen) == sorted(zip(keys, range(len(keys)), strict=True))


@settings(max_examples=60, deadline=None)
@given(runs=st_.lists(st_.tuples(st_.lists(st_.sampled_from(["a", "b", "c", "dd", "é", "x" * 9, "q\"", "7"]),
                                           max_size=30),
                                 st_.sampled_from([None, 1, 2, 4, 8])), min_size=1, max_size=5),
       partitions=st_.integers(1, 3))
def test_a_partitions_runs_in_any_blocks_read_as_tables_that_each_hold_whole_keys(runs, partitions):
    written = []
    tagged = []
    for n, (keys, blocks) in enumerate(runs):
        table = pa.table({"key": keys, "value": [n * 100 + i for i in range(len(keys))]})
        # partition 0's run of this map task, in `blocks` blocks or (None) without any
        part = ash.partition_blocks(table, partitions, blocks or 1)[0]
        rows = part[0] if part is not None else table.slice(0, 0)
        written.append((rows, part[1] if part is not None and blocks else None))
        tagged += zip(rows.column("key").to_pylist(), rows.column("value").to_pylist(), strict=True)
    tables = ash.key_blocks(written, partitions)
    got = []
    owner: dict[str, int] = {}
    for index, table in enumerate(tables):
        if table is None:
            continue
        for key in set(table.column("key").to_pylist()):
            assert owner.setdefault(key, index) == index, f"key {key!r} in two blocks"
        got += zip(table.column("key").to_pylist(), table.column("value").to_pylist(), strict=True)
    assert sorted(got) == sorted(tagged)


def test_block_count_is_a_power_of_two_aimed_at_the_block_rows(monkeypatch):
    assert [ash.block_count(n) for n in (0, 65535, 65536, 131072, 10**9)] == [1, 1, 2, 4, ash.MAX_BLOCKS]
    monkeypatch.setenv("LAMBDAMR_BLOCK_ROWS", "10")
    assert ash.block_count(40) == 4
    monkeypatch.setenv("LAMBDAMR_BLOCK_ROWS", "ten")
    with pytest.raises(ValueError, match="LAMBDAMR_BLOCK_ROWS='ten'"):
        ash.block_count(40)


def test_blocked_runs_round_trip(tmp_path):
    table = pa.table({"key": ["a", "b", "c"], "value": [1, 2, 3]})
    uri = st.normalize(str(tmp_path / "run.arrow"))
    ash.write_run(uri, table, [3, 0])
    back, sizes = ash.read_blocked_run(uri)
    assert sizes == [3, 0] and back.equals(table) and not back.schema.metadata
    assert ash.read_run(uri).equals(table)
    ash.write_run(uri, table, [3])  # one block: no blocks at all
    assert ash.read_blocked_run(uri)[1] is None
    with pytest.raises(ValueError, match="key blocks of 2 rows in all for a run of 3"):
        ash.write_run(uri, table, [1, 1])


@pytest.mark.parametrize("meta", [b"[1, 1]", b"[1, 2, 0]", b"[3, -0.0]", b"[3, true]", b"[-1, 4]", b"{}", b"[3", b"[3]",
                                  b"[" + b"0, " * 127 + b"3]"])
def test_a_run_with_malformed_blocks_is_a_clear_error(tmp_path, meta):
    table = pa.table({"key": ["a", "b", "c"], "value": [1, 2, 3]})
    uri = st.normalize(str(tmp_path / "run.arrow"))
    st.for_uri(uri).write_buffer(uri, ash.to_buffer(table.replace_schema_metadata({ash.BLOCKS_META: meta})))
    with pytest.raises(ValueError, match=f"{uri} is not a valid Arrow run: its key blocks"):
        ash.read_blocked_run(uri)


def test_a_run_whose_blocks_are_nested_deeper_than_python_parses_is_a_clear_error(tmp_path):
    """Forged metadata that the JSON parser cannot even descend (a RecursionError, not a
    ValueError) is refused by name like any other."""
    table = pa.table({"key": ["a", "b", "c"], "value": [1, 2, 3]})
    uri = st.normalize(str(tmp_path / "run.arrow"))
    st.for_uri(uri).write_buffer(uri, ash.to_buffer(table.replace_schema_metadata({ash.BLOCKS_META: b"[" * 100_000})))
    with pytest.raises(ValueError, match=f"{uri} is not a valid Arrow run: its key blocks"):
        ash.read_blocked_run(uri)


@pytest.mark.parametrize("blocks", [None, [3], [1, 2]])
def test_a_tables_own_block_metadata_never_stands_for_the_runs_blocks(tmp_path, blocks):
    """Only write_run's ``blocks`` say how a run's rows lie: a table that arrives carrying
    ``lambdamr.blocks`` in its metadata (a user's table read from elsewhere, passed through
    map_table or combine_table) does not lend the run blocks its rows are not in."""
    table = pa.table({"key": ["a", "b", "c"], "value": [1, 2, 3]})
    stale = table.replace_schema_metadata({ash.BLOCKS_META: b"[2, 1]", b"other": b"kept"})
    uri = st.normalize(str(tmp_path / "run.arrow"))
    ash.write_run(uri, stale, blocks)
    back, sizes = ash.read_blocked_run(uri)
    assert sizes == (blocks if blocks is not None and len(blocks) > 1 else None)
    assert back.schema.metadata == {b"other": b"kept"} and back.equals(table)


@settings(max_examples=60, deadline=None)
@given(keys=st_.lists(st_.text(alphabet='ab"é\x01', max_size=3) | st_.integers(-50, 50), min_size=2, max_size=40),
       partitions=st_.integers(1, 4), blocks=st_.sampled_from([2, 4, 8]), data=st_.data())
def test_a_run_whose_block_sizes_were_altered_is_refused_not_read_with_keys_in_two_blocks(
        tmp_path_factory, keys, partitions, blocks, data):
    """Metadata that adds up and has the right shape, but puts the boundaries between blocks
    where the rows' keys do not change block: the reduce task would aggregate one key in two
    calls (two result rows for it). Refused by the run's name instead."""
    table = pa.table({"key": pa.array([str(k) for k in keys]), "value": list(range(len(keys)))})
    part = ash.partition_blocks(table, partitions, blocks)[0]
    if part is None:
        return
    rows, sizes = part
    forged = data.draw(st_.lists(st_.integers(0, rows.num_rows), min_size=blocks - 1, max_size=blocks - 1)
                       .map(lambda cuts: [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), rows.num_rows],
                                                                 strict=True)]))
    uri = st.normalize(str(tmp_path_factory.mktemp("run") / "run.arrow"))
    ash.write_run(uri, rows, forged)
    if forged == sizes:
        assert ash.read_blocked_run(uri, partitions)[1] == sizes
        return
    with pytest.raises(ValueError, match=f"{uri} is not a valid Arrow run: .*block"):
        ash.read_blocked_run(uri, partitions)


def _blocked_run(keys: list[str], blocks: int) -> tuple[pa.Table, list[int] | None]:
    table = pa.table({"key": keys, "value": list(range(len(keys)))})
    part = ash.partition_blocks(table, 1, blocks)[0]
    return part if blocks > 1 else (table, None)


@pytest.mark.parametrize(("runs", "expected"), [
    # (rows, blocks) of each run: the reduce task uses the most blocks that leave at most an
    # eighth of its rows in runs with fewer (those it must split, a CRC-32 a key)
    ([(1000, 8), (1000, 4)], 4),          # two halves either side of a power of two: merge, never split
    ([(1000, 8), (1000, 8), (100, 2)], 8),  # a small run is split
    ([(1000, 8), (1000, 8), (100, 1), (100, 1)], 8),  # so are small runs without blocks
    ([(1000, 8), (150, 1)], 1),           # more than an eighth: no blocks at all
    ([(1000, 8), (1000, 1)], 1),          # a large run without blocks: no blocks at all
    ([(0, 1), (10, 16)], 16),             # an empty run counts for nothing
])
def test_a_reduce_task_uses_the_most_blocks_it_need_not_split_many_rows_for(runs, expected):
    keys = [f"k{i}" for i in range(5000)]
    written, start = [], 0
    for rows, blocks in runs:
        written.append(_blocked_run(keys[start:start + rows], blocks))
        start += rows
    tables = ash.key_blocks(written, 1)
    assert len(tables) == expected
    got = sorted(k for t in tables if t is not None for k in t.column("key").to_pylist())
    assert got == sorted(keys[:start])
