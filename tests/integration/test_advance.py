"""Driver.advance: a job moved forward by several drivers in turn, each rebuilding its state
from storage, as deferrable operators in different worker processes will."""

from __future__ import annotations

import json
import pathlib

import pytest

from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from tests.integration.test_multistep import JOB, result, write_words


def test_a_multistep_job_advanced_by_drivers_in_turn_commits_the_whole_result(tmp_path, fixture_jobs_path):
    inputs, expected = write_words(tmp_path, files=4, lines=400)
    spec = JobSpec(job=JOB, inputs={"": [inputs]}, output=str(tmp_path / "out"), partitions=3, fan_in=2,
                   max_files_per_task=1, speculation=False)
    with LocalRuntime(workers=2) as rt:
        Driver(spec, rt).prepare()
    phases: list[str] = []
    summary = None
    while summary is None:  # each driver (a fresh process's) does two advances, then stops
        with LocalRuntime(workers=2) as rt:
            driver = Driver(spec, rt)
            waiting = driver.advance()
            for _ in range(2):
                if waiting.finished:
                    break
                phases.append(waiting.phase)
                assert waiting.in_flight and waiting.waiting.request_ids
                waiting = driver.advance(rt.poll(0.5))
            summary = waiting.summary
    assert result(spec.output) == expected
    assert summary["steps"] == 2 and summary["job_id"] == spec.job_id
    # every phase of both steps was waited for, in order
    order = ["step 1/2 map", "step 1/2 reduce", "step 2/2 map", "step 2/2 reduce"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == order


def test_attempts_that_failed_under_an_earlier_driver_count_against_max_attempts(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("a b\n")
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in.txt")]},
                   output=str(tmp_path / "out"), max_attempts=3, speculation=False,
                   params={"always_fail": "1"})
    with LocalRuntime(workers=1) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        waiting = driver.advance()
        while waiting.in_flight[0].attempt < 2:  # the first attempt failed; the second is in flight
            waiting = driver.advance(rt.poll(0.5))
    with LocalRuntime(workers=1) as rt, pytest.raises(JobFailed, match=r"map task 0 of 1 failed after 3 attempts"):
        driver = Driver(spec, rt)
        while True:
            driver.advance(rt.poll(0.5))
    status = pathlib.Path(st.local_path(st.join(spec.job_dir, "status", "map")))
    failed = sorted(p.name for p in status.glob("00000.failed-*.json"))
    assert len(failed) == 3, failed  # not three more in the second driver
    attempts = sorted(json.loads((status / name).read_text())["attempt"] for name in failed)
    assert attempts == [1, 2, 3]
