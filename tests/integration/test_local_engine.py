"""End to end on the local runtime (real worker processes) with file:// storage."""

from __future__ import annotations

import collections
import gzip
import json
import random
import re
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from tests.helpers import read_counts, read_rows, run_job

WORDS = ["alpha", "beta", "Gamma", "delta", "épsilon", "zeta", "it's", "x1"]


def make_text(directory: Path, files: int, lines: int, seed: int = 0, gz_every: int = 0) -> collections.Counter:
    """Random text files; returns the word counts a correct word count must find."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    expected: collections.Counter = collections.Counter()
    for f in range(files):
        body_lines = []
        for _ in range(rng.randint(0, lines)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(0, 8))]
            body_lines.append(" ".join(words) + ("\r" if rng.random() < 0.05 else ""))
        text = "\n".join(body_lines) + ("\n" if rng.random() < 0.5 else "")
        for line in body_lines:
            expected.update(re.findall(r"[\w']+", line.lower()))
        data = text.encode()
        if gz_every and f % gz_every == 0:
            (directory / f"f{f:03d}.txt.gz").write_bytes(gzip.compress(data))
        else:
            (directory / f"f{f:03d}.txt").write_bytes(data)
    return expected


@pytest.mark.parametrize(
    "partitions,fan_in,split_size",
    [(1, 2, 97), (3, 2, 200), (2, 10, 64 * 1024 * 1024), (4, 3, 1000)],
)
def test_wordcount_is_exact_for_any_layout(tmp_path, partitions, fan_in, split_size):
    expected = make_text(tmp_path / "in", files=12, lines=60, seed=partitions, gz_every=4)
    out = tmp_path / "out"
    summary = run_job(
        job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(out),
        partitions=partitions, fan_in=fan_in, split_size=split_size,
    )
    assert read_counts(str(out)) == dict(expected)
    assert summary["files"] == [f"part-{p:05d}" for p in range(partitions)]
    assert summary["counters"]["output_records"] == len(expected)
    assert json.loads((out / "_SUCCESS").read_text())["job_id"] == summary["job_id"]
    # intermediates are cleaned; the manifest and status records stay for audit
    job_dir = out / "_jobs" / summary["job_id"]
    assert (job_dir / "jobdata.json").is_file()
    assert not (job_dir / "map").exists() and not (job_dir / "reduce").exists()


def test_reference_tree_rounds(tmp_path):
    """R=1, F=2 is the reference architecture's binary tree: ceil(log2 M) rounds."""
    make_text(tmp_path / "in", files=8, lines=20, seed=3)
    for i in range(8):  # make sure every file yields output
        with open(tmp_path / "in" / f"f{i:03d}.txt", "a") as fh:
            fh.write("\nalpha\n")
    summary = run_job(
        job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
        partitions=1, fan_in=2, split_size=10**9, max_files_per_task=1, keep_intermediates=True,
    )
    assert summary["tasks"]["map"] == 8
    job_dir = tmp_path / "out" / "_jobs" / summary["job_id"] / "status" / "reduce"
    rounds = sorted(p.name for p in job_dir.iterdir())
    assert rounds == ["r001", "r002", "r003"]
    assert [len(list((job_dir / r).iterdir())) for r in rounds] == [4, 2, 1]


