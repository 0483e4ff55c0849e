"""The Join step's pieces: key equality per the codec, job errors, step checks, the planner's choice."""

from __future__ import annotations

import pyarrow as pa
import pytest

from airflow_provider_lambdamr.engine import planner
from lambda_src import arrow_join, task
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
