"""The Join step's pieces: key equality per the codec, job errors, step checks, the planner's choice."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_provider_lambdamr.engine import planner
from lambda_src import arrow_join, contract, task
from lambda_src.job import BadRecord, Join, MapReduceJob, Step, TableInput


def _rows(table: pa.Table) -> list[tuple]:
    return sorted((tuple(r.values()) for r in table.to_pylist()), key=repr)


def test_keys_match_as_the_codec_encodes_them():
    left = pa.table({"key": pa.array([1, 2, None, None], pa.int32()), "a": ["x", "y", "n1", "n2"]})
    right = pa.table({"key": pa.array([1, 1, None, 3], pa.int64()), "b": ["p", "q", "m", "r"]})
    got = arrow_join.join_tables(left, right)
    assert got.column_names == ["key", "a", "b"]
    # int32 1 and int64 1 are one key; null matches null (as the codec's null does)
    assert _rows(got) == sorted([(1, "x", "p"), (1, "x", "q"), (None, "n1", "m"), (None, "n2", "m")], key=repr)


def test_text_and_integer_keys_never_match_but_nulls_do():
    left = pa.table({"key": pa.array(["1", "", None]), "a": ["t", "e", "n"]})
    right = pa.table({"key": pa.array([1, None], pa.int64()), "b": ["i", "m"]})
    assert _rows(arrow_join.join_tables(left, right)) == [(None, "n", "m")]
    empty = pa.table({"key": pa.array([""]), "b": ["e2"]})
    assert _rows(arrow_join.join_tables(left, empty)) == [("", "e", "e2")]


def test_column_clashes_and_a_bad_emit_are_the_jobs_fault():
    side = pa.table({"key": ["k"], "a": ["x"]})
    with pytest.raises(task.TaskJobError, match=r"both sides of the join have the columns \['a'\]"):
        arrow_join.join_tables(side, side)
    join = Join(left=TableInput("l", ("k", "a"), key="k"), right=TableInput("r", ("k", "b"), key="k"),
                emit=lambda t: t.select(["a"]))
    with pytest.raises(task.TaskJobError, match=r"emit must return .* got \['a'\]"):
        arrow_join.emit_pairs(join, pa.table({"key": ["k"], "a": ["x"], "b": ["y"]}))
    assert task.failure_class(task.TaskJobError("x")) is task.TaskJobError  # not retried


def test_a_side_reads_lines_as_python_does():
    side = TableInput("pages", ("url", "rank", "avg"), key="url", include=("url", "rank"), types={"rank": "int64"})
    assert side.parse_line("u/1, 12,3") == ["u/1", 12]  # int() reads " 12"
    assert side.parse_line("") is None
    with pytest.raises(BadRecord, match="expected 3 comma-separated columns, found 2"):
        side.parse_line("u/1,12")
    with pytest.raises(BadRecord, match="column rank is not an integer: 'x'"):
        side.parse_line("u/1,x,3")
    with pytest.raises(ValueError, match="the key column 'url' is not read"):
        TableInput("pages", ("url", "rank"), key="url", include=("rank",))


class _Steps(MapReduceJob):
    join = Join(left=TableInput("l", ("k",), key="k"), right=TableInput("r", ("k",), key="k"),
                emit=lambda t: t)

    def steps(self):
        return [Step(reducer=self.reducer), Step(reducer=self.reducer)]

    def reducer(self, key, values):
        yield key, 1


def test_a_join_must_be_the_first_of_as_many_steps_as_the_reference():
    class Second(_Steps):
        def table_steps(self):
            return [Step(reducer=self.reducer), self.join]

    class Fewer(_Steps):
        def table_steps(self):
            return [self.join]

    with pytest.raises(TypeError, match="a Join must be the first step of several"):
        Second().checked_steps(vectorized=True)
    with pytest.raises(TypeError, match=r"table_steps\(\) has 1 steps, steps\(\) 2"):
        Fewer().checked_steps(vectorized=True)
    assert isinstance(Second().checked_steps(vectorized=False)[0], Step)  # record mode: steps()


def test_the_planner_broadcasts_the_smaller_input_only_when_it_fits():
    mb = 1024 * 1024
    fits = planner.join_strategy({"big": 900 * mb, "small": 100 * mb}, memory_mb=1536)
    assert fits["strategy"] == "broadcast" and fits["broadcast"] == "small"
    too_big = planner.join_strategy({"big": 900 * mb, "small": 500 * mb}, memory_mb=1536)
    assert too_big["strategy"] == "partitioned" and too_big["broadcast"] is None
    assert too_big["input_bytes"] == {"big": 900 * mb, "small": 500 * mb} and too_big["memory_mb"] == 1536


def _lines(path, count: int, width: int = 99) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i:0{width}d}\n" for i in range(count)))  # 100-byte lines


@pytest.mark.parametrize(("parallelism", "count"), [(1, 2), (2, 2), (4, 4), (64, 6)])
def test_a_broadcast_joins_tasks_are_one_per_worker_of_one_to_four_broadcast_inputs_in_planned_splits(
        tmp_path, parallelism, count):
    for f in range(4):
        _lines(tmp_path / "big" / f"p{f}.txt", 10_000)  # 4 x 1 MB
    _lines(tmp_path / "small" / "p0.txt", 7_500)  # 0.75 MB: broadcast, and more than a split
    split = 256 * 1024
    tasks, summary = planner.plan({"big": [str(tmp_path / "big")], "small": [str(tmp_path / "small")]}, split,
                                  500, parallelism=parallelism, join_memory_mb=1536)
    assert summary["join"]["broadcast"] == "small"
    big = [[s for s in t.splits if s.input == "big"] for t in tasks]
    shares = [sum(s.end - s.start for s in segs) for segs in big]
    # 4 MB: a task per worker, of at most 3 MB (four broadcast inputs: 1 worker gets 3 + 1 MB),
    # not 16 tasks of a split each; tasks for 64 workers would be smaller than the broadcast
    # input: tasks of about its size instead (0.75 MB: 6 of 0.67 MB)
    assert sum(shares) == 4_000_000 and len(tasks) == count
    assert max(shares) <= 3_000_000 and min(shares[:-1]) >= 4_000_000 // count - 1
    # each task reads its share a split at a time: a split's pages, not the share's, at once
    assert max(s.end - s.start for segs in big for s in segs) <= split
    for t in tasks:
        assert [(s.uri, s.start, s.end) for s in t.splits if s.input == "small"] == [
            ((tmp_path / "small" / "p0.txt").as_uri(), 0, 750_000)]


def test_a_partitioned_join_keeps_the_planned_split_size(tmp_path):
    for name in ("big", "small"):
        _lines(tmp_path / name / "p0.txt", 10_000)
    tasks, summary = planner.plan({"big": [str(tmp_path / "big")], "small": [str(tmp_path / "small")]},
                                  256 * 1024, 500, join_memory_mb=1)  # 1 MB of memory: nothing fits
    assert summary["join"]["strategy"] == "partitioned"
    assert len(tasks) == 8  # 2 MB in 256 kB tasks


def test_a_sides_select_runs_on_each_table_as_it_is_read(monkeypatch):
    """A split's rows are selected batch by batch: its unselected rows are never all held."""
    events = []

    def tables():
        for n in range(3):
            events.append(f"read {n}")
            yield pa.table({"k": [f"k{n}"], "v": [n]})

    class Reader:
        def read_tables(self, seg, side, max_line_bytes):
            return 30, tables()

    def select(table):
        events.append("select")
        return table

    monkeypatch.setattr(arrow_join.formats, "of", lambda seg: Reader())
    side = TableInput("l", ("k", "v"), key="k", types={"v": "int64"}, select=select)
    seg = arrow_join.reader.Segment("file:///x", 0, 30, 30, input="l")
    cfg = contract.JobConfig(ref="x:Y", params={}, partitions=1)
    table, records, size = arrow_join.read_side(side, [seg], cfg, None)
    assert events == ["read 0", "select", "read 1", "select", "read 2", "select"]
    assert (table.column_names, table.num_rows, records, size) == (["key", "v"], 3, 3, 30)