def test_user_job_from_a_package_outside_the_project(tmp_path, monkeypatch):
    pkg = tmp_path / "ext" / "linejobs"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "lengths.py").write_text(
        "from lambda_src.job import MapReduceJob\n"
        "class LineLengths(MapReduceJob):\n"
        "    def mapper(self, key, line):\n"
        "        yield len(line), [1, len(line.split())]\n"
        "    def combiner(self, key, values):\n"
        "        values = list(values)\n"
        "        yield key, [sum(v[0] for v in values), sum(v[1] for v in values)]\n"
        "    def reducer(self, key, values):\n"
        "        values = list(values)\n"
        "        yield [key, self.params['tag']], (sum(v[0] for v in values), sum(v[1] for v in values))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "ext"))
    lines = ["a b", "", "ccc", "a b", "dd ee ff", "x"]
    (tmp_path / "in.txt").write_text("\n".join(lines))
    summary = run_job(
        job="linejobs.lengths:LineLengths", inputs={"": [str(tmp_path / "in.txt")]},
        output=str(tmp_path / "out"), params={"tag": "t1"}, split_size=5, partitions=2,
    )
    rows = sorted(read_rows(str(tmp_path / "out")), key=lambda r: int(r[0]))
    expected = collections.defaultdict(lambda: [0, 0])
    for line in lines:
        expected[len(line)][0] += 1
        expected[len(line)][1] += len(line.split())
    assert rows == [[str(k), "t1", str(c), str(w)] for k, (c, w) in sorted(expected.items())]
    assert summary["job"] == "linejobs.lengths:LineLengths"


def test_a_task_that_fails_once_is_retried_and_the_result_is_exact(tmp_path, fixture_jobs_path):
    expected = make_text(tmp_path / "in", files=6, lines=30, seed=9)
    expected_split = collections.Counter()
    for f in sorted((tmp_path / "in").iterdir()):
        for line in f.read_text().split("\n"):
            expected_split.update(line.split())
    summary = run_job(
        job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
        output=str(tmp_path / "out"), split_size=50, partitions=2, fan_in=2,
        params={"fail_once": str(tmp_path / "m1"), "reduce_fail_once": str(tmp_path / "m2")},
    )
    assert expected  # the data is not empty
    assert read_counts(str(tmp_path / "out")) == dict(expected_split)
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    assert summary["invocations"]["reduce"]["failed_invocations"] == 1


def test_a_task_that_always_fails_fails_the_job_naming_task_and_input(tmp_path, fixture_jobs_path):
    make_text(tmp_path / "in", files=1, lines=10, seed=1)
    with pytest.raises(JobFailed) as info:
        run_job(
            job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
            output=str(tmp_path / "out"), params={"always_fail": "1"}, max_attempts=3,
        )
    msg = str(info.value)
    assert re.match(
        r"map task 0 of 1 failed after 3 attempts: RuntimeError: injected failure \(always\) "
        r"\(input: file://.*/in/f000\.txt bytes 0-\d+\)$", msg
    ), msg


def test_timeout_is_reported_like_lambda_and_retried(tmp_path, fixture_jobs_path):
    make_text(tmp_path / "in", files=2, lines=10, seed=2)
    summary = run_job(
        job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
        output=str(tmp_path / "out"), timeout_s=1.0, max_files_per_task=1,
        params={"sleep_once": str(tmp_path / "s"), "sleep_s": "30"},
    )
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    with pytest.raises(JobFailed, match=r"Sandbox\.Timedout: RequestId: [0-9a-f-]+ Error: Task timed out "
                                        r"after 1\.00 seconds; raise --timeout-s"):
        run_job(
            job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
            output=str(tmp_path / "out2"), timeout_s=1.0, max_attempts=2,
            params={"sleep_always": "30"},
        )


def test_memory_limit_is_enforced_and_reported(tmp_path, fixture_jobs_path):
    make_text(tmp_path / "in", files=1, lines=5, seed=4)
    with pytest.raises(JobFailed, match=r"Runtime\.OutOfMemory: .*Max Memory Used: \d+ MB of 256 MB\); "
                                        r"raise --memory-mb"):
        run_job(
            job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
            output=str(tmp_path / "out"), memory_mb=256, max_attempts=1, params={"alloc_mb": "400"},
        )


def test_worker_killed_by_sigkill_is_detected_retried_and_replaced(tmp_path, fixture_jobs_path):
    make_text(tmp_path / "in", files=4, lines=20, seed=5)
    spec = JobSpec(
        job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
        output=str(tmp_path / "out"), max_files_per_task=1, params={"kill_once": str(tmp_path / "k")},
    )
    with LocalRuntime(workers=2) as rt:
        summary = Driver(spec, rt).run()
        assert rt.workers_replaced == 1
        assert len(rt._pool) == 2
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    assert summary["counters"]["input_records"] > 0


def test_cold_starts_are_counted_once_per_worker(tmp_path):
    make_text(tmp_path / "in", files=6, lines=10, seed=6)
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   max_files_per_task=1)
    with LocalRuntime(workers=2) as rt:
        summary = Driver(spec, rt).run()
        used = [w for w in rt._pool if w.invocations > 0]
        assert rt.cold_starts == len(used) >= 1
    inv = summary["invocations"]
    assert inv["map"]["cold_starts"] + inv["reduce"]["cold_starts"] == len(used)
    assert inv["map"]["invocations"] == 6 and inv["reduce"]["invocations"] == 1


