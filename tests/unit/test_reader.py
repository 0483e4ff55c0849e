"""Splits and the line reader: every line read exactly once, whatever the split edges."""

from __future__ import annotations

import collections
import gzip
import itertools
import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from airflow_provider_lambdamr.engine import planner
from lambda_src import formats, reader
from lambda_src import storage as st

STORE = st.LocalStorage()


def _fail_on_bad(offset, raw, err):
    raise AssertionError(f"unexpected bad bytes at {offset}")


def read_all(uri: str, split_size: int, max_line: int = 1 << 20) -> list[str]:
    info = st.ObjectInfo(st.normalize(uri), STORE.size(uri))
    lines: list[str] = []
    for seg in formats.for_object(info.uri).split(info, split_size, None, formats.compression_of(info.uri)):
        for block in formats.iter_blocks(STORE, seg, _fail_on_bad, max_line):
            lines.extend(block.records)
    return lines


def expected_lines(data: bytes) -> list[str]:
    if not data:
        return []
    lines = data.decode().split("\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


CASES = {
    "empty": b"",
    "one line with newline": b"abc\n",
    "one line without newline": b"abc",
    "no trailing newline": b"a\nbb\nccc",
    "blank lines": b"\n\nx\n\n",
    "only newlines": b"\n\n\n",
    "crlf": b"a,1\r\nb,2\r\nc,3",
    "unicode": "é\nñandú,ü\n日本語\n".encode(),
    "long line": b"short\n" + b"x" * 5000 + b"\nend\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("split_size", [1, 2, 3, 5, 7, 64, 4096, 10**9])
def test_every_line_exactly_once(tmp_path, name, split_size):
    data = CASES[name]
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    assert read_all(str(path), split_size) == expected_lines(data)


def test_random_files_and_splits(tmp_path):
    rng = random.Random(7)
    for trial in range(40):
        lines = ["".join(rng.choice("ab,é") for _ in range(rng.randint(0, 30))) for _ in range(rng.randint(0, 60))]
        data = "\n".join(lines).encode()
        if rng.random() < 0.5:
            data += b"\n"
        path = tmp_path / f"r{trial}.txt"
        path.write_bytes(data)
        for split_size in (1, rng.randint(2, 40), rng.randint(40, 400)):
            assert read_all(str(path), split_size) == expected_lines(data), (trial, split_size)


def test_exact_multiple_of_split_size(tmp_path):
    data = b"abc\n" * 16  # 64 bytes: splits of 4 and 16 end exactly on line ends
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    for size in (4, 8, 16, 32, 64):
        assert read_all(str(path), size) == ["abc"] * 16


def test_splits_are_even_and_cover_the_object():
    info = st.ObjectInfo("file:///x", 1000)
    segs = formats.for_object(info.uri).split(info, 300, None)
    assert [(s.start, s.end) for s in segs] == [(0, 250), (250, 500), (500, 750), (750, 1000)]


def test_gzip_is_read_whole_and_never_split(tmp_path):
    data = b"".join(f"line {i}\n".encode() for i in range(2000))
    path = tmp_path / "f.txt.gz"
    path.write_bytes(gzip.compress(data))
    info = st.ObjectInfo(st.normalize(str(path)), path.stat().st_size)
    segs = formats.for_object(info.uri).split(info, 10, None, formats.compression_of(info.uri))
    assert len(segs) == 1 and segs[0].compression == "gzip"
    assert read_all(str(path), 10) == expected_lines(data)


def test_concatenated_gzip_members(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"a\nb\n") + gzip.compress(b"c\nd"))
    assert read_all(str(path), 10) == ["a", "b", "c", "d"]


def test_corrupt_gzip_names_file_and_offset(tmp_path):
    rng = random.Random(1)
    text = "".join(f"{rng.random()},{rng.getrandbits(40)}\n" for _ in range(5000)).encode()
    good = gzip.compress(text)
    path = tmp_path / "bad.gz"
    path.write_bytes(good[:200] + b"\xff" * 64 + good[264:])
    with pytest.raises(reader.InputError, match=r"bad\.gz: corrupt gzip data near compressed byte \d+"):
        read_all(str(path), 10)


def test_truncated_gzip_is_an_error(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 1000)[:-12])
    with pytest.raises(reader.InputError, match="truncated"):
        read_all(str(path), 10)


