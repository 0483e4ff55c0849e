"""Compressed input: gzip, bz2, xz and zstd, found by extension (any case) or by magic bytes,
read whole; corrupt, truncated and misnamed objects are errors naming the object."""

from __future__ import annotations

import bz2
import gzip
import lzma

import pyarrow as pa
import pytest

from airflow_provider_lambdamr.engine import planner
from lambda_src import formats, reader
from lambda_src import storage as st

STORE = st.LocalStorage()
LINES = [f"line {i} \u00e9 {'x' * (i % 50)}" for i in range(3000)]
DATA = ("\n".join(LINES) + "\n").encode()


def _zstd(data: bytes) -> bytes:
    return pa.compress(data, codec="zstd", asbytes=True)


COMPRESS = {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zstd": _zstd}
EXT = {"gzip": ".GZ", "bz2": ".Bz2", "xz": ".xz", "zstd": ".ZST"}


def _fail(offset, raw, err):
    raise AssertionError(f"bad bytes at {offset}")


def _read(path, split_size: int = 1000) -> tuple[list[str], list[reader.Segment]]:
    tasks, _ = planner.plan({"": [str(path)]}, split_size, 500)
    segs = [seg for t in tasks for seg in t.splits]
    lines = [line for seg in segs for block in formats.iter_blocks(STORE, seg, _fail) for line in block.records]
    return lines, segs


@pytest.mark.parametrize("codec", list(COMPRESS))
@pytest.mark.parametrize("named", [True, False])
def test_each_codec_is_read_whole_by_extension_or_by_magic(tmp_path, codec, named):
    path = tmp_path / ("data.txt" + (EXT[codec] if named else ""))
    # Two concatenated members (frames, streams): the whole object is read.
    path.write_bytes(COMPRESS[codec](DATA[:5000]) + COMPRESS[codec](DATA[5000:]))
    lines, segs = _read(path)
    assert [(s.compression, s.start, s.end) for s in segs] == [(codec, 0, path.stat().st_size)]
    assert lines == LINES


@pytest.mark.parametrize("codec", list(COMPRESS))
def test_a_truncated_stream_is_an_error_naming_the_object(tmp_path, codec):
    path = tmp_path / f"cut{EXT[codec]}"
    path.write_bytes(COMPRESS[codec](DATA)[:-20])
    with pytest.raises(reader.InputError, match=rf"cut{EXT[codec]}: corrupt {codec} data: the stream ends"):
        _read(path)


@pytest.mark.parametrize("codec", list(COMPRESS))
def test_corrupt_data_is_an_error_naming_the_object_and_codec(tmp_path, codec):
    good = COMPRESS[codec](DATA)
    path = tmp_path / f"bad{EXT[codec]}"
    path.write_bytes(good[:12] + bytes(b ^ 0x5A for b in good[12:200]) + good[200:])
    with pytest.raises(reader.InputError, match=rf"bad{EXT[codec]}: corrupt {codec} data"):
        _read(path)


@pytest.mark.parametrize("codec", list(COMPRESS))
def test_an_object_named_for_a_codec_that_holds_something_else_is_refused(tmp_path, codec):
    path = tmp_path / f"plain{EXT[codec]}"
    path.write_bytes(b"just text\n")
    with pytest.raises(reader.InputError, match=rf"plain{EXT[codec]}: not {codec} data \(it starts with b'just tex'"):
        _read(path)


def test_an_empty_compressed_object_is_empty(tmp_path):
    path = tmp_path / "empty.gz"
    path.write_bytes(b"")
    assert _read(path)[0] == []


def test_plain_text_is_still_split(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(DATA)
    lines, segs = _read(path, split_size=10_000)
    assert len(segs) > 5 and {s.compression for s in segs} == {None}
    assert lines == LINES


@pytest.mark.parametrize("head, codec", [(b"BZh91AY&SY", "bz2"), (b"\xfd7zXZ\x00\x00", "xz"),
                                         (b"\x28\xb5\x2f\xfd\x00", "zstd"), (b"\x1f\x8b\x08\x00", "gzip")])
def test_garbage_behind_a_codec_signature_is_corrupt_data_of_that_codec(tmp_path, head, codec):
    path = tmp_path / "data.txt"
    path.write_bytes(head + bytes(range(256)) * 4 + b"\nmore\n")
    with pytest.raises(reader.InputError, match=rf"data\.txt: corrupt {codec} data"):
        _read(path)
