"""Multi-step jobs: later steps read the previous step's pairs, resume per step, retry."""

from __future__ import annotations

import collections
import json
import random

import pytest

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from tests.helpers import read_rows, run_job

JOB = "userjobs.countofcounts:CountOfCounts"


def write_words(tmp_path, files: int = 3, lines: int = 3000, seed: int = 11) -> tuple[str, dict[int, int]]:
    """Input files of random words, and how many distinct words occur n times, by n."""
    rnd = random.Random(seed)
    vocab = [f"w{i}" for i in range(700)]
    counts: collections.Counter[str] = collections.Counter()
    root = tmp_path / "in"
    root.mkdir()
    for f in range(files):
        out = []
        for _ in range(lines):
            words = [rnd.choice(vocab[: rnd.randint(1, len(vocab))]) for _ in range(rnd.randint(0, 6))]
            counts.update(words)
            out.append(" ".join(words))
        (root / f"part-{f}.txt").write_text("\n".join(out) + ("\n" if f % 2 else ""))
    return str(root), dict(collections.Counter(counts.values()))


def result(output: str) -> dict[int, int]:
    rows = read_rows(output)
    got = {int(k): int(v) for k, v in rows}
    assert len(got) == len(rows), "a key appears in two output rows"
    return got


@pytest.mark.parametrize("partitions,fan_in,step2", [(1, 2, None), (3, 2, None), (4, 3, 1)])
def test_two_step_job_is_exact_whatever_the_partitions_and_rounds(
    tmp_path, fixture_jobs_path, partitions, fan_in, step2
):
    root, expected = write_words(tmp_path)
    params = {"step2_partitions": str(step2)} if step2 else {}
    summary = run_job(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), split_size=20_000,
                      partitions=partitions, fan_in=fan_in, params=params)
    assert result(str(tmp_path / "out")) == expected
    assert summary["steps"] == 2
    by_step = summary["tasks"]["by_step"]
    assert by_step[0]["map"] > fan_in  # enough map tasks for more than one reduce round
    assert by_step[1]["partitions"] == (step2 or partitions)
    assert summary["files"] == [f"part-{p:05d}" for p in range(step2 or partitions)]
    assert summary["tasks"]["map"] == by_step[0]["map"] + by_step[1]["map"]


def _status_records(job_dir: str) -> dict[str, dict]:
    base = st.join(job_dir, "status")
    store = st.for_uri(job_dir)
    return {
        st.relative_to(i.uri, base): json.loads(store.read_bytes(i.uri))
        for i in store.list(st.join(job_dir, "status"))
        if i.uri.endswith(".json") and ".failed-" not in i.uri
    }


def test_a_rerun_resumes_at_the_step_where_the_driver_stopped(tmp_path, fixture_jobs_path):
    root, expected = write_words(tmp_path)
    spec = JobSpec(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), job_id="resume-steps",
                   split_size=20_000, partitions=2, keep_intermediates=True)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_reduce(driver.run_map())  # step 1 done; the driver "dies" here
    before = _status_records(spec.job_dir)
    assert before and all(not k.startswith("step-02/") for k in before)

    with LocalRuntime(workers=2) as rt:
        summary = Driver(spec, rt).run()
    after = _status_records(spec.job_dir)
    for key, record in before.items():  # step 1 was not run again
        assert after[key]["attempt_token"] == record["attempt_token"], key
    assert any(k.startswith("step-02/map/") for k in after)
    assert any(k.startswith("step-02/reduce/") for k in after)
    assert summary["invocations"]["map"]["invocations"] == summary["tasks"]["by_step"][1]["map"]
    assert result(str(tmp_path / "out")) == expected


def test_a_failing_later_step_task_is_retried_and_counted_once(tmp_path, fixture_jobs_path):
    root, expected = write_words(tmp_path)
    marker = tmp_path / "step2-failed"
    summary = run_job(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), split_size=20_000,
                      partitions=2, params={"step2_map_fail_once": str(marker)})
    assert marker.exists()  # the fault did fire
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    assert result(str(tmp_path / "out")) == expected