def test_line_longer_than_max_line_bytes(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"ok\n" + b"y" * 300 + b"\nok\n")
    with pytest.raises(reader.InputError, match=r"long\.txt: the line crossing byte 10 is longer than 100 bytes "
                                                r"\(raise --max-line-bytes"):
        read_all(str(path), 10, max_line=100)
    # The limit is the line's, not the split overlap's: inside one split it is refused too.
    with pytest.raises(reader.InputError, match=r"long\.txt: the line at byte 3 is longer than 100 bytes"):
        read_all(str(path), 10**6, max_line=100)
    assert read_all(str(path), 10, max_line=300) == ["ok", "y" * 300, "ok"]


class BytesStore(st.Storage):
    """One object in memory, streamed in chunks of ``chunk`` bytes (to put chunk edges anywhere)."""

    def __init__(self, data: bytes, chunk: int):
        self.data = data
        self.chunk = chunk

    def size(self, uri: str) -> int:
        return len(self.data)

    def read_bytes(self, uri: str, start: int = 0, end: int | None = None) -> bytes:
        return self.data[start:end]

    def iter_range(self, uri, start=0, end=None, chunk_size=st.READ_CHUNK):
        stop = len(self.data) if end is None else end
        for at in range(start, stop, self.chunk):
            yield self.data[at : min(at + self.chunk, stop)]


def read_cut(data: bytes, cuts: list[int], max_line: int, chunk: int = 1 << 20) -> list[str]:
    """Every line of ``data`` read as the splits between ``cuts`` (offsets inside it)."""
    store = BytesStore(data, chunk)
    edges = [0, *cuts, len(data)]
    lines: list[str] = []
    for start, end in itertools.pairwise(edges):
        seg = reader.Segment("mem://f", start, end, len(data))
        for block in formats.iter_blocks(store, seg, _fail_on_bad, max_line):
            lines.extend(block.records)
    return lines


LIMIT = 100


@pytest.mark.parametrize("length", [LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 6])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_at_the_limit_is_read_and_one_above_refused_wherever_a_split_cuts_it(length, ending):
    """A line's length is its bytes without the \\n (a \\r counts): up to the limit it is read,
    above it refused, whether a split boundary falls before it, at any byte inside it, after it,
    or nowhere near it."""
    body = b"y" * (length - len(ending) + 1)  # the line's bytes without its \n: `length` of them
    data = b"ok\n" + body + ending + b"ok\n"
    line_start, line_end = 3, 3 + length + 1
    expected = ["ok", "y" * len(body), "ok"]
    for cut in [None, *range(line_start, line_end + 1)]:
        cuts = [] if cut is None else [cut]
        if length <= LIMIT:
            assert read_cut(data, cuts, LIMIT) == expected, cut
        else:
            with pytest.raises(reader.InputError, match=rf"longer than {LIMIT} bytes"):
                read_cut(data, cuts, LIMIT)


@pytest.mark.parametrize("trailing", [b"\n", b""])
def test_a_line_at_the_limit_split_across_read_chunks_is_read_and_one_above_refused(trailing):
    """Chunk edges exactly at the limit: the unfinished line held between chunks is the line."""
    for length in (LIMIT - 1, LIMIT, LIMIT + 1):
        data = b"y" * length + trailing
        for chunk in (1, 10, LIMIT, LIMIT + 1):
            if length <= LIMIT:
                assert read_cut(data, [], LIMIT, chunk=chunk) == ["y" * length], (length, chunk)
            else:
                with pytest.raises(reader.InputError, match=rf"the line at byte 0 is longer than {LIMIT} bytes"):
                    read_cut(data, [], LIMIT, chunk=chunk)


def test_the_boundary_scan_accepts_a_line_at_the_limit_across_scan_steps(monkeypatch):
    """The scan for the next line start reads SCAN_STEP bytes at a time: a step ending exactly
    at the limit must go on to find the newline just after it."""
    data = b"y" * LIMIT + b"\nok\n"
    for step in (1, 10, LIMIT, LIMIT + 1):
        monkeypatch.setattr(formats, "SCAN_STEP", step)
        assert read_cut(data, [1], LIMIT) == ["y" * LIMIT, "ok"], step
        with pytest.raises(reader.InputError, match=rf"the line crossing byte 1 is longer than {LIMIT - 1} bytes"):
            read_cut(data, [1], LIMIT - 1)


