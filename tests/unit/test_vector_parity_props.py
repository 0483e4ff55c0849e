"""Property: random rows, valid and hostile, give the same result vectorized and in record mode.

Each example writes a few files of random uservisits / rankings rows and runs amplab-2a and
amplab-1a through the real engine both ways (one warm local runtime for all examples). See
``tests/vector_parity.py`` for what "the same" means and why sums are kept exact.
"""

from __future__ import annotations

import gzip
import math
import re
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import formats, mapper, reader
from lambda_src import storage as lst
from lambda_src.job import MapReduceJob
from tests.vector_parity import BOM, NUMBER_TOKENS, TEXT_TOKENS, ranking, read_parts, sorted_rows, uservisit

# Text without "." or "e": the numbers it forms are integers, whose sums are exact. Without
# "," too, so that most rows keep their columns ("x,y" adds one now and then).
TEXT = st.text(alphabet="ab1 -\r\t\ufeffé日😀", max_size=6)
NUMBER = st.one_of(st.sampled_from(NUMBER_TOKENS), st.integers(-4000, 4000).map(lambda n: str(n / 4)), TEXT)
FIELD = st.one_of(st.sampled_from((*TEXT_TOKENS, "x,y")), TEXT, st.sampled_from(("u/1", "u/2", "1980-02-01")))
IPS = st.sampled_from(("10.0.0.1", "10.0.0.2", "10.1.0.1", "NULL", "", "ü.0.0.1", BOM + "10.0.0.1"))


def exact_sum(token: str) -> bool:
    """Summing this value with others gives the same float in any order."""
    try:
        value = float(token)
    except ValueError:
        return True  # a bad record: never summed
    return math.isinf(value) or math.isnan(value) or (abs(value) < 2**40 and (value * 4).is_integer())


@st.composite
def visits(draw) -> list[str]:
    rows = []
    for i in range(draw(st.integers(1, 12))):
        revenue = draw(NUMBER)
        # a value whose sum depends on the order gets a key of its own
        ip = draw(IPS) if exact_sum(revenue) else f"u{i:03d}.0.0.1"
        rows.append(uservisit(ip, revenue, url=draw(FIELD), word=draw(FIELD), duration=draw(FIELD)))
    return rows


@st.composite
def rankings(draw) -> list[str]:
    return [ranking(draw(FIELD), draw(NUMBER), draw(FIELD)) for _ in range(draw(st.integers(1, 12)))]


@st.composite
def layouts(draw, rows) -> dict:
    """Rows spread over one to three files, with random line endings, BOMs and compression."""
    files = []
    for _ in range(draw(st.integers(1, 3))):
        lines = draw(rows)
        if draw(st.booleans()):
            lines = [line + "\r" if draw(st.booleans()) else line for line in lines]
        data = "\n".join(lines) + draw(st.sampled_from(("\n", "", "\r\n", "\n\n")))
        if draw(st.booleans()):
            data = BOM + data
        files.append((data.encode(), draw(st.booleans())))
    return {"files": files, "split_size": draw(st.sampled_from((1 << 20, 64, 150))),
            "max_bad_records": draw(st.sampled_from((0, 2, 1000)))}


@pytest.fixture(scope="module")
def runtime():
    with LocalRuntime(workers=1) as rt:  # tasks in order: the first bad record is the same one
        yield rt


def run(rt, job: str, folder, out, layout, vectorized: bool):
    spec = JobSpec(job=job, inputs={"": [str(folder)]}, output=str(out), overwrite=True, job_id="prop",
                   vectorized=vectorized, split_size=layout["split_size"], partitions=2,
                   max_files_per_task=1, max_bad_records=layout["max_bad_records"])
    try:
        summary = Driver(spec, rt).run()
    except JobFailed as err:
        return "error", str(err).replace(str(out), "OUT")
    counters = summary["counters"]
    parts = read_parts(str(out))
    return (counters["input_records"], counters["bad_records"], sorted(parts),
            [sorted_rows(data) if name.startswith("part-0") else data for name, data in sorted(parts.items())])


