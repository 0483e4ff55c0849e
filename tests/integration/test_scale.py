"""Many inputs: every object listed and read once."""

from __future__ import annotations

import pytest

from tests.helpers import read_counts, run_job


@pytest.mark.slow
def test_ten_thousand_small_input_objects(tmp_path):
    root = tmp_path / "in"
    for d in range(10):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (root / f"d{d}" / f"f{i:04d}.txt").write_text(f"w{i % 13} d{d}\n")
    summary = run_job(job="wordcount", inputs={"": [str(root)]}, output=str(tmp_path / "out"), partitions=2)
    assert summary["counters"]["input_objects"] == 10_000
    assert summary["counters"]["input_records"] == 10_000
    assert summary["tasks"]["map"] == 20  # packed: at most 500 objects a task
    counts = read_counts(str(tmp_path / "out"))
    assert counts == {**{f"w{k}": sum(1 for i in range(10_000) if i % 1000 % 13 == k) for k in range(13)},
                      **{f"d{d}": 1000 for d in range(10)}}
