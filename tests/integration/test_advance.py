"""Driver.advance: a job moved forward by several drivers in turn, each rebuilding its state
from storage, as deferrable operators in different worker processes will."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import storage as st
from tests.helpers import read_counts
from tests.integration.test_multistep import JOB, result, write_words
from tests.integration.test_service import svc_dir  # noqa: F401 - fixture


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


def test_shares_advanced_by_drivers_in_turn_launch_only_their_tasks_retry_and_count_every_invocation(
        tmp_path, fixture_jobs_path, svc_dir):  # noqa: F811
    """The expanded DAG's deferred shares on the local function service: each advance is a
    fresh driver (a resumed Airflow task), adopting what the last one left in flight. A share
    launches only its own tasks, retries the one that failed, and the commit counts every
    process's invocations."""
    from airflow_provider_lambdamr.engine import slices
    from airflow_provider_lambdamr.engine.runtimes.service import ServiceRuntime

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        (inp / f"f{i}.txt").write_text(f"w{i} common\n")
    spec = JobSpec(job="userjobs.faulty:FaultyCount", inputs={"": [str(inp)]}, output=str(tmp_path / "out"),
                   max_files_per_task=1, speculation=False, params={"fail_once": str(tmp_path / "failed-once")})
    with LocalRuntime(workers=2) as rt:
        Driver(spec, rt).prepare()

    def advance_share(make_share, keys: set[str]) -> int:
        """Drive one share to its end, one fresh driver per advance; how many advances it took."""
        in_flight, base, turns = (), None, 0
        while True:
            turns += 1
            with ServiceRuntime(svc_dir, workers=2) as rt:
                driver = Driver(spec, rt)
                waiting, base = driver.advance_share(make_share(driver), in_flight=in_flight, budget_base=base)
                driver.close()
            assert {f.key for f in waiting.in_flight} <= keys, "a share launched another share's task"
            if waiting.stopped:
                return turns
            in_flight = waiting.in_flight
            time.sleep(0.3)  # the trigger's wait

    batches = [[0, 1, 2], [3, 4, 5]]
    for batch in batches:
        keys = {f"map/{i:05d}" for i in batch}
        assert advance_share(lambda d, b=batch: d.map_share(0, b), keys) >= 2
        committed = {k for k in _committed(spec) if k.startswith("map/")}
        assert keys <= committed
    with LocalRuntime(workers=1) as rt:
        driver = Driver(spec, rt)
        slices.map_commit(driver, 0)
        groups = slices.reduce_round_batches(driver, 0, 1, 4)
    for group in groups:
        assert advance_share(lambda d, g=group: d.reduce_share(0, 1, g), set(group)) >= 1
    with LocalRuntime(workers=1) as rt:
        summary = Driver(spec, rt).commit()
    assert read_counts(spec.output) == {f"w{i}": 1 for i in range(6)} | {"common": 6}
    # six map tasks, one of which failed once and was retried; one reduce task
    assert summary["invocations"]["map"]["invocations"] == 7
    assert summary["invocations"]["map"]["failed_invocations"] == 1
    assert summary["invocations"]["reduce"]["invocations"] == 1


def _committed(spec: JobSpec) -> set[str]:
    from airflow_provider_lambdamr.engine import jobstate

    return set(jobstate.committed(spec.job_dir, ""))


def test_a_rebuilt_map_phase_reads_the_earlier_records_once_at_its_commit(tmp_path, monkeypatch):
    """Every resume of a deferred task rebuilds its phase from storage: it must list the
    status records, not read every committed one (a 5,000-task phase resumed 100 times would
    read 500,000 objects). They are read once, when the phase commits."""
    from airflow_provider_lambdamr.engine import jobstate

    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        (inp / f"f{i}.txt").write_text(f"w{i} common\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(inp)]}, output=str(tmp_path / "out"), max_files_per_task=1,
                   speculation=False)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        driver.prepare()
        driver.run_share(driver.map_share(0, [0, 1, 2]))
    reads: list[list[str]] = []
    real = jobstate.read_records

    def spy(job_dir, keys):
        reads.append(sorted(keys))
        return real(job_dir, keys)

    monkeypatch.setattr(jobstate, "read_records", spy)
    with LocalRuntime(workers=2) as rt:
        driver = Driver(spec, rt)
        waiting = driver.advance(stop_after_map=True)
        assert reads == [] and {f.key for f in waiting.in_flight} <= {f"map/{i:05d}" for i in (3, 4, 5)}
        while not waiting.stopped:
            waiting = driver.advance(rt.poll(0.5), stop_after_map=True)
    assert reads == [["map/00000", "map/00001", "map/00002"]], reads
    records = jobstate.read_map_commit(spec.job_dir)
    assert len(records) == 6 and all(r["outputs"] for r in records)
