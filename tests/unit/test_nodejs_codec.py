"""The Node.js codec writes the shuffle's bytes exactly as the Python one (lambda_src/shuffle.py).

Python's canonical encoding of any JSON value, decoded and encoded again by Node.js, gives the
same bytes and the same partition; the values a JavaScript job emits map onto the contract's
integers and floats as lambda_src/nodejs/codec.mjs says; lines sort bytewise.
"""

from __future__ import annotations

import json
import math
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from lambda_src.output import csv_fields
from lambda_src.shuffle import CODEC

CLI = Path(__file__).resolve().parents[1] / "nodejs" / "codec_cli.mjs"
PARTITIONS = [1, 2, 7, 1000, 65537]


class NodeCodec:
    def __init__(self, node: str) -> None:
        self.proc = subprocess.Popen([node, str(CLI)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8")

    def ask(self, **request) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer


@pytest.fixture(scope="module")
def codec(node) -> Iterator[NodeCodec]:
    c = NodeCodec(node)
    yield c
    c.proc.stdin.close()
    c.proc.wait(timeout=10)


json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text()
    | hs.sampled_from([2**53 - 1, 2**53, 2**53 + 1, -(2**63), 2**64, 1e16, 1e15, 1e-4, 1e-5, 0.1, -0.0, 5e-324,
                       1.7976931348623157e308, "é", "😀", "\uffff", "a\tb", "\x00\x1f\x7f", "\u2028"]),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_python_canonical_bytes_round_trip_through_node_with_the_same_partition(codec, value):
    text = CODEC.encode_key(value).decode("utf-8")
    answer = codec.ask(op="roundtrip", text=text, partitions=PARTITIONS)
    assert answer["text"] == text
    assert answer["partitions"] == [CODEC.partition_of(text.encode(), p) for p in PARTITIONS]


@pytest.mark.parametrize("text", [
    "1", "1.0", "-0.0", "0", "true", "9007199254740993", "18446744073709551616", "-9223372036854775808",
    "1e+16", "1e-05", "0.0001", "1.5e+300", "NaN", "Infinity", "-Infinity", '"\\u00e9"', '"é"',
    '{"a":{"x":2,"y":1},"b":[1.0,2,"\\t"]}', "[]", "{}", '""', '{"__proto__":1}',
])
def test_keys_whose_json_differs_between_the_languages_keep_their_bytes(codec, text):
    canonical = CODEC.encode_key(CODEC.decode(text.encode())).decode()
    assert codec.ask(op="roundtrip", text=text, partitions=[3])["text"] == canonical


def test_values_a_javascript_job_emits_map_onto_the_contracts_types(codec):
    got = codec.ask(op="named")["encodings"]
    assert got == {
        "int": "1", "float_one": "1.0", "float_half": "0.5", "big": str(2**64),
        "unsafe_number": CODEC.encode_key(float(2**53 + 2)).decode(), "negative_zero": "0",
        "float_negative_zero": "-0.0", "nan": "NaN", "infinity": "-Infinity", "small": "1e-05", "large": "1e+16",
        "astral": '"😀"', "bmp_high": '"\uffff"', "control": '"a\\tb\\n\\u0001"',
        "object": CODEC.encode_key({"b": 1, "a": [True, None]}).decode(),
        "astral_vs_bmp_keys": CODEC.encode_key({"\uffff": 1, "😀": 2}).decode(), "string_object": '"s"',
    }


def test_what_is_not_a_json_value_is_refused_naming_why(codec):
    errors = codec.ask(op="encode_error")["errors"]
    assert errors["lone_surrogate"].startswith("EncodeError: a key string holds a lone surrogate")
    assert errors["map"].startswith("EncodeError: a key of type Map cannot be encoded")
    assert errors["undefined_value"].startswith("EncodeError: a key of type undefined")
    assert errors["cycle"].startswith("EncodeError: a key of type Array cannot be encoded: it is nested too deeply")


@settings(max_examples=100, deadline=None)
@given(hs.lists(hs.text(alphabet=hs.sampled_from("a\t\uffff\ue000😀\U00010000é\x00"), max_size=5), max_size=30))
def test_lines_sort_bytewise_as_in_python(codec, lines):
    assert codec.ask(op="sort", lines=lines)["lines"] == sorted(lines, key=lambda s: s.encode())


@pytest.mark.parametrize("value", [1, 1.0, -0.0, math.nan, math.inf, -math.inf, 2**64, 1e16, 0.1, True, None, "a,b",
                                   'q"', "x\ny", "", [1, 2.5, "z"], {"b": 1, "a": [None]}, "\r"])
def test_a_result_row_is_the_csv_python_writes(codec, value):
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(csv_fields(value, None))
    text = json.dumps(value, allow_nan=True, ensure_ascii=False)
    assert codec.ask(op="csv", text=text)["row"] == buf.getvalue()


def test_crc32_is_zlibs():
    # The partition the Node side computes is checked against CODEC.partition_of above; this
    # pins that one to zlib's CRC-32 (the contract's), so both cannot drift together.
    assert CODEC.partition_of(b'"word"', 1000) == zlib.crc32(b'"word"') % 1000
