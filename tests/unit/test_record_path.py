"""The record path in one process: the map loop and its buffer, the merge, the grouping.

Property tests: the result depends on the input alone, not on how the input is split
into map tasks, the buffer's flush and spill sizes, the partitions, whether the combiner
runs, whether runs are merged in memory or streamed, or the grouping's batch size. Unit
tests of the pieces: a refused record adds nothing, failures are met in line order, a hot
key is streamed, a batch that does not decode item by item is refused.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from lambda_src import contract, mapper, output, reader, reducer, shuffle
from lambda_src import storage as st
from lambda_src.job import MapReduceJob, Step

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

#: Keys Python's equality would merge (1, 1.0, True; 0, -0.0, False), and ordinary ones.
keys = s.sampled_from([0, 0.0, -0.0, False, 1, 1.0, True, "1", None, "", "a", "a\tb", "é", [1], (1,),
                       {"a": 1, "b": 2}, {"b": 2, "a": 1}]) | s.text(alphabet="ab\"\\,", max_size=3)
records = s.lists(s.lists(s.tuples(keys, s.integers(-5, 5)), max_size=4), max_size=40)


def _canonical(key) -> bytes:
    return shuffle.CODEC.encode_key(key)


def _sum(key, values):
    yield key, sum(values)


def _collect(key, values):
    """A reducer that keeps every value (sorted), so a lost or doubled one shows."""
    yield key, sorted(values)


def _runs(tmp_path, tasks, partitions, combiner, flush_values, spill_bytes) -> list[list[str]]:
    """Each map task's records through a MapOutputBuffer; the run URIs of each partition."""
    by_partition: list[list[str]] = [[] for _ in range(partitions)]
    for t, task_records in enumerate(tasks):
        buf = shuffle.MapOutputBuffer(partitions, combiner, flush_values=flush_values, spill_bytes=spill_bytes)
        buf.add_records([list(pairs) for pairs in task_records])
        for p, data in enumerate(buf.finish()):
            if data is None:
                continue
            uri = st.normalize(str(tmp_path / f"map{t}-part{p}"))
            output.write_lines(uri, data)
            by_partition[p].append(uri)
        buf.close()
    return by_partition


def _reduce(uris: list[str], reduce_fn, in_memory: bool, batch: int) -> list[tuple]:
    lines = reducer._merged_lines(uris, in_memory)
    got: list[tuple] = []
    reducer._reduce(shuffle.KeyGroups(lines, batch=batch), reduce_fn, got.extend)
    return got


@SETTINGS
@given(
    data=records,
    cuts=s.lists(s.integers(0, 40), max_size=4),
    partitions=s.integers(1, 4),
    combine=s.booleans(),
    flush_values=s.sampled_from([1, 2, 5, 1_000_000]),
    spill_bytes=s.sampled_from([1, 10**9]),
    in_memory=s.booleans(),
    batch=s.sampled_from([1, 2, 7, 4096]),
)
def test_the_reduced_result_depends_on_the_input_alone(
    tmp_path_factory, data, cuts, partitions, combine, flush_values, spill_bytes, in_memory, batch
):
    tmp_path = tmp_path_factory.mktemp("props")
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    tasks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    expected_sums: dict[bytes, int] = defaultdict(int)
    expected_values: dict[bytes, list[int]] = defaultdict(list)
    for pairs in data:
        for key, value in pairs:
            expected_sums[_canonical(key)] += value
            expected_values[_canonical(key)].append(value)

    combiner = _sum if combine else None
    runs = _runs(tmp_path, tasks, partitions, combiner, flush_values, spill_bytes)
    got: dict[bytes, object] = {}
    for uris in runs:
        for key, value in _reduce(uris, _sum if combine else _collect, in_memory, batch):
            assert _canonical(key) not in got, f"key {key!r} reduced twice"
            got[_canonical(key)] = value
    if combine:
        assert got == dict(expected_sums)
    else:  # every value reaches the reducer once: none lost, none counted twice
        assert got == {k: sorted(v) for k, v in expected_values.items()}


class _Job(MapReduceJob):
    """A mapper over JSON lines: each line is a list of [key, value] pairs; a line that is
    not JSON raises ValueError (a bad record); a pair [k, v, "x"] is malformed."""

    def mapper(self, _key, line):
        for pair in json.loads(line):
            yield tuple(pair)