def test_a_step_on_tables_follows_a_join_or_another_and_has_no_record_functions():
    join = _Steps.join

    def tables(t):
        return t

    class Good(_Steps):
        def table_steps(self):
            return [join, Step(combine_table=tables, reduce_table=tables)]

    class AfterRecords(_Steps):
        def table_steps(self):
            return [Step(reducer=self.reducer), Step(reduce_table=tables)]

    class Mixed(_Steps):
        def table_steps(self):
            return [join, Step(reducer=self.reducer, reduce_table=tables)]

    class CombineOnly(_Steps):
        def table_steps(self):
            return [join, Step(combine_table=tables)]

    assert Good().checked_steps(vectorized=True)[1].on_tables
    with pytest.raises(TypeError, match="step 2 works on tables, so it must follow a Join or another step"):
        AfterRecords().checked_steps(vectorized=True)
    with pytest.raises(TypeError, match=r"step 2 works on tables .* cannot also have reducer"):
        Mixed().checked_steps(vectorized=True)
    with pytest.raises(TypeError, match="step 2 has a combine_table but no reduce_table"):
        CombineOnly().checked_steps(vectorized=True)


def test_the_broadcast_side_keeps_only_rows_that_may_join_the_other_sides_keys():
    """A semi-join before the join: equal keys as the codec sees them (int32 1 is int64 1),
    and every null key (a null joins a null); keys of another kind only by a null."""
    keys = arrow_join.semi_keys(pa.chunked_array([pa.array([1, 2, None, 2], pa.int64())]))
    assert sorted(keys.to_pylist()) == [1, 2]
    side = pa.table({"k": pa.array([1, 3, None, 2, 4], pa.int32()), "v": list("abcde")})
    assert arrow_join._may_match(side, "k", keys).column("v").to_pylist() == ["a", "c", "d"]
    text = pa.table({"k": ["1", None, "2"], "v": list("xyz")})
    assert arrow_join._may_match(text, "k", keys).column("v").to_pylist() == ["y"]
    assert arrow_join.semi_keys(pa.array([None, None], pa.null())) is None


