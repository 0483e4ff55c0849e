"""Partitioner, intermediate encoding, sorted runs, the map output buffer."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from lambda_src import shuffle


def _line(key, value) -> bytes:
    return shuffle.CODEC.encode_key(key) + b"\t" + shuffle.CODEC.encode_value(value) + b"\n"


def test_partition_is_stable_across_processes_and_hash_seeds():
    keys = ["a", "hello", "é", "123.45.6", "x" * 100]
    here = [shuffle.CODEC.partition_of(shuffle.CODEC.encode_key(k), 7) for k in keys]
    code = (
        "from lambda_src import shuffle;"
        f"print([shuffle.CODEC.partition_of(shuffle.CODEC.encode_key(k), 7) for k in {keys!r}])"
    )
    for seed in ("1", "2", "random"):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        assert out.strip() == str(here)
    assert len(set(shuffle.CODEC.partition_of(shuffle.CODEC.encode_key(str(i)), 7) for i in range(1000))) == 7


@pytest.mark.parametrize(
    "value",
    ["text", "tab\tnew\nline\r", "", 0, -5, 2**70, 1.5, 0.1 + 0.2, 1e300, True, False, None,
     [1, "a", [2.5, None]], {"k": [1, 2]}, "日本語"],
)
def test_encoding_round_trips(value):
    line = _line(value, value)
    assert line.count(b"\n") == 1 and line.count(b"\t") == 1
    assert shuffle.CODEC.decode(shuffle.CODEC.key_of(line)) == value
    assert shuffle.CODEC.value_of(line) == value


@pytest.mark.parametrize(
    "value",
    ["tab\tnew\nline\r", "日本語 \u2028", 2**70, 0.1 + 0.2, -0.0, float("inf"), float("-inf"), True, None,
     (1, "a"), {"b": 1, "a": [1.5, {"c": None}]}, {1: "int key"}, [[], {}, ""]],
)
def test_the_fast_encoder_and_decoder_match_the_json_module(value):
    """encode/decode skip json.dumps/json.loads overhead; the bytes are the canonical JSON."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    assert shuffle.CODEC.encode_value(value) == expected
    assert shuffle.CODEC.decode(expected) == json.loads(expected)
    assert shuffle.CODEC.decode(expected + b"\n") == json.loads(expected)


def test_nan_round_trips_like_the_json_module():
    assert shuffle.CODEC.encode_value(float("nan")) == b"NaN" and math.isnan(shuffle.CODEC.decode(b"NaN"))


@pytest.mark.parametrize("data", [b"", b"[1,", b"1 2", b"nope", b'"open'])
def test_a_corrupt_intermediate_record_is_a_value_error_naming_the_position(data):
    with pytest.raises(ValueError, match=r"(character|char) \d+"):
        shuffle.CODEC.decode(data)


def test_tuples_come_back_as_lists():
    assert shuffle.CODEC.value_of(_line("k", (1, "a"))) == [1, "a"]


def test_unencodable_values_are_refused_clearly():
    with pytest.raises(shuffle.EncodeError, match="a value of type set cannot be encoded"):
        shuffle.CODEC.encode_value({1, 2})


@pytest.mark.parametrize("batch", [1, 3, 64, 4096])
def test_sorting_lines_groups_each_key_together(batch):
    """Every line lands in its key's group once, in order, decoded; whatever the batch size
    (a key with more values than a batch has the rest streamed)."""
    rng = random.Random(3)
    keys = ["a", "ab", "a\tb", "b", 1, 10, 2, -1, [1], [1, 2], "", None, True, 1.0]
    lines = [_line(rng.choice(keys), rng.randint(0, 9)) for _ in range(500)]
    lines += [_line("hot", n) for n in range(50)]
    lines.sort()
    groups = shuffle.KeyGroups(lines, batch=batch)
    seen = []
    grouped = []
    for key_bytes, key, values in groups:
        assert key_bytes not in seen, "a key appeared in two groups"
        seen.append(key_bytes)
        assert shuffle.CODEC.encode_key(key) == key_bytes
        members = [_line(key, v) for v in values]
        assert members, f"an empty group for key {key_bytes!r}"
        grouped.extend(members)
    assert grouped == lines, "every line lands in its key's group, once and in order"
    assert sorted(seen) == sorted({shuffle.CODEC.key_of(line) for line in lines})
    assert (groups.records, groups.keys) == (len(lines), len(seen))


def test_a_group_left_half_read_does_not_leak_into_the_next():
    lines = sorted([_line("a", n) for n in range(10)] + [_line("b", n) for n in range(3)])
    got = []
    for _, key, values in shuffle.KeyGroups(lines, batch=2):
        got.append((key, next(values)))
    assert got == [("a", 0), ("b", 0)]


def test_merge_of_sorted_runs_is_sorted():
    rng = random.Random(5)
    runs = []
    for _ in range(5):
        run = sorted(_line(f"k{rng.randint(0, 50)}", rng.random()) for _ in range(100))
        runs.append(run)
    merged = list(shuffle.merge([iter(r) for r in runs]))
    assert merged == sorted(line for r in runs for line in r)


def _sum(key, values):
    yield key, sum(values)


def _drain(buffer):
    out = {}
    for p, data in enumerate(buffer.finish()):
        if data is None:
            continue
        lines = data.splitlines(keepends=True) if isinstance(data, bytes) else list(data)
        assert lines == sorted(lines)
        for line in lines:
            assert shuffle.CODEC.partition_of(shuffle.CODEC.key_of(line), buffer.partitions) == p
            key = shuffle.CODEC.decode(shuffle.CODEC.key_of(line))
            key = tuple(key) if isinstance(key, list) else key
            out.setdefault(key, []).append(shuffle.CODEC.value_of(line))
    buffer.close()
    return out


