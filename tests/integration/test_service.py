"""The local function service: a per-user daemon shared by processes, like Lambda for one machine.

Every test runs its own service in a fresh private directory (``LAMBDAMR_SERVICE_DIR``), and
stops it (by the pid the service recorded) however the test ends.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.runtimes import service
from airflow_provider_lambdamr.engine.runtimes.service import ServiceError, ServiceRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from tests.helpers import read_counts, stop_test_service

LAMBDAMR = [sys.executable, "-m", "airflow_provider_lambdamr.cli"]
WORD = re.compile(r"[\w']+")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: Generous bounds for waiting on processes (never asserted as durations).
WAIT_S = 60.0


def alive(pid: int) -> bool:
    """Whether any thread of ``pid`` runs (a zombie does not; its lock goes with its last thread)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except FileNotFoundError:
            continue
    return False


def wait_dead(pids, what: str) -> None:
    end = time.monotonic() + WAIT_S
    while any(alive(p) for p in pids):
        assert time.monotonic() < end, f"{what} still running after {WAIT_S:.0f} s: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``lambdamr ARGS`` (with tests/fixtures on the path, for the ``userjobs`` package)."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(FIXTURES)) if p)
    return subprocess.run([*LAMBDAMR, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": path})


@pytest.fixture
def svc_dir(monkeypatch):
    """A private service directory (short: socket paths are limited) for this test's service."""
    directory = Path(tempfile.mkdtemp(prefix="lmr-svc-", dir="/tmp")) / "svc"
    monkeypatch.setenv(service.DIR_ENV, str(directory))
    yield directory
    stop_test_service(directory)
    shutil.rmtree(directory.parent, ignore_errors=True)


def start(directory: Path, **options) -> dict:
    options = {"workers": 2, **options}
    with service.connect(directory, **options) as client:
        return client.request("stats")


def words_input(tmp_path: Path, files: int = 3) -> tuple[Path, collections.Counter]:
    """Input files and, recomputed from them here, their word counts (the reference)."""
    data = tmp_path / "in"
    data.mkdir()
    expected: collections.Counter = collections.Counter()
    for i in range(files):
        text = "".join(f"The quick fox {i} jumps over {j % 7} lazy dogs, the end\n" for j in range(200 + i))
        (data / f"f{i}.txt").write_text(text)
        expected.update(WORD.findall(text.lower()))
    return data, expected


def run_on_service(directory: Path, **spec_fields) -> tuple[dict, ServiceRuntime]:
    spec = JobSpec(**spec_fields)
    with ServiceRuntime(directory, memory_mb=spec.memory_mb, timeout_s=spec.timeout_s, workers=2) as rt:
        return Driver(spec, rt).run(), rt


def test_a_job_runs_through_the_service_with_the_driver(svc_dir, tmp_path):
    data, expected = words_input(tmp_path)
    summary, rt = run_on_service(svc_dir, job="wordcount", inputs={"": [str(data)]}, output=str(tmp_path / "out"),
                                 partitions=3, split_size=2048, speculation=False)  # one attempt per task
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    assert rt.deployment["runtime"] == "service"
    with service.ServiceClient(svc_dir) as client:
        stats = client.request("stats")
    tasks = summary["tasks"]["map"] + summary["tasks"]["reduce"]
    assert tasks > 3 and stats["invocations"] == tasks, "every task ran in the service"
    assert stats["in_flight"] == 0 and len(stats["worker_pids"]) == 2

    # A second job of the same code reuses the warm workers: the same processes, and no cold
    # start but a worker's first invocation (a worker still starting while the first job's
    # tasks ran has its first one in the second job: at most one cold start per process).
    (cold,) = [f["cold_starts"] for f in stats["functions"].values()]
    assert 1 <= cold <= len(stats["worker_pids"])
    run_on_service(svc_dir, job="wordcount", inputs={"": [str(data)]}, output=str(tmp_path / "out2"),
                   partitions=2, split_size=2048, speculation=False)
    with service.ServiceClient(svc_dir) as client:
        again = client.request("stats")
    assert again["worker_pids"] == stats["worker_pids"] and again["pid"] == stats["pid"]
    (cold_again,) = [f["cold_starts"] for f in again["functions"].values()]
    assert cold <= cold_again <= len(again["worker_pids"])
    assert read_counts(str(tmp_path / "out2")) == dict(expected)


def test_a_crash_no_handler_recorded_is_reported_by_the_service_and_retried(svc_dir, tmp_path, fixture_jobs_path):
    data, _ = words_input(tmp_path, files=2)
    expected = collections.Counter(w for p in sorted(data.iterdir()) for w in p.read_text().split())
    run_on_service(
        svc_dir, job="userjobs.faulty:FaultyCount", inputs={"": [str(data)]}, output=str(tmp_path / "out"),
        params={"kill_once": str(tmp_path / "killed")}, partitions=2,
    )
    assert (tmp_path / "killed").exists(), "a worker was SIGKILLed mid-task"
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    with service.ServiceClient(svc_dir) as client:
        stats = client.request("stats")
    assert [f["workers_replaced"] for f in stats["functions"].values()] == [1]


def test_a_timeout_is_enforced_by_the_service(svc_dir, tmp_path, fixture_jobs_path):
    from airflow_provider_lambdamr.engine.driver import JobFailed

    data, _ = words_input(tmp_path, files=1)
    with pytest.raises(JobFailed, match=r"Sandbox\.Timedout: .*Task timed out after 1\.00 seconds"):
        run_on_service(svc_dir, job="userjobs.faulty:FaultyCount", inputs={"": [str(data)]},
                       output=str(tmp_path / "out"), params={"sleep_always": "30"}, timeout_s=1.0, max_attempts=1)


def test_permissions_and_a_second_start_finds_the_running_service(svc_dir):
    # Three clients start it at once: one daemon.
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: cli("service", "start", "--workers", "1"), range(3)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    pids = {json.loads(r.stdout)["pid"] for r in results}
    assert len(pids) == 1
    (pid,) = pids
    daemons = [p for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
               and _cmdline(int(p)).count(str(svc_dir)) and "serve" in _cmdline(int(p))]
    assert daemons == [str(pid)]
    assert int((svc_dir / service.PID_FILE).read_text()) == pid
    assert stat.S_IMODE(os.stat(svc_dir).st_mode) == 0o700
    for name in (service.SOCKET, service.PID_FILE, service.LOCK_FILE, service.LOG_FILE):
        assert stat.S_IMODE(os.lstat(svc_dir / name).st_mode) == 0o600, name
        assert os.lstat(svc_dir / name).st_uid == os.geteuid()
    status = cli("service", "status")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == pid
    stop = cli("service", "stop")
    assert stop.returncode == 0 and json.loads(stop.stdout) == {"stopped": pid}
    assert not alive(pid)
    assert cli("service", "status").returncode == 3


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _job_with_workers(directory: Path, tmp_path: Path) -> tuple[int, list[int]]:
    data, expected = words_input(tmp_path, files=1)
    run_on_service(directory, job="wordcount", inputs={"": [str(data)]}, output=str(tmp_path / "out"))
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    with service.ServiceClient(directory) as client:
        stats = client.request("stats")
    assert len(stats["worker_pids"]) == 2 and all(alive(p) for p in stats["worker_pids"])
    return stats["pid"], stats["worker_pids"]


def test_idle_timeout_exits_and_leaves_no_workers(svc_dir, tmp_path):
    start(svc_dir, idle_timeout_s=1.0)
    pid, workers = _job_with_workers(svc_dir, tmp_path)
    wait_dead([pid], "the idle service")
    wait_dead(workers, "its workers")
    assert not (svc_dir / service.SOCKET).exists() and not (svc_dir / service.PID_FILE).exists()
    assert "idle for" in (svc_dir / service.LOG_FILE).read_text()


def test_sigterm_stops_the_service_and_its_workers_even_mid_invocation(svc_dir, tmp_path, fixture_jobs_path):
    start(svc_dir)
    pid, workers = _job_with_workers(svc_dir, tmp_path)
    # A job whose tasks would each run for a minute is in flight when SIGTERM arrives.
    errors: list[BaseException] = []

    def slow_job() -> None:
        try:
            run_on_service(svc_dir, job="userjobs.faulty:FaultyCount", inputs={"": [str(tmp_path / "in")]},
                           output=str(tmp_path / "slow"), params={"sleep_always": "60"}, max_attempts=1)
        except BaseException as err:  # the service went away under it
            errors.append(err)

    driver = threading.Thread(target=slow_job)
    driver.start()
    end = time.monotonic() + WAIT_S
    while True:
        with service.ServiceClient(svc_dir) as client:
            busy = client.request("stats")
        if busy["in_flight"]:
            break
        assert time.monotonic() < end, "the slow job never reached the service"
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    wait_dead([pid], "the service after SIGTERM")
    wait_dead(busy["worker_pids"] + workers, "its workers")
    assert not (svc_dir / service.SOCKET).exists() and not (svc_dir / service.PID_FILE).exists()
    driver.join(WAIT_S)
    assert not driver.is_alive() and errors, "the driver saw its service stop"


def test_a_service_killed_by_sigkill_is_detected_and_replaced(svc_dir, tmp_path):
    old = start(svc_dir)["pid"]
    os.kill(old, signal.SIGKILL)
    wait_dead([old], "the killed service")
    # What it left: a socket nobody listens on and a pid file naming a dead process.
    assert (svc_dir / service.SOCKET).exists() and int((svc_dir / service.PID_FILE).read_text()) == old
    assert service.running_pid(svc_dir) is None, "the stale pid file is recognised"
    new = start(svc_dir)["pid"]
    assert new != old and alive(new)
    _, workers = _job_with_workers(svc_dir, tmp_path)  # and it works
    os.kill(new, signal.SIGKILL)
    wait_dead(workers, "the workers of a SIGKILLed service")  # they die with it: no orphans


def test_a_directory_or_socket_others_could_use_is_refused(svc_dir):
    start(svc_dir)
    os.chmod(svc_dir, 0o755)
    with pytest.raises(ServiceError, match=r"has mode 0755: other users could use it; it must be 0700"):
        service.ServiceClient(svc_dir)
    with pytest.raises(ServiceError, match="has mode 0755"):
        service.connect(svc_dir)
    os.chmod(svc_dir, 0o700)
    os.chmod(svc_dir / service.SOCKET, 0o666)
    with pytest.raises(ServiceError, match=r"service\.sock has mode 0666"):
        service.ServiceClient(svc_dir)
    os.chmod(svc_dir / service.SOCKET, 0o600)
    link = svc_dir.parent / "link"
    link.symlink_to(svc_dir)
    with pytest.raises(ServiceError, match="is not a dir"):
        service.ServiceClient(link)
    service.ServiceClient(svc_dir).close()  # and the private directory is accepted


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as, and chown to, another uid")
def test_another_user_is_refused(svc_dir, tmp_path):
    start(svc_dir)
    os.chown(svc_dir, 65534, -1)
    with pytest.raises(ServiceError, match=r"belongs to uid 65534, not to this user"):
        service.ServiceClient(svc_dir)
    os.chown(svc_dir, 0, -1)
    # Even with the directory and socket opened up, the service checks its peer's uid.
    os.chmod(svc_dir.parent, 0o711)  # mkdtemp's
    os.chmod(svc_dir, 0o711)
    os.chmod(svc_dir / service.SOCKET, 0o666)
    probe = (
        "import json, socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "d = json.dumps({'op': 'health'}).encode()\n"
        "try:\n    s.sendall(struct.pack('>I', len(d)) + d)\n"
        "except BrokenPipeError:\n    pass  # refused already: the reply is waiting\n"
        "n = struct.unpack('>I', s.recv(4))[0]; print(s.recv(n).decode())\n"
    )
    # Another user cannot run this project's interpreter (it lives under /root): the system's.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that another user can run, to act as that user")
    res = subprocess.run([python, "-I", "-c", probe, str(svc_dir / service.SOCKET)], user=65534,
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    reply = json.loads(res.stdout)
    assert reply["ok"] is False and "uid 65534 may not use this service" in reply["error"]


def test_run_detach_then_status_wait_from_another_process(svc_dir, tmp_path):
    data, expected = words_input(tmp_path)
    start(svc_dir)
    launched = cli("run", "wordcount", "--input", str(data), "--output", str(tmp_path / "out"),
                   "--runtime", "service", "--workers", "2", "--split-size", "2KB", "--detach", "--json")
    assert launched.returncode == 0, launched.stderr
    record = json.loads(launched.stdout)
    assert record["job_dir"].endswith("/" + record["job_id"])
    waited = cli("status", record["job_dir"], "--wait", "--timeout", "240")
    assert waited.returncode == 0, waited.stdout + waited.stderr + Path(record["log"]).read_text()
    report = json.loads(waited.stdout)
    assert report["state"] == "succeeded" and report["summary"]["job_id"] == record["job_id"]
    assert report["summary"]["counters"]["input_records"] == sum(
        len(p.read_text().splitlines()) for p in data.iterdir())
    assert read_counts(str(tmp_path / "out")) == dict(expected)
    wait_dead([record["pid"]], "the detached driver")
    assert cli("status", record["job_dir"]).returncode == 0


def test_a_detached_driver_that_dies_unrecorded_is_reported_failed(svc_dir, tmp_path):
    data, _ = words_input(tmp_path, files=1)
    start(svc_dir)
    launched = cli("run", "userjobs.faulty:FaultyCount", "--input", str(data), "--output", str(tmp_path / "out"),
                   "--runtime", "service", "--param", "sleep_always=60", "--detach", "--json")
    assert launched.returncode == 0, launched.stderr
    record = json.loads(launched.stdout)
    end = time.monotonic() + WAIT_S
    while True:  # the map phase is running ...
        running = cli("status", record["job_dir"])
        assert running.returncode == 3, running.stdout + running.stderr
        if json.loads(running.stdout)["state"] == "running":
            break
        assert time.monotonic() < end, f"the job never started: {Path(record['log']).read_text()}"
        time.sleep(0.1)
    os.kill(record["pid"], signal.SIGKILL)  # ... when its driver dies without a word
    waited = cli("status", record["job_dir"], "--wait", "--timeout", "240")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    report = json.loads(waited.stdout)
    assert report["state"] == "failed" and record["log"] in report["failure"]["message"]


def test_detach_needs_the_service_runtime(svc_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a\n")
    res = cli("run", "wordcount", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--detach")
    assert res.returncode == 2 and "--detach needs --runtime service" in res.stderr
    assert not (svc_dir / service.SOCKET).exists(), "nothing was started"
