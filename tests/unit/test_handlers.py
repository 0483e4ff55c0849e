"""The Lambda entry points called directly, as Lambda calls them: event in, status out."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lambda_src import mapper, reducer, task
from lambda_src import storage as st

CTX = SimpleNamespace(aws_request_id="req-1", function_name="f", memory_limit_in_mb="128",
                      get_remaining_time_in_millis=lambda: 60_000)


def _event(job_dir: str, **overrides) -> dict:
    event = {
        "version": task.EVENT_VERSION,
        "job_id": "job-1",
        "job_dir": job_dir,
        "job": {"ref": "lambda_src.jobs.wordcount:WordCount", "params": {}, "partitions": 2},
        "task": {"phase": "map", "index": 3, "count": 9, "attempt": 1},
    }
    event.update(overrides)
    return event


def test_mapper_writes_partitioned_sorted_runs_then_its_status(tmp_path):
    (tmp_path / "in.txt").write_text("b a\nc a b\n")
    job_dir = st.normalize(str(tmp_path / "job"))
    uri = st.normalize(str(tmp_path / "in.txt"))
    record = mapper.lambda_handler(_event(job_dir, splits=[{"uri": uri, "start": 0, "end": 10, "size": 10}]), CTX)
    assert record["state"] == "succeeded" and record["request_id"] == "req-1"
    status = json.loads((tmp_path / "job" / "status" / "map" / "00003.json").read_text())
    assert status == record
    assert record["stats"]["input_records"] == 2 and record["stats"]["output_records"] == 3
    pairs = {}
    for out in record["outputs"]:
        lines = st.for_uri(out["uri"]).read_bytes(out["uri"]).splitlines()
        assert lines == sorted(lines)
        assert f"/map/00003/{record['attempt_token']}/" in out["uri"]
        for line in lines:
            key, value = line.split(b"\t")
            pairs[json.loads(key)] = json.loads(value)
    assert pairs == {"a": 2, "b": 2, "c": 1}


def test_reducer_final_round_writes_csv(tmp_path):
    job_dir = st.normalize(str(tmp_path / "job"))
    runs = []
    for i, body in enumerate([b'"a"\t1\n"b"\t2\n', b'"a"\t5\n"c"\t1\n']):
        uri = f"{job_dir}/map/0000{i}/x/part-00000"
        st.for_uri(uri).write_bytes(uri, body)
        runs.append(uri)
    out = st.normalize(str(tmp_path / "out"))
    ev = _event(job_dir, task={"phase": "reduce", "round": 1, "partition": 0, "group": 0, "final": True},
                inputs=runs, output=out)
    record = reducer.lambda_handler(ev, CTX)
    assert (tmp_path / "out" / "part-00000").read_text() == "a,6\nb,2\nc,1\n"
    assert record["stats"]["input_records"] == 4 and record["stats"]["keys"] == 3
    assert (tmp_path / "job" / "status" / "reduce" / "r001" / "p00000-g00000.json").is_file()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"version": 99}, "event version 99"),
        ({"job_id": "../../etc"}, "invalid job id"),
        ({"job": {"ref": "os:system", "partitions": 1}}, "not a MapReduceJob subclass"),
        ({"job": {"ref": "lambda_src.jobs.wordcount:WordCounter", "partitions": 1}},
         "job module 'lambda_src.jobs.wordcount' ("),
        ({"job": {"ref": "lambda_src.jobs.wordcount:WordCounter", "partitions": 1}},
         "has no attribute 'WordCounter'; its MapReduceJob classes: WordCount"),
        ({"job": {"ref": "__import__('os')", "partitions": 1}}, "invalid job reference"),
        ({"job": {"ref": "lambda_src.jobs.wordcount:WordCount", "partitions": 0}}, "partitions must be"),
        ({"job": {"ref": "lambda_src.jobs.wordcount:WordCount", "partitions": 1, "params": {"a b": "x"}}},
         "invalid job parameter name"),
        ({"splits_uri": "file:///etc/passwd"}, "must lie under the job directory"),
        ({"splits_uri": "JOB/../../etc/passwd"}, "must lie under the job directory"),
    ],
)
def test_bad_events_are_refused_with_a_clear_error(tmp_path, change, message):
    ev = _event(st.normalize(str(tmp_path / "job")), splits=[])
    if "splits_uri" in change:
        del ev["splits"]
        change = {"splits_uri": change["splits_uri"].replace("JOB", ev["job_dir"])}
    ev.update(change)
    with pytest.raises((task.EventError, task.TaskError)) as info:
        mapper.lambda_handler(ev, CTX)
    assert message in str(info.value)


def test_a_failed_attempt_records_its_error_without_committing(tmp_path):
    job_dir = st.normalize(str(tmp_path / "job"))
    ev = _event(job_dir, splits=[{"uri": st.normalize(str(tmp_path / "gone.txt")), "start": 0, "end": 5, "size": 5}])
    with pytest.raises(task.TaskInputError, match=r"map task 3 of 9 failed: NotFound: no such object"):
        mapper.lambda_handler(ev, CTX)
    status_dir = tmp_path / "job" / "status" / "map"
    assert not (status_dir / "00003.json").exists()
    (failed,) = status_dir.glob("00003.failed-a1-*.json")
    record = json.loads(failed.read_text())
    assert record["state"] == "failed" and record["error"]["type"] == "NotFound"
    assert "Traceback" in record["error"]["traceback"]


Q3A = {"ref": "lambda_src.jobs.amplab:Query3a", "params": {}, "partitions": 2}


def test_a_later_step_mapper_reads_pairs_and_writes_under_its_step(tmp_path):
    job_dir = st.normalize(str(tmp_path / "job"))
    uri = f"{job_dir}/reduce/r001/p00000-g00000/a1-x/pairs"  # what step 1's final reducer wrote
    st.for_uri(uri).write_bytes(uri, b'"1.2.3.4"\t[2.5,10,1]\n"5.6.7.8"\t[1.0,3,1]\n"1.2.3.4"\t[0.5,20,1]\n')
    # record mode (vectorized, step 2 works on the Join's Arrow pairs: arrow_steps)
    ev = _event(job_dir, job={**Q3A, "vectorized": False}, task={"phase": "map", "step": 1, "index": 0, "count": 1},
                runs=[uri])
    record = mapper.lambda_handler(ev, CTX)
    assert (tmp_path / "job" / "status" / "step-02" / "map" / "00000.json").is_file()
    assert record["stats"]["input_records"] == 3
    pairs = {}
    for out in record["outputs"]:
        assert out["uri"].startswith(f"{job_dir}/step-02/map/00000/{record['attempt_token']}/")
        for line in st.for_uri(out["uri"]).read_bytes(out["uri"]).splitlines():
            key, value = line.split(b"\t")
            pairs[json.loads(key)] = json.loads(value)
    assert pairs == {"1.2.3.4": [3.0, 30, 2], "5.6.7.8": [1.0, 3, 1]}  # step 2's combiner ran


def test_the_final_reducer_of_an_earlier_step_writes_pairs_not_csv(tmp_path):
    job_dir = st.normalize(str(tmp_path / "job"))
    run = f"{job_dir}/map/00000/a1-x/part-00001"
    st.for_uri(run).write_bytes(run, b'"u1"\t7\n"u1"\t["1.2.3.4",2.5]\n"u2"\t["9.9.9.9",1.0]\n')
    # the record path (vectorized, step 1 is a Join in Arrow)
    ev = _event(job_dir, job={**Q3A, "vectorized": False},
                task={"phase": "reduce", "round": 1, "partition": 1, "group": 0, "final": True}, inputs=[run])
    record = reducer.lambda_handler(ev, CTX)
    (out,) = record["outputs"]
    assert out["uri"].endswith("/pairs") and "/reduce/r001/p00001-g00000/" in out["uri"]
    # u1 joins its ranking; u2 has no ranking, so its visit drops out (an inner join)
    assert st.for_uri(out["uri"]).read_bytes(out["uri"]) == b'"1.2.3.4"\t[2.5,7,1]\n'
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "job,step,extra,message",
    [
        (Q3A, 3, {"runs": []}, "the event names step 4, but lambda_src.jobs.amplab:Query3a has 3 step(s)"),
        (None, 1, {"runs": []}, "names step 2, but lambda_src.jobs.wordcount:WordCount has 1 step(s)"),
        (Q3A, 1, {"runs": ["file:///etc/passwd"]}, "an input run must lie under the job directory"),
        (Q3A, 1, {"runs": ["JOB/../../etc/passwd"]}, "an input run must lie under the job directory"),
        (Q3A, -1, {"runs": []}, "task step must be a non-negative integer"),
    ],
)
def test_bad_step_events_are_refused(tmp_path, job, step, extra, message):
    job_dir = st.normalize(str(tmp_path / "job"))
    extra = {k: [u.replace("JOB", job_dir) for u in v] for k, v in extra.items()}
    ev = _event(job_dir, task={"phase": "map", "step": step, "index": 0}, **extra)
    if job:
        ev["job"] = job
    with pytest.raises((task.EventError, task.TaskError)) as info:
        mapper.lambda_handler(ev, CTX)
    assert message in str(info.value)


@pytest.mark.parametrize("job,raised,message", [
    ("EmitsASet", "EncodeError", "a value of type set cannot be encoded"),
    ("ChangesItsKey", "CombinerKeyError", 'the combiner changed key "a" into "a!"'),
    ("Exits", "SystemExit", "the job called sys.exit(3)"),
    ("Interrupts", "KeyboardInterrupt", "KeyboardInterrupt raised by the job"),
])
def test_a_job_bug_no_retry_can_fix_fails_as_the_jobs_fault(tmp_path, monkeypatch, job, raised, message):
    (tmp_path / "buggy.py").write_text(
        "import sys\n"
        "from lambda_src.job import MapReduceJob\n"
        "class Job(MapReduceJob):\n"
        "    def reducer(self, key, values):\n"
        "        yield key, len(list(values))\n"
        "class EmitsASet(Job):\n"
        "    def mapper(self, key, line):\n"
        "        yield line, {1}\n"
        "class ChangesItsKey(Job):\n"
        "    def mapper(self, key, line):\n"
        "        yield line, 1\n"
        "    def combiner(self, key, values):\n"
        "        yield key + '!', sum(values)\n"
        "class Exits(Job):\n"
        "    def mapper(self, key, line):\n"
        "        sys.exit(3)\n"
        "class Interrupts(Job):\n"
        "    def mapper(self, key, line):\n"
        "        raise KeyboardInterrupt\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "in.txt").write_text("a\na\n")
    job_dir = f"file://{tmp_path}/job"
    uri = st.normalize(str(tmp_path / "in.txt"))
    ev = _event(job_dir, job={"ref": f"buggy:{job}", "partitions": 1, "vectorized": False},
                splits=[{"uri": uri, "start": 0, "end": 4, "size": 4}])
    with pytest.raises(task.TaskJobError) as info:
        mapper.lambda_handler(ev, CTX)
    assert f"{raised}: {message}" in str(info.value)
    (failed,) = (tmp_path / "job" / "status" / "map").glob("00003.failed-a1-*.json")
    error = json.loads(failed.read_text())["error"]
    assert error["type"] == raised and message in error["message"] and error["failure"] == "TaskJobError"
