"""The shuffle codec: its vectorized Arrow partitioner sends every key where its scalar one does."""

from __future__ import annotations

import zlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from lambda_src import arrow_shuffle as ash
from lambda_src.shuffle import CODEC

#: Strings JSON writes as themselves in quotes (the partitioner's fast path)...
PLAIN = st_.text(st_.characters(exclude_characters='"\\\x7f', exclude_categories=("Cc", "Cs")), max_size=12)
#: ...and any string, with quotes, backslashes and control characters (the exact path).
ANY = st_.text(max_size=12)
INTS = st_.integers(-(2**63), 2**63 - 1)


def _scalar(keys: list, partitions: int) -> list[int]:
    return [CODEC.partition_of(CODEC.encode_key(k), partitions) for k in keys]


@settings(max_examples=300, deadline=None)
@given(
    keys=st_.one_of(st_.lists(PLAIN, max_size=40), st_.lists(ANY, max_size=40), st_.lists(INTS, max_size=40)),
    partitions=st_.integers(1, 64),
    chunks=st_.integers(1, 3),
)
def test_the_arrow_partitioner_equals_the_scalar_one(keys, partitions, chunks):
    cut = -(-len(keys) // chunks) or 1
    column = pa.chunked_array([pa.array(keys[i:i + cut]) for i in range(0, len(keys), cut)] or [pa.array([], pa.string())])
    assert CODEC.partition_keys(column, partitions) == _scalar(keys, partitions)


#: Printable ASCII of every length around the Arrow CRC's 8-byte words and its 64-byte limit.
ASCII = st_.text(st_.characters(min_codepoint=32, max_codepoint=126), max_size=70)


@settings(max_examples=200, deadline=None)
@given(keys=st_.lists(ASCII, max_size=30), partitions=st_.integers(2, 1000), skip=st_.integers(0, 3))
def test_the_arrow_crc_of_ascii_keys_is_zlibs(keys, partitions, skip):
    column = pa.array(["pad"] * skip + keys).slice(skip)  # an array with an offset, as slices have
    assert CODEC.partition_keys(column, partitions) == _scalar(keys, partitions)
    plain = [k for k in keys if '"' not in k and "\\" not in k and len(k) <= 64]
    if plain:
        column = pa.array(plain)
        assert ash._crc32_quoted(column, pc.utf8_length(column)).to_pylist() == [zlib.crc32(f'"{k}"'.encode()) for k in plain]


@pytest.mark.slow
def test_millions_of_keys_are_partitioned_whatever_their_padded_copy_would_weigh():
    # 2**25 one-byte keys and one of 64 bytes: padded to 64 bytes each, they outgrow an Arrow
    # string's 32-bit offsets (2 GiB), although the column holds only about 170 MB.
    long = "x" * ash._CRC_MAX_BYTES
    keys = pa.concat_arrays([pa.repeat(pa.scalar("7"), 2**25), pa.array([long])])
    partitions = 1009
    ids = ash.partition_ids(keys, partitions)
    counts = {item["values"]: item["counts"] for item in pc.value_counts(ids).to_pylist()}
    short, last = (zlib.crc32(f'"{k}"'.encode()) % partitions for k in ("7", long))
    assert ids[-1].as_py() == last and counts[short] == 2**25 + (short == last)


@pytest.mark.parametrize("key", ['a"b', "a\\b", "tab\there", "\x00", "\x1f", "\x7f", "é", ""])
def test_strings_json_escapes_are_partitioned_by_their_escaped_encoding(key):
    keys = [key, "plain"]
    assert CODEC.partition_keys(pa.chunked_array([pa.array(keys)]), 97) == _scalar(keys, 97)


def test_a_line_round_trips_through_the_codec():
    key, value = {"b": [1, 2.5], "a": None}, ["x\ty", True]
    line = CODEC.line(CODEC.encode_key(key), CODEC.encode_value(value))
    assert line == b'{"a":null,"b":[1,2.5]}\t["x\\ty",true]\n'
    assert CODEC.decode_pair(line) == (key, value)
    with pytest.raises(ValueError):
        CODEC.decode_pair(b'"no tab"\n')