line_pairs = s.lists(s.tuples(s.sampled_from(["a", "b", 1, 1.0, True]), s.integers(0, 3)), max_size=3)
lines_with_bad = s.lists(
    s.one_of(line_pairs.map(lambda p: ("good", p)), s.just(("broken", None)), line_pairs.map(lambda p: ("malformed", p))),
    min_size=1, max_size=40,
)


def _write_lines(tmp_path, kinds) -> tuple[str, int]:
    texts = []
    for kind, pairs in kinds:
        if kind == "broken":
            texts.append("not json")
        elif kind == "malformed":
            texts.append(json.dumps([*[list(p) for p in pairs], ["k", 1, "x"]]))
        else:
            texts.append(json.dumps([list(p) for p in pairs]))
    data = "".join(t + "\n" for t in texts).encode()
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    return st.normalize(str(path)), len(data)


def _map(uri: str, size: int, cuts: list[int], buffer, allowed: int) -> mapper.BadRecords:
    bounds = sorted({0, size, *(min(c, size) for c in cuts)})
    splits = [reader.Segment(uri, a, b, size) for a, b in itertools.pairwise(bounds)]
    step = Step(mapper=_Job().mapper, reducer=_sum)
    cfg = contract.JobConfig(ref="x:Y", params={}, partitions=1, max_bad_records=allowed)
    bad = mapper.BadRecords(allowed, "test")
    mapper._map_records(_Job(), step, splits, buffer, cfg, bad)
    return bad


@settings(max_examples=40, deadline=None, derandomize=True)
@given(kinds=lines_with_bad, cuts=s.lists(s.integers(0, 2000), max_size=4), combine=s.booleans())
def test_bad_records_are_skipped_whole_and_counted_once_whatever_the_splits(tmp_path_factory, kinds, cuts, combine):
    tmp_path = tmp_path_factory.mktemp("bad")
    uri, size = _write_lines(tmp_path, kinds)
    buf = shuffle.MapOutputBuffer(1, _sum if combine else None, flush_values=3)
    bad = _map(uri, size, cuts, buf, allowed=len(kinds))
    expected: dict[bytes, int] = defaultdict(int)
    for kind, pairs in kinds:
        if kind == "good":
            for key, value in pairs:
                expected[_canonical(key)] += value
    got: dict[bytes, int] = defaultdict(int)
    (data,) = buf.finish()
    lines = [] if data is None else (data.splitlines(keepends=True) if isinstance(data, bytes) else list(data))
    for line in lines:
        got[shuffle.CODEC.key_of(line)] += shuffle.CODEC.value_of(line)
    buf.close()
    assert dict(got) == dict(expected)
    assert bad.count == sum(kind != "good" for kind, _ in kinds)


# -- units -------------------------------------------------------------------------------------
def test_a_refused_record_adds_none_of_its_pairs_and_the_records_around_it_count():
    buf = shuffle.MapOutputBuffer(1, None)
    records = [[("a", 1)], [("a", 2), ("b", 3), ("c", 4, "x")], [("a", 5)]]
    with pytest.raises(shuffle.RejectedRecord) as caught:
        buf.add_records(records)
    assert caught.value.index == 1 and "('c', 4, 'x'), not a (key, value) pair" in str(caught.value.error)
    assert buf.records_in == 1
    buf.add_records(records, caught.value.index + 1)
    (data,) = buf.finish()
    assert data == b'"a"\t1\n"a"\t5\n'
    assert buf.records_in == 2


def test_a_key_that_is_not_json_refuses_its_record_as_an_encode_error():
    buf = shuffle.MapOutputBuffer(1, _sum)
    with pytest.raises(shuffle.RejectedRecord) as caught:
        buf.add_records([[("a", 1)], [({1, 2}, 1)]])
    assert caught.value.index == 1 and isinstance(caught.value.error, shuffle.EncodeError)
    assert buf.groups == {"a": 1}


class _Failing:
    """Line 1 emits a malformed pair, line 3 raises: both in one block."""

    def mapper(self, _key, line):
        if line == "1":
            return [("k", 1, "x")]
        if line == "3":
            raise ValueError("line three")
        return [("k", 1)]