def test_a_share_is_joined_in_chunks_of_a_quarter_of_the_memory(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1")  # chunks of 256 kB
    tables = [pa.table({"k": pa.array(range(n * 10_000, n * 10_000 + 10_000), pa.int64())}) for n in range(8)]
    empty = pa.table({"k": pa.array([], pa.int64())})
    chunks = list(arrow_join._chunks(iter([empty, *tables, empty])))
    # 80 kB a table: chunks of 4 (the fourth passes 256 kB), then the rest; none without rows
    assert [c.num_rows for c in chunks] == [40_000, 40_000]
    assert pa.concat_tables(chunks).column("k").to_pylist() == list(range(80_000))


def test_a_broadcast_map_task_in_many_chunks_joins_as_in_one_and_counts_the_broadcast_input_once(
        tmp_path, monkeypatch):
    from types import SimpleNamespace

    from airflow_provider_lambdamr.engine import amplab_gen
    from lambda_src import arrow_shuffle, mapper
    from lambda_src import storage as st

    amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=3_000, files=2, seed=4)
    amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=30_000, files=2, seed=4, rankings_rows=3_000)
    splits = []
    for name, folder in (("uservisits", "uv"), ("rankings", "rk")):
        for path in sorted((tmp_path / folder).glob("part-*")):
            size = path.stat().st_size
            splits.append({"uri": path.as_uri(), "start": 0, "end": size, "size": size, "input": name})
    ctx = SimpleNamespace(aws_request_id="r", function_name="f", memory_limit_in_mb="1536",
                          get_remaining_time_in_millis=lambda: 60_000)
    results = {}
    for memory in ("1536", "1"):  # one chunk; chunks of 256 kB of the visits' selected rows
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory)
        job_dir = st.normalize(str(tmp_path / f"job-{memory}"))
        event = {"version": task.EVENT_VERSION, "job_id": "j", "job_dir": job_dir,
                 "job": {"ref": "lambda_src.jobs.amplab:Query3a", "partitions": 1, "broadcast": "rankings",
                         "params": {"start": "1970-01-01", "end": "2010-12-31"}},  # every visit
                 "task": {"phase": "map", "index": 0, "count": 1, "attempt": 1}, "splits": splits}
        record = mapper.lambda_handler(event, ctx)
        (out,) = record["outputs"]
        totals = arrow_shuffle.read_run(out["uri"]).to_pylist()
        results[memory] = (sorted((r["key"], round(r["revenue"], 6), r["rank_sum"], r["visits"]) for r in totals),
                           record["stats"]["input_records"], record["stats"]["joined_rows"])
    assert results["1"] == results["1536"]
    assert results["1"][1] == 33_000 and results["1"][2] > 1_000  # both tables once; visits joined


def test_a_table_step_has_the_partitions_of_its_reference_step():
    """The driver plans each step's partitions from steps(), before it knows the mode."""
    class Other(_Steps):
        def table_steps(self):
            return [self.join, Step(reduce_table=lambda t: t, partitions=3)]

    with pytest.raises(TypeError, match=r"step 2 has 3 partitions in table_steps\(\), None in steps\(\)"):
        Other().checked_steps(vectorized=True)