def test_rerun_with_the_same_job_id_is_idempotent(tmp_path):
    make_text(tmp_path / "in", files=3, lines=10, seed=7)
    kwargs = dict(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), job_id="fixed-1")
    first = run_job(**kwargs)
    part = tmp_path / "out" / "part-00000"
    mtime = part.stat().st_mtime_ns
    second = run_job(**kwargs)
    assert second == first
    assert part.stat().st_mtime_ns == mtime, "a committed job must not be recomputed"


def test_output_holding_another_jobs_result_is_refused(tmp_path):
    make_text(tmp_path / "in", files=2, lines=10, seed=8)
    run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), job_id="one")
    with pytest.raises(JobFailed, match=r"already holds the result of job 'one'.*--overwrite"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), job_id="two")
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                      job_id="two", overwrite=True)
    assert summary["job_id"] == "two"


def test_driver_restart_resumes_without_rerunning_completed_tasks(tmp_path):
    expected = make_text(tmp_path / "in", files=6, lines=20, seed=10)
    spec_args = dict(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                     job_id="resume-1", max_files_per_task=1, partitions=2)
    spec = JobSpec(**spec_args)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_map()  # the "first driver" dies after the map phase
    status_dir = tmp_path / "out" / "_jobs" / "resume-1" / "status" / "map"
    before = {p.name: p.stat().st_mtime_ns for p in status_dir.iterdir()}
    summary = run_job(**spec_args)
    after = {p.name: p.stat().st_mtime_ns for p in status_dir.iterdir()}
    assert before == after, "completed map tasks must not run again"
    assert summary["invocations"]["map"]["invocations"] == 0
    assert read_counts(str(tmp_path / "out")) == dict(expected)


def test_same_job_id_with_a_different_spec_is_refused(tmp_path):
    make_text(tmp_path / "in", files=2, lines=5, seed=11)
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), job_id="j")
    with LocalRuntime(workers=1) as rt:
        Driver(spec, rt).prepare()
    with pytest.raises(JobFailed, match=r"names another job: partitions was 1, now 3") as err:
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                job_id="j", partitions=3)
    assert not err.value.resumable  # rerunning the same id cannot help


def test_empty_input_fails_clearly_or_gives_an_empty_result(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.txt").write_bytes(b"")
    with pytest.raises(JobFailed, match=r"the input is empty \(1 objects, 0 bytes\).*--allow-empty-input"):
        run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"))
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out2"),
                      allow_empty_input=True, partitions=2)
    assert summary["files"] == ["part-00000", "part-00001"]
    assert read_rows(str(tmp_path / "out2")) == []


def test_bad_record_fails_with_file_offset_and_sample(tmp_path):
    good = "1.2.3.4,http://x,1980-01-01,0.5,Mozilla,USA,USA-EN,w,3\n"
    data = good * 3 + "5.6.7.8,http://y,1980-01-02,notanumber,M,USA,USA-EN,w,1\n" + good
    (tmp_path / "uv.txt").write_text(data)
    offset = len(good) * 3
    with pytest.raises(JobFailed) as info:
        run_job(job="amplab-2a", inputs={"": [str(tmp_path / "uv.txt")]}, output=str(tmp_path / "out"))
    msg = str(info.value)
    assert "not retried" in msg
    assert f"bad record in {st.normalize(str(tmp_path / 'uv.txt'))} at byte {offset}: " in msg
    assert "column adRevenue is not a number: 'notanumber'" in msg
    assert "5.6.7.8,http://y" in msg
    summary = run_job(job="amplab-2a", inputs={"": [str(tmp_path / "uv.txt")]}, output=str(tmp_path / "out2"),
                      max_bad_records=1)
    assert summary["counters"]["bad_records"] == 1
    assert summary["bad_record_samples"][0]["offset"] == offset
    assert read_rows(str(tmp_path / "out2")) == [["1.2.3.4", repr(0.5 * 4)]]