@pytest.mark.parametrize("flush_values,spill_bytes", [(10**6, 10**9), (50, 10**9), (50, 1)])
def test_buffer_with_combiner_flushes_and_spills_to_the_same_result(flush_values, spill_bytes):
    rng = random.Random(11)
    pairs = [(f"w{rng.randint(0, 40)}", 1) for _ in range(3000)]
    buf = shuffle.MapOutputBuffer(4, _sum, flush_values=flush_values, spill_bytes=spill_bytes)
    for i in range(0, len(pairs), 7):
        buf.add(pairs[i : i + 7])
    got = _drain(buf)
    expected = {}
    for k, v in pairs:
        expected[k] = expected.get(k, 0) + v
    assert {k: sum(v) for k, v in got.items()} == expected
    assert all(len(v) == 1 for v in got.values()), "combined output holds one value per key"
    if spill_bytes == 1:
        assert buf.spills > 0


def test_buffer_without_combiner_keeps_every_value():
    buf = shuffle.MapOutputBuffer(3, None, flush_values=10, spill_bytes=1)
    pairs = [(i % 4, i) for i in range(100)] + [([1, 2], "list key")]
    buf.add(pairs)
    got = _drain(buf)
    assert sorted(v for vs in got.values() for v in vs if isinstance(v, int)) == list(range(100))
    assert sorted(got[0]) == [i for i in range(100) if i % 4 == 0]
    assert got[(1, 2)] == ["list key"]


def test_combiner_must_keep_its_key():
    def bad(key, values):
        yield key + "!", sum(values)

    buf = shuffle.MapOutputBuffer(1, bad, flush_values=2)
    with pytest.raises(ValueError, match="combiner changed key"):
        buf.add([("a", 1), ("a", 2), ("a", 3)])


def test_unhashable_keys_in_the_middle_of_a_batch_lose_nothing():
    buf = shuffle.MapOutputBuffer(1, None)
    buf.add([("a", 1), ([1], 2), ("b", 3), ([1], 4), ("a", 5)])
    buf.add(iter([("c", 6)]))
    got = _drain(buf)
    assert {k: sorted(v) for k, v in got.items()} == {"a": [1, 5], (1,): [2, 4], "b": [3], "c": [6]}


def test_a_mapper_pair_that_is_not_a_pair_is_refused_where_it_is_added():
    for combiner in (None, lambda k, vs: [(k, sum(vs))]):
        buf = shuffle.MapOutputBuffer(2, combiner)
        with pytest.raises(ValueError, match=r"\('b', 2, 3\), not a \(key, value\) pair|too many values"):
            buf.add([("a", 1), ("b", 2, 3)])


def test_a_value_that_contains_itself_is_an_encode_error():
    value: list = [1]
    value.append(value)
    with pytest.raises(shuffle.EncodeError, match="nested too deeply or contains itself"):
        shuffle.CODEC.encode_value(value)


# -- one key identity: the canonical encoding, everywhere ---------------------------------
_DISTINCT_KEYS = [1, 1.0, True, "1", 0, -0.0, 0.0, False, None, "", [1], (1,), {"a": 1, "b": 2}, 2**64]


def _sum_combiner(key, values):
    yield key, sum(values)


def _buffer_result(pairs, flush_values):
    """The buffer's output lines (all partitions), for ``pairs`` added one per record."""
    buf = shuffle.MapOutputBuffer(3, _sum_combiner, flush_values=flush_values)
    for pair in pairs:
        buf.add([pair])
    out = []
    for data in buf.finish():
        if data is not None:
            out.extend(data.splitlines(keepends=True) if isinstance(data, bytes) else data)
    buf.close()
    return sorted(out)


@pytest.mark.parametrize("flush_values", [1, 2, 3, 1_000_000])
def test_keys_equal_in_python_but_not_in_json_stay_apart_in_the_combining_buffer(flush_values):
    """1, 1.0 and True (and 0, -0.0, False) are equal in Python; as keys they are distinct."""
    pairs = [(k, 1) for k in _DISTINCT_KEYS] * 2 + [({"b": 2, "a": 1}, 1)]
    lines = _buffer_result(pairs, flush_values)
    got = {shuffle.CODEC.key_of(line): shuffle.CODEC.value_of(line) for line in lines}
    assert len(got) == len(lines)  # one combined line per key
    # (1,) and [1] encode alike, and so do the two dicts: the same key, whatever the order
    expected_keys = {shuffle.CODEC.encode_key(k) for k in _DISTINCT_KEYS}
    assert set(got) == expected_keys
    assert got[b"[1]"] == 4 and got[b'{"a":1,"b":2}'] == 3
    assert all(v == 2 for k, v in got.items() if k not in (b"[1]", b'{"a":1,"b":2}'))


def test_object_keys_are_encoded_with_sorted_members():
    assert shuffle.CODEC.encode_value({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


def test_a_combiner_that_turns_1_into_true_or_0_into_minus_0_is_refused():
    for key, changed in ((1, True), (0.0, -0.0), (1, 1.0)):
        def combiner(k, values, changed=changed):
            yield changed, sum(values)

        buf = shuffle.MapOutputBuffer(1, combiner)
        buf.add([(key, 1), (key, 2)])
        with pytest.raises(ValueError, match="combiner changed key"):
            buf.finish()
        buf.close()


def test_a_record_with_a_malformed_pair_adds_none_of_its_pairs():
    buf = shuffle.MapOutputBuffer(1, _sum_combiner)
    with pytest.raises(ValueError, match="not a \\(key, value\\) pair"):
        buf.add([("a", 1), ("b", 1, "extra")])
    buf.add([("c", 1)])
    (data,) = buf.finish()
    assert data == b'"c"\t1\n'
    buf.close()
