"""The record path's batched steps give what their one-pair-at-a-time definitions give.

- ``MapOutputBuffer.map_records`` (the mapper's pairs added as they come, a failing record
  taken back) leaves the buffer exactly as adding each good record's pairs with ``add``:
  the same runs, cut at the same flush points, and the same failures at the same records.
- The buffer's runs, encoded in batches and sorted as text, are byte for byte the lines
  ``CODEC`` encodes one pair at a time, partitioned by ``partition_of`` and sorted as bytes,
  for any JSON keys and values (the contract, docs/contract.md).
- ``ResultWriter.map_records`` (map-only jobs) skips a failing record whole, and lets the
  writer's own errors through rather than blaming the record.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as s

from lambda_src import output, shuffle
from lambda_src import storage as st

CODEC = shuffle.CODEC
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

text = s.text(alphabet=s.sampled_from('ab,"\\\t\n\x00é\uffff\ue000😀'), max_size=4)
scalars = (s.none() | s.booleans() | s.integers(-(2**70), 2**70) | s.sampled_from([0.0, -0.0, math.nan, math.inf])
           | s.floats(allow_nan=True, allow_infinity=True) | text)
json_values = s.recursive(scalars, lambda inner: s.lists(inner, max_size=3) | s.dictionaries(text, inner, max_size=3),
                          max_leaves=6)
#: Keys Python's equality merges (1, 1.0, True) or JSON's encoding does ({"a","b"} orders).
keys = s.sampled_from([0, 0.0, -0.0, False, 1, 1.0, True, None, [1], {"a": 1, "b": 2}, {"b": 2, "a": 1}]) | text
#: The values of one example: of one kind (each kind of batch the runs encode at once), or mixed.
value_kinds = s.sampled_from([
    s.floats(allow_nan=False, allow_infinity=False) | s.integers(-9, 9),
    scalars.filter(lambda v: not isinstance(v, str)),  # bool, None, NaN, infinities too
    text,
    scalars,
    s.floats() | text.map(lambda t: t + ","),  # text with a comma among numbers
    json_values,
])


def _sum(key, values):
    yield key, sum(values)


def _sum_and_count(key, values):
    """Not a sum: adds one each time it runs, so running it on a lone value shows."""
    yield key, sum(values) + 1


class Boom(Exception):
    """A mapper's failure (not a bad record: the caller decides)."""


# A record: its pairs, and how it ends: "ok", or after its pairs: the mapper raises, emits
# something that is not a pair, or emits a key that is not a JSON value.
#: Few keys, so that records share them and combining has work to do.
few_keys = s.sampled_from(["a", "b", 1, 1.0, True, None, {"a": 1, "b": 2}, {"b": 2, "a": 1}])
records = s.lists(s.tuples(s.lists(s.tuples(few_keys, s.integers(-5, 5)), max_size=4),
                           s.sampled_from(["ok", "ok", "raise", "not_a_pair", "bad_key"])), max_size=40)


def _mapper(_key, record):
    pairs, end = record
    yield from pairs
    if end == "raise":
        raise Boom("boom")
    if end == "not_a_pair":
        yield ("k", 1, "x")
    if end == "bad_key":
        yield ({1, 2}, 1)


class Model:
    """The map output buffer's definition, one pair at a time: a record's pairs are held by
    their key's encoding; once ``flush_values`` are held after a record, each key's values
    are combined, and if still half as many are held, each partition's lines become a run."""

    def __init__(self, partitions, combiner, flush_values):
        self.partitions, self.combiner, self.flush_values = partitions, combiner, flush_values
        self.groups: dict[bytes, tuple[object, list]] = {}
        self.held = self.records_in = 0
        self.runs: list[list[bytes]] = [[] for _ in range(partitions)]

    def add(self, pairs):
        for key, value in pairs:
            self.groups.setdefault(CODEC.encode_key(key), (key, []))[1].append(value)
        self.held += len(pairs)
        self.records_in += len(pairs)
        if self.held < self.flush_values:
            return
        if self.combiner is not None:
            for key, values in self.groups.values():
                if len(values) > 1:
                    values[:] = [value for _, value in self.combiner(key, iter(values))]
            self.held = sum(len(values) for _, values in self.groups.values())
        if self.held >= self.flush_values // 2:
            self.write()

    def write(self):
        parts: list[list[bytes]] = [[] for _ in range(self.partitions)]
        for key_bytes, (_, values) in self.groups.items():
            for value in values:
                parts[CODEC.partition_of(key_bytes, self.partitions)].append(
                    CODEC.line(key_bytes, CODEC.encode_value(value)))
        for p, lines in enumerate(parts):
            if lines:
                self.runs[p].append(b"".join(sorted(lines)))
        self.groups, self.held = {}, 0


@SETTINGS
@given(recs=records, partitions=s.integers(1, 3), combiner=s.sampled_from([None, _sum, _sum_and_count]),
       flush_values=s.sampled_from([1, 2, 3, 7, 10**6]), cuts=s.lists(s.integers(0, 40), max_size=3))