_line = st_.builds(
    lambda n, crlf: (b"y" * n + b"\r") if crlf and n else b"y" * n,
    st_.integers(0, 24),
    st_.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st_.lists(_line, max_size=12),
    trailing=st_.booleans(),
    limit=st_.integers(1, 20),
    cut_fractions=st_.lists(st_.floats(0, 1), max_size=4),
    chunk=st_.integers(1, 40),
    scan_step=st_.integers(1, 40),
)
def test_read_or_refused_never_depends_on_the_splits(lines, trailing, limit, cut_fractions, chunk, scan_step):
    """For any split edges, read chunk size and scan step: every line exactly once when no
    line is longer than the limit, and an InputError when one is."""
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    cuts = sorted({int(f * len(data)) for f in cut_fractions} - {0, len(data)})
    too_long = any(len(line) > limit for line in lines)
    with mock.patch.object(formats, "SCAN_STEP", scan_step):
        if too_long:
            with pytest.raises(reader.InputError):
                read_cut(data, cuts, limit, chunk=chunk)
        else:
            assert read_cut(data, cuts, limit, chunk=chunk) == expected_lines(data)


def test_invalid_utf8_is_reported_with_its_offset(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"good\nba\xffd\nfine\n")
    seen = []
    seg = reader.Segment(st.normalize(str(path)), 0, path.stat().st_size, path.stat().st_size)
    lines = []
    for block in formats.iter_blocks(STORE, seg, lambda off, raw, err: seen.append((off, raw))):
        lines.extend(block.records)
        for i, line in enumerate(block.records):
            assert STORE.read_bytes(seg.uri, block.offset(i), block.offset(i) + len(line.encode())) == line.encode()
    assert lines == ["good", "fine"]
    assert seen == [(5, b"ba\xffd")]


def test_block_offsets_are_exact_with_crlf(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"ab\r\ncde\r\nf\r\n")
    seg = reader.Segment(st.normalize(str(path)), 0, 12, 12)
    (block,) = list(formats.iter_blocks(STORE, seg, _fail_on_bad))
    assert [block.offset(i) for i in range(3)] == [0, 4, 9]


def test_pack_batches_small_objects_by_bytes():
    segs = [reader.Segment(f"file:///f{i}", 0, 10, 10) for i in range(25)]
    tasks = planner.pack(segs, target_bytes=50, max_files=500)
    assert [len(t.splits) for t in tasks] == [5, 5, 5, 5, 5]
    tasks = planner.pack(segs, target_bytes=10**9, max_files=7)
    assert [len(t.splits) for t in tasks] == [7, 7, 7, 4]
    assert [s.uri for t in tasks for s in t.splits] == [s.uri for s in segs]


def test_pack_with_cut_fills_tasks_to_the_byte_across_uneven_objects():
    mb = 1 << 20
    sizes = [25 * mb, 25 * mb, 25 * mb, 25 * mb, 6 * mb, 6 * mb, 6 * mb, 6 * mb, 4 * mb]
    segs = [reader.Segment(f"file:///f{i}", 0, n, n) for i, n in enumerate(sizes)]
    assert [t.bytes for t in planner.pack(segs, 64 * mb, 500)] == [50 * mb, 62 * mb, 16 * mb]
    tasks = planner.pack(segs, 64 * mb, 500, cut=True)
    assert [t.bytes for t in tasks] == [64 * mb, 64 * mb]
    pieces = [(s.uri, s.start, s.end) for t in tasks for s in t.splits]
    # every byte of every object is in exactly one piece, in order
    for i, n in enumerate(sizes):
        mine = sorted((a, b) for uri, a, b in pieces if uri == f"file:///f{i}")
        assert mine[0][0] == 0 and mine[-1][1] == n
        assert all(x[1] == y[0] for x, y in itertools.pairwise(mine))
    gz = [reader.Segment("file:///a.gz", 0, 10 * mb, 10 * mb, "gzip"), reader.Segment("file:///b.gz", 0, 10 * mb, 10 * mb, "gzip")]
    assert [t.bytes for t in planner.pack(gz, 15 * mb, 500, cut=True)] == [10 * mb, 10 * mb]  # never cut


def test_plan_with_few_tasks_balances_uneven_objects_for_the_workers(tmp_path):
    for name, lines in {"big.txt": 160_000, "mid.txt": 60_000, "small.txt": 20_000}.items():
        (tmp_path / name).write_text("".join(f"line {i:07d} of {name}\n" for i in range(lines)))
    tasks, summary = planner.plan({"": [str(tmp_path)]}, 4 << 20, 500, parallelism=2)  # 5.8 MB of input
    assert summary["tasks"] == 2
    sizes = [t.bytes for t in tasks]
    assert abs(sizes[0] - sizes[1]) <= 1
    # the reader turns the byte ranges into whole lines: each line exactly once
    seen = collections.Counter()
    for t in tasks:
        for seg in t.splits:
            for block in formats.iter_blocks(STORE, seg, _fail_on_bad):
                seen.update(block.records)
    assert sum(seen.values()) == 240_000 and max(seen.values()) == 1