def test_intermediates_of_every_step_are_cleaned_after_commit(tmp_path, fixture_jobs_path):
    root, _ = write_words(tmp_path, files=1, lines=500)
    summary = run_job(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"))
    store = st.for_uri(summary["job_dir"])
    left = [i.uri[len(summary["job_dir"]) + 1:] for i in store.list(summary["job_dir"])]
    assert "jobdata.json" in left and "step-02/map.json" in left, "manifest and commits stay"
    assert any(u.startswith("status/step-02/") for u in left), "status records stay, for audit"
    runs = [u for u in left if u not in ("jobdata.json", "map.json", "step-02/map.json", "step-02/plan.json")
            and not u.startswith("status/")]
    assert runs == []


def test_a_multi_step_job_with_a_step_lacking_a_reducer_is_refused_clearly(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("a\n")
    with pytest.raises(TypeError, match=r"NoReducerInStepTwo: step 2 of 2 has no reducer"):
        run_job(job="userjobs.countofcounts:NoReducerInStepTwo", inputs={"": [str(tmp_path / "in.txt")]},
                output=str(tmp_path / "out"))


def test_cleanup_of_a_job_stopped_in_a_later_step_removes_every_steps_runs(tmp_path, fixture_jobs_path):
    import subprocess
    import sys

    root, _ = write_words(tmp_path, files=2, lines=1000)
    spec = JobSpec(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), job_id="stopped",
                   split_size=20_000, keep_intermediates=True)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_reduce(driver.run_map())
        driver.run_map(1)  # stopped after step 2's map phase
    job_dir = tmp_path / "out" / "_jobs" / "stopped"
    assert any((job_dir / "step-02" / "map").rglob("part-*")) and any((job_dir / "map").rglob("part-*"))
    res = subprocess.run([sys.executable, "-m", "airflow_provider_lambdamr.cli", "cleanup", "--job-dir",
                          str(job_dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["deleted_objects"] > 0
    left = [p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file()]
    assert not [p for p in left if "/part-" in p or p.endswith("/run") or p.endswith("/pairs")], left
    assert "jobdata.json" in left and any(p.startswith("status/step-02/map/") for p in left)


def test_a_resumed_later_step_keeps_its_pinned_plan_even_if_a_final_record_changed(tmp_path, fixture_jobs_path):
    """A late duplicate attempt may rewrite a final status record (other bytes, other run):
    a resumed driver must still give each step-2 task index the runs it had."""
    root, expected = write_words(tmp_path)
    spec = JobSpec(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), job_id="pinned",
                   split_size=4_000, partitions=4, keep_intermediates=True)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_reduce(driver.run_map())
        driver.run_map(1)
    status = tmp_path / "out" / "_jobs" / "pinned" / "status"
    plan = json.loads((tmp_path / "out" / "_jobs" / "pinned" / "step-02" / "plan.json").read_text())
    assert len(plan["tasks"]) >= 2
    # a final record of step 1 now claims far more bytes, and one step-2 map task is undone
    final = next(status.glob("reduce/r*/p00000-g00000.json"))
    record = json.loads(final.read_text())
    record["outputs"][0]["bytes"] += 10**6
    final.write_text(json.dumps(record))
    (status / "step-02" / "map" / "00000.json").unlink()
    with LocalRuntime(workers=2) as rt:
        summary = Driver(spec, rt).run()
    assert summary["tasks"]["by_step"][1]["map"] == len(plan["tasks"])
    assert result(str(tmp_path / "out")) == expected


def test_bad_data_in_a_later_step_fails_at_once_naming_the_run(tmp_path, fixture_jobs_path):
    from airflow_provider_lambdamr.engine.driver import JobFailed

    root, _ = write_words(tmp_path, files=1, lines=300)
    with pytest.raises(JobFailed) as info:
        run_job(job=JOB, inputs={"": [root]}, output=str(tmp_path / "out"), partitions=1,
                params={"step2_bad_word": "w0"})
    msg = str(info.value)
    assert "step 2 map task 0 of 1 failed (not retried: the input itself is at fault)" in msg
    assert "the step 2 mapper raised BadRecord: word 'w0' is refused on the pair with key '\"w0\"' from file://" in msg


def test_a_malformed_pair_is_a_bad_record_with_its_location(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("ok\nbad one\nok\n")
    job = "userjobs.countofcounts:TriplesSometimes"
    with pytest.raises(Exception, match=r"bad record in .*in\.txt at byte 3: ValueError: the mapper emitted "
                                        r"\('bad one', 1, 2\), not a \(key, value\) pair"):
        run_job(job=job, inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"))
    summary = run_job(job=job, inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "ok"),
                      max_bad_records=1)
    assert summary["counters"]["bad_records"] == 1
    assert dict(read_rows(str(tmp_path / "ok"))) == {"ok": "2"}
