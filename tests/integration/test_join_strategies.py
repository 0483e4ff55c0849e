"""A Join step gives the same rows whichever strategy the planner picks.

Random left and right tables (duplicate keys, keys on one side only, empty fields, null keys,
text or integer keys on either side) are joined by ``userjobs.joins:JoinPairs`` as a broadcast
join and as a partitioned one, with random split sizes, partitions and workers; both must
equal a plain nested loop over the rows, where keys match when the key codec encodes them the
same (so an integer key never matches a text one, and a null matches a null).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s

from airflow_provider_lambdamr.engine import planner
from tests.helpers import read_rows, run_job

text_keys = s.sampled_from(["k1", "k2", "", "NULL", "k 3", "ü"])
int_keys = s.integers(-3, 3)
values = s.sampled_from(["", "x", "y", "z z"])


@s.composite
def tables(draw):
    kinds = draw(s.tuples(s.sampled_from(["string", "int64"]), s.sampled_from(["string", "int64"])))
    sides = []
    for kind in kinds:
        keys = int_keys if kind == "int64" else text_keys
        sides.append(draw(s.lists(s.tuples(keys, values), min_size=1, max_size=25)))  # empty: always broadcast
    return kinds, sides


layouts = s.fixed_dictionaries({
    "split_size": s.sampled_from([40, 200, 64 * 1024 * 1024]),
    "partitions": s.integers(1, 4),
    "workers": s.integers(1, 2),
    "files": s.integers(1, 3),
})


def _write(folder: Path, rows: list[tuple], files: int) -> str:
    folder.mkdir(parents=True)
    for i in range(files):
        part = rows[i::files]
        (folder / f"part-{i}.csv").write_text("".join(f"{k},{v}\n" for k, v in part))
    return str(folder)


def _codec_key(kind: str, key):
    """The key as the codec sees it: (type, value); a text NULL is the null key."""
    if kind == "string" and key == "NULL":
        return ("null", None)
    return (kind, key)


def _reference(kinds, sides) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for lk, a in sides[0]:
        for rk, b in sides[1]:
            left, right = _codec_key(kinds[0], lk), _codec_key(kinds[1], rk)
            if left == right:
                out[json.dumps(left[1] if kinds[0] == "int64" or left[0] == "null" else str(lk))].append([a, b])
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=tables(), layout=layouts)
def test_broadcast_and_partitioned_joins_equal_a_nested_loop(fixture_jobs_path, monkeypatch, data, layout):
    kinds, sides = data
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        inputs = {name: [_write(tmp_path / name, rows, layout["files"])] for name, rows in zip(("left", "right"),
                                                                                                sides, strict=True)}
        # The factor decides: 0 broadcasts whatever the sizes, a huge one partitions.
        for strategy, factor in (("broadcast", 0), ("partitioned", 10**15)):
            monkeypatch.setattr(planner, "BROADCAST_MEMORY_FACTOR", factor)
            out = tmp_path / f"out-{strategy}"
            summary = run_job(job="userjobs.joins:JoinPairs", inputs=inputs, output=str(out),
                              params={"left_key": kinds[0], "right_key": kinds[1]}, workers=layout["workers"],
                              partitions=layout["partitions"], split_size=layout["split_size"],
                              allow_empty_input=True, speculation=False, job_id=f"join-{strategy}")
            assert summary["join"]["strategy"] == strategy
            results[strategy] = {row[0]: json.loads(",".join(row[1:])) for row in read_rows(str(out))}
    expected = _reference(kinds, sides)
    assert results["broadcast"] == expected
    assert results["partitioned"] == expected