def test_failures_in_one_block_are_met_in_line_order(tmp_path):
    (tmp_path / "in.txt").write_text("0\n1\n2\n3\n4\n")
    uri = st.normalize(str(tmp_path / "in.txt"))
    step = Step(mapper=_Failing().mapper, reducer=_sum)
    cfg = contract.JobConfig(ref="x:Y", params={}, partitions=1)
    buf = shuffle.MapOutputBuffer(1, None)
    with pytest.raises(reader.InputError, match=r"at byte 2: ValueError: the mapper emitted \('k', 1, 'x'\)"):
        mapper._map_records(MapReduceJob(), step, [reader.Segment(uri, 0, 10, 10)], buf, cfg, mapper.BadRecords(0, "t"))
    allowed = mapper.BadRecords(5, "t")
    buf = shuffle.MapOutputBuffer(1, None)
    mapper._map_records(MapReduceJob(), step, [reader.Segment(uri, 0, 10, 10)], buf, cfg, allowed)
    assert [s["offset"] for s in allowed.samples] == [2, 6]
    assert buf.finish() == [b'"k"\t1\n' * 3]


def test_a_map_only_record_with_a_malformed_pair_writes_no_row(tmp_path):
    uri = st.normalize(str(tmp_path / "part"))
    with output.CsvWriter(uri) as writer:
        with pytest.raises(shuffle.RejectedRecord) as caught:
            writer.add_records([[("a", 1)], [("b", 2), ("c",)], [("d", 4)]])
        assert caught.value.index == 1
        writer.add_records([[("a", 1)], [("b", 2), ("c",)], [("d", 4)]], 2)
    assert (tmp_path / "part").read_text() == "a,1\nd,4\n"


def test_a_hot_key_is_streamed_not_held():
    pulled = []

    def lines():
        for n in range(1000):
            pulled.append(n)
            yield b'"hot"\t%d\n' % n
        yield b'"z"\t1\n'

    groups = iter(shuffle.KeyGroups(lines(), batch=10))
    _, key, values = next(groups)
    assert key == "hot" and next(values) == 0
    assert len(pulled) < 50, "the hot key's values were read ahead of the reducer"
    assert sum(values) == sum(range(1, 1000))
    assert [(k, list(v)) for _, k, v in groups] == [("z", [1])]


def test_a_batch_that_only_decodes_as_a_whole_is_refused():
    # Neither item is one JSON value, yet joined they read as two values.
    with pytest.raises(ValueError, match="value 1 of a batch of 2"):
        shuffle.decode_all([b'"3', b'4"'], "value")
    with pytest.raises(ValueError, match="value 1 of a batch of 1"):
        shuffle.decode_all([b"1,2"], "value")
    assert shuffle.decode_all([b"1\n", b'"a"', b"[1,2]", b"NaN"], "value")[:3] == [1, "a", [1, 2]]


def test_in_memory_and_streamed_merges_give_the_same_lines(tmp_path):
    uris = []
    for i, body in enumerate([b'"a"\t1\n"c"\t2\n', b'"a"\t0\n"b"\t9\n"c"\t1\n', b'"a\\tb"\t1\n']):
        uri = st.normalize(str(tmp_path / f"run{i}"))
        st.for_uri(uri).write_bytes(uri, body)
        uris.append(uri)
    in_memory = reducer._merged_lines(uris, True)
    streamed = list(reducer._merged_lines(uris, False))
    assert isinstance(in_memory, list) and in_memory == streamed == sorted(streamed)
    assert len(streamed) == 6


@pytest.mark.parametrize("pairs", [
    [("a", 1.5), ("b,c", 2), ('q"uote', None), ("t", True), ("f", False), ("n\nl", -0.0)],
    [("a", [1, "x,y"]), ("b", (2.5,)), ("c", [])],
    [(1, "v"), (2.0, "w")],
])
def test_csv_batches_are_written_as_the_csv_module_writes_their_rows(tmp_path, pairs):
    uri = st.normalize(str(tmp_path / "part"))
    with output.CsvWriter(uri) as writer:
        writer.add(pairs)
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows(output.csv_fields(k, v) for k, v in pairs)
    assert (tmp_path / "part").read_text() == expected.getvalue()


def test_runs_are_merged_in_memory_only_within_an_eighth_of_the_function_memory():
    class Context:
        memory_limit_in_mb = "128"

    assert reducer.in_memory_merge_bytes(Context()) == 16 * 1024 * 1024
    Context.memory_limit_in_mb = "10240"
    assert reducer.in_memory_merge_bytes(Context()) == reducer.IN_MEMORY_MERGE
    assert reducer.in_memory_merge_bytes(object()) == reducer.IN_MEMORY_MERGE


def test_bulk_gc_restores_the_collector_thresholds():
    before = gc.get_threshold()
    with shuffle.bulk_gc():
        assert gc.get_threshold() == shuffle.BULK_GC_THRESHOLDS
    assert gc.get_threshold() == before