def test_map_records_holds_and_cuts_runs_as_adding_each_good_record_alone_does(recs, partitions, combiner,
                                                                                 flush_values, cuts):
    buf = shuffle.MapOutputBuffer(partitions, combiner, flush_values=flush_values)
    failures = []
    bounds = sorted({0, len(recs), *(min(c, len(recs)) for c in cuts)})  # several calls, as blocks come
    for start, end in itertools.pairwise(bounds):
        block = recs[start:end]
        first = 0
        while (failure := buf.map_records(_mapper, None, block, first)) is not None:
            index, err = failure
            failures.append((start + index, type(err)))
            first = index + 1

    model = Model(partitions, combiner, flush_values)
    expected = []
    for i, (pairs, end) in enumerate(recs):
        if end == "ok":
            model.add(pairs)
        else:
            expected.append((i, {"raise": Boom, "not_a_pair": ValueError, "bad_key": shuffle.EncodeError}[end]))

    assert failures == expected
    assert buf.records_in == model.records_in
    assert [list(runs) for runs in buf.runs] == model.runs  # cut at the same flush points
    got = [_bytes(data) for data in buf.finish()]
    model.write()
    merged = [b"".join(sorted(line for run in runs for line in run.splitlines(keepends=True))) or None
              for runs in model.runs]
    if combiner is None:
        assert got == merged
    elif combiner is _sum:  # runs merged and combined again: the same sum of each key
        assert [_sums(data) for data in got] == [_sums(data) for data in merged]


def _sums(data: bytes | None) -> dict[bytes, int]:
    sums: dict[bytes, int] = {}
    for line in (data or b"").splitlines(keepends=True):
        sums[CODEC.key_of(line)] = sums.get(CODEC.key_of(line), 0) + CODEC.value_of(line)
    return sums


def _bytes(data) -> bytes | None:
    return data if data is None or isinstance(data, bytes) else b"".join(data)


@SETTINGS
@given(pairs=value_kinds.flatmap(lambda values: s.lists(s.tuples(keys, values), max_size=60)),
       partitions=s.integers(1, 4))
def test_runs_are_the_lines_of_each_pair_encoded_alone_partitioned_and_sorted_as_bytes(pairs, partitions):
    buf = shuffle.MapOutputBuffer(partitions, None)
    for key, value in pairs:
        buf.add([(key, value)])
    expected: list[list[bytes]] = [[] for _ in range(partitions)]
    for key, value in pairs:
        key_bytes = CODEC.encode_key(key)
        expected[CODEC.partition_of(key_bytes, partitions)].append(CODEC.line(key_bytes, CODEC.encode_value(value)))
    assert buf.finish() == [b"".join(sorted(lines)) if lines else None for lines in expected]


@pytest.mark.parametrize("pair,named", [
    (("a\ud800", 1), "key of type str"),
    ((1.5, "x\udfff"), "value of type str"),
    (("a", [1.0, {"k": "\ud800"}]), "value of type list"),
])
def test_text_utf8_cannot_hold_is_refused_naming_the_key_or_value(pair, named):
    buf = shuffle.MapOutputBuffer(2, None)
    buf.add([("fine", 1.0), pair])
    with pytest.raises(shuffle.EncodeError, match=f"a {named} cannot be encoded"):
        buf.finish()


def test_map_only_map_records_skips_a_failing_record_whole_and_passes_on_the_writers_errors(tmp_path):
    def mapper(_key, record):
        yield from record
        if record == [("b", 2)]:
            raise Boom("after a pair")

    uri = st.normalize(str(tmp_path / "part"))
    with output.CsvWriter(uri) as writer:
        failure = writer.map_records(mapper, None, [[("a", 1)], [("b", 2)], [("c", 3)]])
        assert failure is not None and failure[0] == 1 and isinstance(failure[1], Boom)
        assert writer.map_records(mapper, None, [[("a", 1)], [("b", 2)], [("c", 3)]], 2) is None
    assert (tmp_path / "part").read_text() == "a,1\nc,3\n"

    jsonl = st.normalize(str(tmp_path / "rows"))
    with output.JsonlWriter(jsonl, "partition 0") as writer, \
            pytest.raises(output.OutputSchemaError, match="has 3 columns, not 2"):
        writer.map_records(lambda _k, r: r, None, [[("a", 1)], [("b", [2, 3])]])


def test_a_key_combined_down_to_one_value_is_not_combined_again_alone():
    # flush at 6 values; combining leaves 2 (< 3), so nothing is written and "a" keeps its
    # one combined value while "b" gets four more: the next rounds must leave "a" alone.
    buf = shuffle.MapOutputBuffer(1, _sum_and_count, flush_values=6)
    for key in "aaabbb":
        buf.add([(key, 1)])
    assert buf.groups == {"a": 4, "b": 4}  # 1+1+1, plus one for the round
    for _ in range(4):
        buf.add([("b", 1)])
    assert buf.groups == {"a": 4, "b": 9}  # 4+1+1+1+1, plus one
    assert buf.finish() == [b'"a"\t4\n"b"\t9\n']
