"""Property tests: a job's result depends on its input alone.

Not on the split size, the workers, the partitions, the fan-in, the vectorized path or
retries: many small random jobs on the real local runtime, each checked against a plain
single-process loop over the same input.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from lambda_src import arrow_shuffle as ash
from lambda_src import storage as st
from tests.helpers import read_rows, run_job

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = s.none() | s.booleans() | s.integers(-3, 3) | s.sampled_from([0.0, -0.0, 1.0, 1e-05, 2**70, 1.5]) \
    | s.text(alphabet="ab,\"\t\r\n é\u2028", max_size=3)
json_keys = s.recursive(scalars, lambda inner: s.lists(inner, max_size=2)
                        | s.dictionaries(s.text(alphabet="abc", max_size=2), inner, max_size=2), max_leaves=4)
#: Keys that Python's equality (or member order) would wrongly merge, drawn often.
lookalikes = s.sampled_from([0, 0.0, -0.0, False, 1, 1.0, True, "1", None, [], {}, [1],
                             {"a": 1, "b": 2}, {"b": 2, "a": 1}])
lines = s.lists(s.lists(s.tuples(lookalikes | json_keys, s.integers(-5, 5)), max_size=4), min_size=1,
                max_size=25)
layouts = s.fixed_dictionaries({
    "split_size": s.sampled_from([64, 150, 400, 64 * 1024 * 1024]),
    "workers": s.integers(1, 2),
    "partitions": s.integers(1, 4),
    "fan_in": s.integers(2, 4),
    "max_files_per_task": s.integers(1, 3),
    "files": s.integers(1, 3),
    "fail": s.booleans(),
})


def _canonical(key) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _write(root: Path, rows: list[str], files: int) -> str:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"part{i}.txt").write_text("".join(r + "\n" for r in rows[i::files]), encoding="utf-8")
    return str(root)


@pytest.mark.slow
@SETTINGS
@given(data=lines, layout=layouts)
def test_key_sums_match_a_plain_loop_whatever_the_layout_and_retries(fixture_jobs_path, data, layout):
    reference: dict[str, int] = defaultdict(int)
    for pairs in data:
        for key, value in pairs:
            reference[_canonical(key)] += value
    rows = [json.dumps(pairs) for pairs in data]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inp = _write(tmp_path / "in", rows, layout["files"])
        params = {}
        if layout["fail"]:
            (tmp_path / "markers").mkdir()
            params["fail_dir"] = str(tmp_path / "markers")
        run_job(job="userjobs.jsonkeys:JsonKeySum", inputs={"": [inp]}, output=str(tmp_path / "out"),
                workers=layout["workers"], partitions=layout["partitions"], fan_in=layout["fan_in"],
                split_size=layout["split_size"], max_files_per_task=layout["max_files_per_task"],
                params=params, allow_empty_input=True, speculation=False)
        got = read_rows(str(tmp_path / "out"))
    assert len({r[0] for r in got}) == len(got), "a key in more than one row"
    assert {r[0]: int(r[1]) for r in got} == dict(reference)


ips = s.sampled_from(["1.2.3.4", "1.2.3.5", "10.0.0.1", "10.0.0.12", "9.9.9.9"])
revenues = s.sampled_from(["0.5", "1", "1e-05", "0.00001", "-0.0", "2.25", "1000000.125", "3"])
visits = s.lists(s.tuples(ips, revenues), min_size=1, max_size=40)


@pytest.mark.slow
@SETTINGS
@given(rows=visits, layout=layouts, vectorized=s.booleans(), block_rows=s.sampled_from([None, 1, 3]))
def test_amplab_2a_matches_a_plain_loop_vectorized_or_not(rows, layout, vectorized, block_rows):
    """Vectorized, the shuffle stays in Arrow; with a few rows a key block (``block_rows``, the
    function's LAMBDAMR_BLOCK_ROWS), map tasks write their runs in blocks, a different number
    per task, and reduce tasks aggregate block by block."""
    reference: dict[str, float] = defaultdict(float)
    for ip, revenue in rows:
        reference[ip[:8]] += float(revenue)
    text = [f"{ip},http://x/{i},1980-01-01,{rev},M,USA,USA-EN,w,1" for i, (ip, rev) in enumerate(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inp = _write(tmp_path / "in", text, layout["files"])
        run_job(job="amplab-2a", inputs={"": [inp]}, output=str(tmp_path / "out"), workers=layout["workers"],
                partitions=layout["partitions"], fan_in=layout["fan_in"], split_size=layout["split_size"],
                max_files_per_task=layout["max_files_per_task"], vectorized=vectorized, speculation=False,
                env={"LAMBDAMR_BLOCK_ROWS": str(block_rows)} if block_rows else None)
        got = read_rows(str(tmp_path / "out"))
    assert sorted(r[0] for r in got) == sorted(reference)
    for key, value in got:
        # sums of the same floats in another order may differ in the last bits
        assert math.isclose(float(value), reference[key], rel_tol=1e-12, abs_tol=1e-12), (key, value)



@pytest.mark.parametrize("fan_in", [2, 8])
def test_2a_is_exact_when_map_tasks_write_their_runs_in_different_numbers_of_key_blocks(tmp_path, fan_in):
    """Files of very different sizes, one map task each: with a key block of 2 rows, their runs
    hold from 1 to 32 blocks, and every reduce task (and, with a fan-in of 2, every
    intermediate round) merges the finer ones' blocks and splits the coarser ones'."""
    sizes = [400, 3, 60, 1, 150]
    reference: dict[str, float] = defaultdict(float)
    (tmp_path / "in").mkdir()
    for f, size in enumerate(sizes):
        lines = []
        for i in range(size):
            ip = f"{i % 45:02d}.{i % 2}.00.{f}"  # 90 prefixes, each in several files
            reference[ip[:8]] += i % 5 + 0.5
            lines.append(f"{ip},http://x/{i},1980-01-01,{i % 5 + 0.5},M,USA,USA-EN,w,1\n")
        (tmp_path / "in" / f"part{f}.txt").write_text("".join(lines))
    result = run_job(job="amplab-2a", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                     partitions=2, fan_in=fan_in, max_files_per_task=1, speculation=False,
                     keep_intermediates=True, env={"LAMBDAMR_BLOCK_ROWS": "2"})
    blocks = set()
    for run in (tmp_path / "out" / "_jobs" / result["job_id"]).rglob("*.arrow"):
        blocks.add(len(ash.read_blocked_run(st.normalize(str(run)))[1] or [0]))
    assert len(blocks) >= 3, f"the runs' numbers of blocks: {sorted(blocks)}"
    got = read_rows(str(tmp_path / "out"))
    assert sorted(r[0] for r in got) == sorted(reference)
    for key, value in got:
        assert float(value) == reference[key], key
