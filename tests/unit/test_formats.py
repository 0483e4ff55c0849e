"""The input-format seam: the registry picks a format per object, the planner asks it for
splits and the map task reads each split with the format that planned it."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from airflow_provider_lambdamr.engine import planner
from lambda_src import formats, mapper, reader, task
from lambda_src import storage as st
from lambda_src.job import MapReduceJob

CTX = SimpleNamespace(aws_request_id="req-1", function_name="f", memory_limit_in_mb="128",
                      get_remaining_time_in_millis=lambda: 60_000)


@dataclass
class _Records:
    records: list
    size: int
    base: int
    unit = "byte"

    def offset(self, index: int) -> int:
        return self.base


class PipeFormat(formats.InputFormat):
    """A stand-in for a non-line format: ``name:count`` records separated by ``|``, split
    two records at a time (like row groups), read as ``(name, count)`` tuples."""

    name = "pipe"
    extensions = (".pipe",)

    def split(self, info, split_size, input_name, compression=None):
        data = st.for_uri(info.uri).read_bytes(info.uri)
        cuts = [0, *[i + 1 for i, b in enumerate(data) if b == ord("|")][1::2]]
        if cuts[-1] != len(data):
            cuts.append(len(data))
        return [reader.Segment(info.uri, a, b, info.size, None, input_name, info.version, self.name)
                for a, b in itertools.pairwise(cuts)]

    def read_blocks(self, store, seg, on_bad, max_line_bytes, job):
        raw = store.read_bytes(seg.uri, seg.start, seg.end)
        records = []
        for item in raw.decode().strip("|").split("|"):
            name, count = item.split(":")
            records.append((name, int(count)))
        yield _Records(records, len(raw), seg.start)


class PipeSum(MapReduceJob):
    table_columns = ("name", "count")  # a table mapper, so the vectorized path is tried first

    def mapper(self, key, record):
        name, count = record  # a tuple: a text line would not unpack
        return [(name, count)]

    def map_table(self, table):  # pragma: no cover - the pipe format has no vectorized reader
        raise AssertionError("the pipe format must fall back to the record path")

    def reducer(self, key, values):
        return [(key, sum(values))]


@pytest.fixture
def pipe(monkeypatch):
    fmt = PipeFormat()
    monkeypatch.setitem(formats.REGISTRY, fmt.name, fmt)
    return fmt


RECORDS = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]


def _write_pipe(tmp_path):
    data = "".join(f"{n}:{c}|" for n, c in RECORDS).encode()
    path = tmp_path / "in" / "data.pipe"
    path.parent.mkdir()
    path.write_bytes(data)
    return data


def test_the_registry_picks_text_by_default_and_refuses_formats_not_read():
    assert formats.for_object("file:///d/x.csv").name == "text"
    assert formats.for_object("file:///d/x.CSV.GZ").name == "text"
    with pytest.raises(reader.InputError, match=r"x\.orc: unsupported format or compression \(ORC\)"):
        formats.for_object("file:///d/x.orc")
    with pytest.raises(ValueError, match=r"unknown input format 'nope' \(known: .*text"):
        formats.for_object("file:///d/x.csv", "nope")


def test_a_registered_format_claims_its_extension_and_a_named_format_wins(pipe):
    assert formats.for_object("file:///d/x.pipe") is pipe
    assert formats.for_object("file:///d/x.csv").name == "text"
    assert formats.for_object("file:///d/x.pipe", "text").name == "text"
    assert formats.for_object("file:///d/x.csv", "pipe") is pipe


def test_a_segment_carries_its_format_through_an_event():
    seg = reader.Segment("file:///x", 0, 5, 5, None, "in", "v1", "pipe")
    assert reader.Segment.from_dict(seg.to_dict()) == seg
    text = reader.Segment("file:///x", 0, 5, 5)
    assert reader.Segment.from_dict(text.to_dict()).format == "text"


def test_the_planner_splits_an_object_as_its_format_says(tmp_path, pipe):
    data = _write_pipe(tmp_path)
    # A tiny split size and two workers: text would cut bytes anywhere; the format cuts
    # after every second record and says its splits are not to be cut further.
    tasks, summary = planner.plan({"": [str(tmp_path / "in")]}, 4, 500, parallelism=2)
    splits = [seg for t in tasks for seg in t.splits]
    assert {seg.format for seg in splits} == {"pipe"}
    pieces = [data[s.start:s.end].decode() for s in splits]
    assert pieces == ["a:1|b:2|", "a:3|c:4|", "b:5|"]
    assert summary["splits"] == 3


def test_the_map_task_reads_each_split_with_the_format_that_planned_it(tmp_path, pipe):
    _write_pipe(tmp_path)
    tasks, _ = planner.plan({"": [str(tmp_path / "in")]}, 1 << 20, 500)
    (only,) = tasks
    job_dir = st.normalize(str(tmp_path / "job"))
    event = {
        "version": task.EVENT_VERSION, "job_id": "job-1", "job_dir": job_dir,
        "job": {"ref": f"{__name__}:PipeSum", "params": {}, "partitions": 2, "vectorized": True},
        "task": {"phase": "map", "index": 0, "count": 1, "attempt": 1},
        "splits": [seg.to_dict() for seg in only.splits],
    }
    record = mapper.lambda_handler(event, CTX)
    assert record["state"] == "succeeded", record
    assert record["stats"]["input_records"] == len(RECORDS) and record["stats"]["mode"] == "record"
    pairs = []
    for out in record["outputs"]:
        for line in st.for_uri(out["uri"]).read_bytes(out["uri"]).splitlines():
            key, value = line.split(b"\t")
            pairs.append((json.loads(key), json.loads(value)))
    assert sorted(pairs) == sorted(RECORDS)


def test_a_local_text_split_is_mapped_once_for_its_check_and_its_read(tmp_path, monkeypatch):
    """Both passes over a local split (the record path's checks, then Arrow's parse) read one
    mapping of the object, whose pages then count once in the task's memory, not twice."""
    import pyarrow as pa

    path = tmp_path / "t.txt"
    path.write_text("".join(f"k{i},{i}\n" for i in range(1000)))
    mapped = []
    real = pa.memory_map

    def counting(*args, **kwargs):
        mapped.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pa, "memory_map", counting)
    job = SimpleNamespace(table_columns=("k", "v"), table_include=None, table_types={"v": "int64"},
                          table_delimiter=",")
    size = path.stat().st_size
    seg = reader.Segment(path.as_uri(), 0, size, size)
    nbytes, tables = formats.of(seg).read_tables(seg, job, 1 << 20)
    rows = [r for t in tables for r in t.to_pylist()]
    assert nbytes == size and rows == [{"k": f"k{i}", "v": i} for i in range(1000)]
    assert mapped == [str(path)]
