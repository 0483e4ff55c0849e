"""Key blocks end to end: a reduce task aggregating its partition one block of keys at a time
gives the result of one aggregation of the whole partition."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambda_src import arrow_shuffle as ash
from lambda_src import storage as st
from tests.helpers import read_rows, run_job


@pytest.mark.parametrize("output_format", ["csv", "jsonl", "parquet"])
def test_a_reduce_table_returning_a_record_batch_is_written_whatever_the_blocks(tmp_path, fixture_jobs_path,
                                                                                 output_format):
    """Every result writer takes a RecordBatch from reduce_table; with a key block of one row
    the reduce tasks call it once a block, and its results still make the partition's."""
    rng = random.Random(7)
    reference: dict[str, float] = collections.defaultdict(float)
    (tmp_path / "in").mkdir()
    for f in range(3):
        regions = [f"r{rng.randint(0, 60)}" for _ in range(200)]
        amounts = [rng.randint(-40, 400) / 4 for _ in regions]  # quarters: exact sums in any order
        for region, amount in zip(regions, amounts, strict=True):
            reference[region] += amount
        pq.write_table(pa.table({"region": regions, "amount": amounts}), tmp_path / "in" / f"p{f}.parquet")
    out = str(tmp_path / "out")
    run_job(job="userjobs.blocks:SalesAsBatches", inputs={"": [str(tmp_path / "in")]}, output=out, partitions=2,
            output_format=output_format, speculation=False, env={"LAMBDAMR_BLOCK_ROWS": "1"})
    got = _rows(out, output_format)
    assert sorted(key for key, _ in got) == sorted(reference)
    assert {key: float(value) for key, value in got} == reference


def _rows(out: str, output_format: str) -> list[tuple[str, str]]:
    """The (first, second) columns of every row of the result's part files."""
    if output_format == "csv":
        return [(row[0], row[1]) for row in read_rows(out)]
    rows = []
    for part in sorted(Path(out).glob("part-*")):
        if output_format == "parquet":
            rows += [tuple(row.values()) for row in pq.read_table(part).to_pylist()]
        else:
            rows += [tuple(json.loads(line).values()) for line in part.read_text().splitlines()]
    return rows


KEYS = {
    # quotes, backslashes, non-ASCII, control characters, strings past the 64 bytes hashed in Arrow, nulls
    "string": lambda rng: None if rng.random() < 0.05 else rng.choice(
        ['q"', "b\\s", "é日", "c\x01\x1f", "x" * 70, "y" * 65 + "é", "", "t\t", "n\n"]) + str(rng.randint(0, 400)),
    "integer": lambda rng: rng.randint(-10**12, 10**12) if rng.random() < 0.1 else rng.randint(0, 800),
    "boolean": lambda rng: rng.random() < 0.5,
}


@pytest.mark.parametrize("kind", sorted(KEYS))
@pytest.mark.parametrize("partitions", [1, 64])
def test_keys_of_each_type_are_aggregated_once_in_any_blocks(tmp_path, fixture_jobs_path, kind, partitions):
    """Files of different sizes (one map task each, so runs of 1 to 64 blocks), a fan-in of 2
    (intermediate rounds keep blocks), one partition or 64: every key's one result row holds
    its exact sum."""
    rng = random.Random(partitions)
    reference: dict[str, float] = collections.defaultdict(float)
    (tmp_path / "in").mkdir()
    for f, size in enumerate([900, 5, 300, 1, 60]):
        regions = [KEYS[kind](rng) for _ in range(size)]
        amounts = [rng.randint(-40, 400) / 4 for _ in regions]
        for region, amount in zip(regions, amounts, strict=True):
            reference[json.dumps(region)] += amount
        pq.write_table(pa.table({"region": regions, "amount": amounts}), tmp_path / "in" / f"p{f}.parquet")
    out = str(tmp_path / "out")
    run_job(job="userjobs.rows:SalesByRegion", inputs={"": [str(tmp_path / "in")]}, output=out, partitions=partitions,
            output_format="jsonl", fan_in=2, max_files_per_task=1, speculation=False,
            env={"LAMBDAMR_BLOCK_ROWS": "1"})
    got = collections.Counter()
    sums = {}
    for key, value in _rows(out, "jsonl"):
        got[json.dumps(key)] += 1
        sums[json.dumps(key)] = value
    assert got == collections.Counter(dict.fromkeys(reference, 1)), "a key missing or in several rows"
    assert sums == reference


@pytest.mark.parametrize(("kind", "blocked"), [("ascii", True), ("integer", False), ("non-ascii", False)])
def test_with_one_partition_map_tasks_write_blocks_only_for_keys_hashed_in_arrow(tmp_path, fixture_jobs_path,
                                                                                  kind, blocked):
    """With one partition no CRC-32 is computed for partitioning: blocks would cost one a key,
    in Python (about a microsecond) for keys other than short printable ASCII strings."""
    keys = {"ascii": lambda i: f"r{i % 50}", "integer": lambda i: i % 50, "non-ascii": lambda i: f"é{i % 50}"}[kind]
    (tmp_path / "in").mkdir()
    regions = [keys(i) for i in range(400)]
    pq.write_table(pa.table({"region": regions, "amount": [1.0] * 400}), tmp_path / "in" / "p.parquet")
    out = tmp_path / "out"
    result = run_job(job="userjobs.rows:SalesByRegion", inputs={"": [str(tmp_path / "in")]}, output=str(out),
                     partitions=1, output_format="jsonl", speculation=False, keep_intermediates=True,
                     env={"LAMBDAMR_BLOCK_ROWS": "1"})
    runs = list((out / "_jobs" / result["job_id"] / "map").rglob("*.arrow"))
    assert len(runs) == 1
    assert (ash.read_blocked_run(st.normalize(str(runs[0])))[1] is not None) == blocked
    assert sorted(json.dumps(key) for key, _ in _rows(str(out), "jsonl")) == sorted({json.dumps(k) for k in regions})