@pytest.mark.parametrize("sizes", [[22_029_664, 22_006_739, 22_012_815, 21_998_359], [30, 20, 20, 10, 10, 10], [5, 1]])
def test_few_tasks_of_objects_that_cannot_be_cut_are_dealt_evenly(sizes):
    """Four near-equal Parquet objects for two workers made three tasks (two rounds) when
    the first two overfilled a half by a few bytes; largest first to the lightest task."""
    segs = [reader.Segment(f"file:///p{i}.parquet", 0, n, n, format="parquet", row_groups=(0, None))
            for i, n in enumerate(sizes)]
    tasks = planner._equal_shares(segs, 2, 500)
    assert len(tasks) == 2 and sorted(s.uri for t in tasks for s in t.splits) == sorted(s.uri for s in segs)
    loads = sorted(t.bytes for t in tasks)
    assert loads[1] - loads[0] <= max(sizes)  # no task holds more than one object more than needed
    assert loads[1] <= -(-sum(sizes) // 2) + max(sizes) // 2 or len(sizes) == 2
    for t in tasks:  # listing order within a task
        assert [s.uri for s in t.splits] == sorted(s.uri for s in t.splits)


def test_plan_with_few_tasks_gives_each_task_a_share_of_every_named_input(tmp_path):
    for table, files, lines in (("visits", 4, 40_000), ("ranks", 2, 20_000)):
        (tmp_path / table).mkdir()
        for f in range(files):
            (tmp_path / table / f"p{f}.txt").write_text("".join(f"{table} row {i:07d}\n" for i in range(lines)))
    inputs = {"visits": [str(tmp_path / "visits")], "ranks": [str(tmp_path / "ranks")]}
    tasks, _ = planner.plan(inputs, 4 << 20, 500, parallelism=2)  # 4.2 MB: two tasks
    assert len(tasks) == 2
    for name in inputs:
        shares = [sum(s.end - s.start for s in t.splits if s.input == name) for t in tasks]
        assert abs(shares[0] - shares[1]) <= 1, (name, shares)


def test_list_input_skips_hidden_and_reports_missing(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a\n")
    (tmp_path / "in" / "_SUCCESS").write_text("{}")
    (tmp_path / "in" / ".hidden").write_text("h\n")
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "b.txt").write_text("b\n")
    found = [st.basename(i.uri) for i in planner.list_input(str(tmp_path / "in"))]
    assert found == ["a.txt", "b.txt"]
    with pytest.raises(planner.InputNotFound, match="matched no objects"):
        planner.list_input(str(tmp_path / "missing"))


def test_segment_from_dict_validates():
    with pytest.raises(ValueError, match="outside"):
        reader.Segment.from_dict({"uri": "file:///x", "start": 5, "end": 2, "size": 10})
    with pytest.raises(ValueError, match="malformed"):
        reader.Segment.from_dict({"uri": "file:///x"})


@pytest.mark.parametrize(
    "total,split,workers,expected",
    [
        (200, 67, 2, 50),  # 3 tasks on 2 workers -> 4 tasks
        (200, 67, 1, 67),  # one worker: unchanged
        (120, 60, 2, 60),  # already a multiple
        (1000, 10, 2, 10),  # many tasks balance by themselves
        (0, 64, 2, 64),
        (7, 64, 4, 2),  # one small task on 4 workers -> 4 tasks
    ],
)
def test_balanced_split_size(total, split, workers, expected):
    assert planner.balanced_split_size(total, split, workers, min_split=1) == expected


def test_small_inputs_are_not_cut_finer():
    assert planner.balanced_split_size(7, 64 * 2**20, 4) == 64 * 2**20
    assert planner.balanced_split_size(200 * 10**6, 64 * 2**20, 2) == 50 * 10**6


def test_plan_rounds_few_tasks_up_to_a_multiple_of_the_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(planner, "MIN_BALANCED_SPLIT", 1)
    (tmp_path / "f.txt").write_bytes(b"0123456789\n" * 20)  # 220 bytes
    tasks, summary = planner.plan({"": [str(tmp_path / "f.txt")]}, split_size=80, max_files_per_task=500,
                                  parallelism=2)
    assert summary["tasks"] == len(tasks) == 4 and summary["split_size"] == 55
    assert read_all(str(tmp_path / "f.txt"), 55) == ["0123456789"] * 20
