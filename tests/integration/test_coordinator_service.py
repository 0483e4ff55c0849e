"""Coordinator mode on the local function service: its emulated destinations invoke the
coordinator function (a worker running the coordinator's zip) as each task ends, so the job
commits with no driver alive; ``lambdamr status --wait`` follows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from airflow_provider_lambdamr.engine import coordinator, jobdir, jobstate
from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes import service
from airflow_provider_lambdamr.engine.runtimes.service import ServiceRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract
from lambda_src import storage as st
from tests.integration.test_multistep import JOB as MULTISTEP
from tests.integration.test_multistep import result as multistep_result
from tests.integration.test_multistep import write_words
from tests.integration.test_service import (
    LAMBDAMR,
    WAIT_S,
    cli,
    svc_dir,  # noqa: F401 - the fixture below
    wait_dead,
)

#: Every test runs its own service, in a private directory.
pytestmark = pytest.mark.usefixtures("svc_dir")


def _wait_committed(job_dir: str, timeout_s: float = 240.0) -> dict:
    end = time.monotonic() + timeout_s
    while True:
        state = jobstate.phase_state(job_dir, "reduce")
        assert state.failure is None, state.failure
        if state.complete:
            manifest = jobstate.read_manifest(job_dir)
            return jobdir.read_success(manifest["spec"]["output"]).summary
        assert time.monotonic() < end, f"job {job_dir} did not commit within {timeout_s:.0f} s"
        time.sleep(0.2)


def test_the_service_runs_a_multistep_job_to_its_commit_after_the_driver_returned(
    tmp_path, fixture_jobs_path
):
    _, expected = write_words(tmp_path, files=4, lines=500)
    spec = JobSpec(job=MULTISTEP, inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   partitions=2, fan_in=2, split_size=20_000, max_files_per_task=1, runtime="service",
                   workers=2, coordinator=True, speculation=False)
    with ServiceRuntime(workers=2) as rt:
        outcome = Driver(spec, rt).launch()
    assert outcome.state == "running" and len(outcome.launched) == 2  # the window; the rest is the coordinator's
    summary = _wait_committed(spec.job_dir)
    assert multistep_result(spec.output) == expected
    assert summary["job_id"] == spec.job_id and summary["steps"] == 2
    # each task was launched once: one marker each, of attempt 1, and a commit record each
    markers = [contract.launch_of(spec.job_dir, i.uri) for i in st.for_uri(spec.job_dir).list(
        contract.launch_dir(spec.job_dir) + "/")]
    assert markers and {a for _, a in markers} == {1}
    committed = {k for p in ("map", "reduce", "step-02/map", "step-02/reduce")
                 for k in jobstate.committed(spec.job_dir, p)}
    assert {k for k, _ in markers} == committed
    config = coordinator.read_config(spec.job_dir)
    assert config["runtime"] == "service" and config["deployment"]["coordinator"]["function"].endswith("-coordinator")


def test_a_driver_killed_right_after_launch_does_not_stop_the_job_from_committing(tmp_path):
    words = ["alpha", "beta", "gamma", "delta"]
    (tmp_path / "in").mkdir()
    expected: dict[str, int] = {}
    for f in range(6):
        lines = [" ".join(words[(f + i) % 4] for i in range(j % 5)) for j in range(300)]
        (tmp_path / "in" / f"{f}.txt").write_text("\n".join(lines) + "\n")
        for line in lines:
            for w in line.split():
                expected[w] = expected.get(w, 0) + 1
    job_dir = st.join(st.normalize(str(tmp_path / "out")), "_jobs", "killed")
    proc = subprocess.Popen(
        [*LAMBDAMR, "run", "wordcount", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
         "--runtime", "service", "--workers", "2", "--coordinator", "--job-id", "killed",
         "--max-files-per-task", "1", "--partitions", "2", "--fan-in", "2", "--no-speculation",
         "--timeout-s", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launch = st.local_path(contract.launch_dir(job_dir))
    end = time.monotonic() + WAIT_S
    while not (os.path.isdir(launch) and os.listdir(launch)) and proc.poll() is None:
        assert time.monotonic() < end, "the driver launched nothing"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # right after its first launch (if it has not returned yet)
    proc.communicate(timeout=WAIT_S)
    status = cli("status", job_dir, "--wait", "--timeout", "240")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "succeeded" and report["summary"]["job_id"] == "killed"
    got: dict[str, int] = {}
    for part in sorted((tmp_path / "out").glob("part-*")):
        for row in part.read_text().splitlines():
            key, value = row.split(",")
            got[key] = int(value)
    assert got == expected


def test_the_local_runtime_has_no_coordinator_mode(tmp_path):
    with pytest.raises(ValueError, match=r"coordinator mode needs .*--runtime service or aws"):
        JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), coordinator=True)


def test_the_service_sends_each_end_to_the_destination_and_runs_the_watchdog_until_finished(tmp_path):
    """The emulated DestinationConfig and watchdog, seen from the service's protocol."""
    from airflow_provider_lambdamr.engine import packaging

    (tmp_path / "in.txt").write_text("x y\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                   runtime="service", workers=1, coordinator=True)
    with ServiceRuntime(workers=1) as rt:
        drv = Driver(spec, rt)
        drv.prepare()
        package = packaging.build(spec.job_ref, include=coordinator.ENGINE)
        deployed = rt.deploy_coordinator(package, coordinator.watchdog_event(spec.job_dir), every_s=0.2)
        coordinator.write_config(spec.job_dir, rt, deployed, {})
        with service.connect(start=False) as client:
            stats = client.request("stats")["functions"]
            assert stats[deployed["function"]]["in_flight"] == 0
        # the watchdog alone (no task launched yet) starts the job, then the ends carry it on
        summary = _wait_committed(spec.job_dir, 120)
        assert summary["job_id"] == spec.job_id
        with service.connect(start=False) as client:  # the watchdog stops once its job finished
            end = time.monotonic() + WAIT_S
            while True:
                before = client.request("stats")["invocations"]
                time.sleep(1.0)
                if client.request("stats")["invocations"] == before:
                    break
                assert time.monotonic() < end, "the watchdog keeps invoking the coordinator of a finished job"
    assert sorted((tmp_path / "out" / "part-00000").read_text().splitlines()) == ["x,1", "y,1"]


def test_the_reference_driverconfig_runs_its_amplab_2a_job_from_s3_with_no_driver_alive(
    s3_bucket, tmp_path
):
    """``lambdamr run --config driverconfig.json``: the reference's sample (its bucket names
    changed to moto's) on the local service against S3, committed by the coordinator."""
    import boto3

    from airflow_provider_lambdamr.engine import amplab_gen
    from tests.helpers import read_rows
    from tests.integration.test_amplab_duckdb import duckdb_2a
    from tests.unit.test_driverconfig import _sample

    local = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=4000, files=3, seed=9)
    amplab_gen.generate(f"s3://{s3_bucket}/pavlo/text/1node/uservisits", table="uservisits", rows=4000,
                        files=3, seed=9)
    job_bucket = f"{s3_bucket}-jobs"
    boto3.client("s3").create_bucket(Bucket=job_bucket)
    config = tmp_path / "driverconfig.json"
    config.write_text(json.dumps(_sample(bucket=s3_bucket, jobBucket=job_bucket)))
    run = cli("run", "--config", str(config), "--runtime", "service", "--workers", "2", "--split-size", "100000",
              "--partitions", "2", "--job-id", "ref-2a", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    launched = json.loads(run.stdout)
    assert launched["state"] == "running" and launched["output"] == f"s3://{job_bucket}/ref-2a/result"
    status = cli("status", launched["job_dir"], "--wait", "--timeout", "240")
    assert status.returncode == 0, status.stdout + status.stderr
    expected = duckdb_2a([st.local_path(f["uri"]) for f in local])
    got = {r[0]: float(r[1]) for r in read_rows(launched["output"])}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k][0]) <= 1e-9 * max(1.0, abs(expected[k][0])) for k in got)