def test_vectorized_and_record_modes_agree(tmp_path):
    rng = random.Random(12)
    rows = []
    for _ in range(3000):
        ip = f"{rng.randint(1, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 9)}.{rng.randint(0, 255)}"
        rows.append(f"{ip},u,1980-01-01,{rng.randint(0, 10**6) / 1000},ua,USA,USA-EN,w,{rng.randint(1, 9)}")
    (tmp_path / "uv.csv").write_text("\n".join(rows) + "\n")
    results = {}
    for vectorized in (True, False):
        out = tmp_path / f"out-{vectorized}"
        summary = run_job(job="amplab-2a", inputs={"": [str(tmp_path / "uv.csv")]}, output=str(out),
                          split_size=20_000, vectorized=vectorized, partitions=2)
        assert summary["tasks"]["map_modes"] == {("vectorized" if vectorized else "record"): summary["tasks"]["map"]}
        results[vectorized] = {r[0]: float(r[1]) for r in read_rows(str(out))}
    assert results[True].keys() == results[False].keys()
    for key, value in results[True].items():
        assert value == pytest.approx(results[False][key], rel=1e-12)


def test_job_timeout_fails_clearly_and_the_job_resumes(tmp_path, fixture_jobs_path):
    make_text(tmp_path / "in", files=3, lines=5, seed=13)
    kwargs = dict(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                  output=str(tmp_path / "out"), job_id="slow-1", max_files_per_task=1)
    with pytest.raises(JobFailed, match=r"job slow-1 did not finish within 1 s: the map phase has 0 of 3 "
                                        r"tasks done, 2 running and 1 waiting; rerun with the same job id"):
        run_job(job_timeout_s=1, params={"sleep_always": "5"}, **kwargs)
    failed = json.loads((tmp_path / "out" / "_jobs" / "slow-1" / "failed.json").read_text())
    assert failed["phase"] == "map"
    with pytest.raises(JobFailed, match=r"names another job: params was \{\"sleep_always\": \"5\"\}, now \{\}"):
        run_job(params={}, **kwargs)  # a different job under the same id is refused


def test_cost_estimate_is_built_from_the_status_records(tmp_path):
    import math

    make_text(tmp_path / "in", files=3, lines=20, seed=21)
    summary = run_job(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                      max_files_per_task=1, partitions=2, memory_mb=1024)
    status = tmp_path / "out" / "_jobs" / summary["job_id"] / "status"
    records = [json.loads(p.read_text()) for p in status.rglob("*.json")]
    billed = sum(max(1, math.ceil(r["stats"]["duration_ms"])) for r in records)
    cost = summary["cost"]
    assert cost["billed_ms"] == billed and cost["invocations"] == len(records) == 3 + 2
    assert cost["lambda_compute"] == pytest.approx(billed / 1000 * 1024 / 1024 * 0.0000166667, abs=1e-8)
    assert cost["s3_requests"] == 0  # file:// storage
    assert cost["reference_formula"] == pytest.approx(billed / 1000 * 0.00001667, abs=1e-8)  # money: 8 decimals


def test_a_straggler_gets_a_speculative_attempt_and_nothing_is_counted_twice(tmp_path, fixture_jobs_path):
    import time as _time

    expected = collections.Counter()
    for i in range(6):
        (tmp_path / "in").mkdir(exist_ok=True)
        text = "\n".join(f"s{i} t{j % 3}" for j in range(20)) + "\n"
        (tmp_path / "in" / f"{i}.txt").write_text(text)
        expected.update(text.split())
    started = _time.monotonic()
    summary = run_job(
        job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
        max_files_per_task=1, speculation_factor=3.0, speculation_min_s=1.0,
        params={"sleep_once": str(tmp_path / "slow"), "sleep_s": "60"},
    )
    assert _time.monotonic() - started < 30, "the straggler's twin must finish the job"
    assert summary["speculative_attempts"] == 1
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    assert summary["counters"]["input_records"] == 6 * 20