def check(rt, tmp_path_factory, job: str, layout: dict) -> None:
    root = tmp_path_factory.mktemp("prop")
    folder = root / "in"
    folder.mkdir()
    for i, (data, compress) in enumerate(layout["files"]):
        if compress:
            (folder / f"f{i}.csv.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / f"f{i}.csv").write_bytes(data)
    results = [run(rt, job, folder, root / f"out-{v}", layout, v) for v in (True, False)]
    assert results[0] == results[1]


SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(layout=layouts(visits()))
def test_2a_vectorized_equals_record_mode(runtime, tmp_path_factory, layout):
    check(runtime, tmp_path_factory, "amplab-2a", layout)


@SETTINGS
@given(layout=layouts(rankings()))
def test_1a_vectorized_equals_record_mode(runtime, tmp_path_factory, layout):
    check(runtime, tmp_path_factory, "amplab-1a", layout)


# -- the record path's reading of a BOM, which the vectorized path follows -----------------

def _lines(path, start=0, end=None) -> list[tuple[int, str]]:
    uri = lst.normalize(str(path))
    store = lst.for_uri(uri)
    size = store.size(uri)
    seg = reader.Segment(uri, start, size if end is None else end, size,
                         "gzip" if str(path).endswith(".gz") else None)
    out = []
    for block in formats.iter_blocks(store, seg, lambda *a: None):
        out.extend((block.offset(i), line) for i, line in enumerate(block.records))
    return out


def test_a_bom_is_dropped_at_byte_0_of_an_object_only(tmp_path):
    data = (BOM + "a,1\n" + BOM + "b,2\n").encode()
    (tmp_path / "f.csv").write_bytes(data)
    (tmp_path / "f.csv.gz").write_bytes(gzip.compress(data))
    expected = [(3, "a,1"), (7, BOM + "b,2")]  # offsets of the lines' first bytes in the object
    assert _lines(tmp_path / "f.csv") == expected
    assert _lines(tmp_path / "f.csv.gz") == expected
    assert _lines(tmp_path / "f.csv", start=7) == expected[1:]  # a split starting at a BOM keeps it
    (tmp_path / "bom-only.csv").write_bytes(BOM.encode())
    assert _lines(tmp_path / "bom-only.csv") == []


# -- the vectorized reader's own checks, at the edges the engine tests rarely reach ---------

class _Bytes:
    """A stream that hands out at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def read(self, size=None) -> bytes:
        n = self.step if size is None else min(size, self.step)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        pass


def _drain(data: bytes, step: int, at_object_start: bool = True, max_line_bytes: int = 1 << 20) -> None:
    lines = formats.RecordLines(_Bytes(data, step), "f bytes 0-9", at_object_start, max_line_bytes)
    while lines.read(1 << 20):
        pass


@pytest.mark.parametrize("step", [1, 2, 3, 64])
@pytest.mark.parametrize("data,at_start,why", [
    (b"a,1\r\nb,2\r\n", True, None),
    ("é,日\n".encode() * 3, True, None),
    (BOM.encode() + b"a,1\n", True, None),
    (b"a,1\rb,2\n", True, "a \\r that does not end a line"),
    (b"a,1\r\r\n", True, "a \\r that does not end a line"),
    (b"a,1\r", True, "a \\r that does not end a line"),
    (BOM.encode() + b"a,1\n", False, "the split starts with a UTF-8 BOM"),
    (b"a,\xff\n", True, "invalid UTF-8"),
    ("a,é".encode()[:-1], True, "invalid UTF-8"),  # truncated at the end of the stream
])
def test_the_arrow_stream_stops_where_arrow_would_read_other_lines(data, at_start, step, why):
    if why is None:
        _drain(data, step, at_start)
    else:
        with pytest.raises(formats.VectorFallback, match=re.escape(why)):
            _drain(data, step, at_start)


class _TextJob(MapReduceJob):
    table_columns = ("a", "b")

    def mapper(self, key, line):
        return [tuple(line.split(","))] if line else []

    def map_table(self, table):
        return list(zip(table.column("a").to_pylist(), table.column("b").to_pylist(), strict=True))


@pytest.mark.parametrize("text,fallback", [("a,b\nc,d\n", False), ("a,b\n\nc,d\n", True), ("a,b\n\r\nc,d", True)])
def test_an_empty_line_of_a_text_only_job_falls_back(tmp_path, text, fallback):
    """Arrow reads an empty line as a row of empty strings; the record mapper sees ""."""
    path = tmp_path / "in.csv"
    path.write_text(text, newline="")
    uri = lst.normalize(str(path))
    seg = reader.Segment(uri, 0, path.stat().st_size, path.stat().st_size)
    rows: list = []
    cfg = SimpleNamespace(max_line_bytes=1 << 20)
    if fallback:
        with pytest.raises(formats.VectorFallback, match="an empty line"):
            mapper._map_tables(_TextJob(), [seg], rows.extend, cfg)
    else:
        mapper._map_tables(_TextJob(), [seg], rows.extend, cfg)
        assert rows == [("a", "b"), ("c", "d")]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
@pytest.mark.parametrize(("data", "too_long"), [
    (b"abcd\nabcde\n", False), (b"abcd\nabcdef\n", True), (b"abcdef", True), (b"abcde", False),
    (b"ab\r\nabc\r\n", False), (b"abcdefgh\nab\n", True),
])
def test_the_arrow_stream_stops_at_a_line_longer_than_the_limit_wherever_reads_cut_it(data, too_long, step):
    if too_long:
        with pytest.raises(formats.VectorFallback, match="a line longer than 5 bytes"):
            _drain(data, step, max_line_bytes=5)
    else:
        _drain(data, step, max_line_bytes=5)