def test_a_watchdog_whose_coordinator_keeps_failing_stops(tmp_path):
    from airflow_provider_lambdamr.engine import packaging

    package = packaging.build("lambda_src.jobs.wordcount:WordCount", include=coordinator.ENGINE)
    with ServiceRuntime(workers=1) as rt:
        target = rt._deploy(package, coordinator.KIND, coordinator.MEMORY_MB, coordinator.TIMEOUT_S)["function"]
        client = rt._client
        client.request("schedule", function=target, event=coordinator.watchdog_event(f"file://{tmp_path}/no-job"),
                       every_s=0.05)
        end = time.monotonic() + WAIT_S
        before = -1
        while True:  # the coordinator fails (there is no job there), again and again, then it stops
            time.sleep(1.0)
            now = client.request("stats")["invocations"]
            if now == before and client.request("stats")["in_flight"] == 0:
                break
            assert time.monotonic() < end, "the watchdog keeps invoking a coordinator that always fails"
            before = now
    assert now >= service.MAX_WATCHDOG_FAILURES


def test_a_detached_coordinator_mode_run_is_followed_to_its_commit_though_its_driver_exited(tmp_path):
    """Its driver exits at launch: ``status`` does not take that for a driver that died."""
    (tmp_path / "in.txt").write_text("p q p\n")
    run = cli("run", "userjobs.faulty:FaultyCount", "--input", str(tmp_path / "in.txt"), "--output",
              str(tmp_path / "out"), "--param", "sleep_always=4", "--runtime", "service", "--workers", "1",
              "--coordinator", "--detach", "--job-id", "det", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    detached = json.loads(run.stdout)
    wait_dead([detached["pid"]], "the detached driver, after launching,")
    running = cli("status", detached["job_dir"])  # the map task sleeps: the job has not committed
    assert running.returncode == 3 and json.loads(running.stdout)["state"] == "running", running.stdout
    status = cli("status", detached["job_dir"], "--wait", "--timeout", "120")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["state"] == "succeeded"
