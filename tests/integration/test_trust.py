"""Trust: destructive operations touch only what a job wrote; a job id names one job.

Each test here was written against a defect of the previous release (noted per test) and
fails on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import jobdir
from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import reader
from lambda_src import storage as st
from tests.helpers import read_counts, read_rows, run_job

LAMBDAMR = [sys.executable, "-m", "airflow_provider_lambdamr.cli"]


def _words(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _wc(tmp_path: Path, job_id: str, inp: str | None = None, **kw) -> dict:
    inp = inp or _words(tmp_path / "in" / "a.txt", "a b a\nc a\n")
    kw.setdefault("partitions", 2)
    return run_job(job="wordcount", inputs={"": [inp]}, output=str(tmp_path / "out"), job_id=job_id, **kw)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- --overwrite replaces a previous result, and nothing else ---------------------------------
def test_overwrite_deletes_only_the_files_the_previous_result_lists(tmp_path):
    """Old: every part-* file anywhere below the output went, another job's runs included."""
    out = tmp_path / "out"
    _wc(tmp_path, "one", keep_intermediates=True)
    first = json.loads((out / "_SUCCESS").read_text())
    bystanders = {
        "sub/part-00000": "another dataset's part file\n",
        "notes/README": "keep me\n",
        "part-of-the-story.md": "not ours either\n",
    }
    for rel, text in bystanders.items():
        _words(out / rel, text)
    others_runs = {p for p in _tree(out) if p.startswith("_jobs/one/map/")}
    assert others_runs  # job one's kept intermediates hold part-* files too

    with pytest.raises(JobFailed, match="already holds the result of job 'one'"):
        _wc(tmp_path, "two")
    with pytest.raises(JobFailed, match=r"part files that no _SUCCESS lists \(e.g. part-of-the-story.md"):
        _wc(tmp_path, "two", overwrite=True)  # it would mix with the new result: refused
    assert json.loads((out / "_SUCCESS").read_text())["job_id"] == "one"  # refused before deleting
    os.unlink(out / "part-of-the-story.md")
    del bystanders["part-of-the-story.md"]

    summary = _wc(tmp_path, "two", overwrite=True)
    assert summary["job_id"] == "two"
    for rel, text in bystanders.items():
        assert (out / rel).read_text() == text
    assert others_runs <= _tree(out)
    assert read_counts(str(out)) == {"a": 3, "b": 1, "c": 1}
    top = {p for p in _tree(out) if "/" not in p}
    assert top == {"_SUCCESS", *summary["files"]}
    assert set(first["files"]) - top == set()  # both runs write part-00000 and part-00001


@pytest.mark.parametrize("content", [b"", b"\n", b"null", b"[1,2]", b"{\"job_id\": 3}", b"\x00\xffgarbage"])
def test_a_foreign_or_corrupt_success_gets_a_clear_message_and_overwrite_replaces_it(tmp_path, content):
    """Old: null or [1,2] raised AttributeError; an empty file was 'not valid JSON'."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_SUCCESS").write_bytes(content)
    (out / "data.csv").write_text("spark wrote this\n")
    with pytest.raises(JobFailed, match=r"is not empty: .*_SUCCESS (is empty|is not valid JSON|holds JSON that "
                                        r"is not a LambdaMR result).*--overwrite to replace that _SUCCESS"):
        _wc(tmp_path, "mine")
    assert (out / "_SUCCESS").read_bytes() == content
    summary = _wc(tmp_path, "mine", overwrite=True)
    assert json.loads((out / "_SUCCESS").read_text())["job_id"] == "mine" == summary["job_id"]
    assert (out / "data.csv").read_text() == "spark wrote this\n"


def test_a_success_listing_a_path_outside_the_output_is_not_followed(tmp_path):
    out = tmp_path / "out"
    victim = _words(tmp_path / "victim.txt", "precious\n")
    out.mkdir()
    (out / "_SUCCESS").write_text(json.dumps({"job_id": "evil", "files": ["../victim.txt", "part-00000"]}))
    (out / "part-00000").write_text("evil's\n")
    with pytest.raises(JobFailed, match="already holds 1 part files that no _SUCCESS lists"):
        _wc(tmp_path, "mine", overwrite=True)  # foreign: the part file it lists is not deleted
    assert Path(victim).read_text() == "precious\n"
    assert (out / "part-00000").read_text() == "evil's\n"


def test_the_cli_says_why_the_output_is_taken_and_gives_no_resume_hint(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_SUCCESS").write_bytes(b"")
    inp = _words(tmp_path / "in" / "a.txt", "x\n")
    res = subprocess.run([*LAMBDAMR, "run", "wordcount", "--input", inp, "--output", str(out), "--workers", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "is empty (as Spark and Hadoop write it)" in res.stderr
    assert "Traceback" not in res.stderr and "to resume" not in res.stderr


# -- cleanup refuses what is not a job directory -----------------------------------------------
def test_cleanup_refuses_a_directory_that_is_not_a_job_directory(tmp_path):
    """Old: cleanup --job-dir on any directory deleted its map/ subtree (--delete-job-dir: all)."""
    victim = tmp_path / "data"
    _words(victim / "map" / "part-00000", "precious\n")
    _words(victim / "other.txt", "precious\n")
    for extra in ([], ["--delete-job-dir"]):
        res = subprocess.run([*LAMBDAMR, "cleanup", "--job-dir", str(victim), *extra],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert "is not a LambdaMR job directory: it has no jobdata.json" in res.stderr
        assert _tree(victim) == {"map/part-00000", "other.txt"}
    with pytest.raises(jobdir.NotAJobDir):
        jobdir.cleanup(str(victim))
    # a manifest naming another job id does not make a directory that job's
    _wc(tmp_path, "elsewhere")
    real = json.loads((tmp_path / "out" / "_jobs" / "elsewhere" / "jobdata.json").read_text())
    (victim / "jobdata.json").write_text(json.dumps(real))
    with pytest.raises(jobdir.NotAJobDir, match="is not the directory of job 'elsewhere'"):
        jobdir.cleanup(str(victim), delete_job_dir=True)
    assert (victim / "other.txt").exists()


def test_cleanup_deletes_only_what_the_job_wrote(tmp_path):
    _wc(tmp_path, "j1", keep_intermediates=True)
    job = tmp_path / "out" / "_jobs" / "j1"
    _words(job / "my-notes.txt", "mine\n")
    _words(job / "status" / "extra" / "note.txt", "x\n")  # inside the layout's status/: the job's
    before = _tree(job)
    assert any(p.startswith("map/") for p in before)
    report = jobdir.cleanup(str(job))
    assert not any(p.startswith(("map/", "reduce/", "tasks/")) for p in _tree(job))
    assert "jobdata.json" in _tree(job) and report.deleted > 0
    res = subprocess.run([*LAMBDAMR, "cleanup", "--job-dir", str(job), "--delete-job-dir"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["kept"] == [st.normalize(str(job / "my-notes.txt"))]
    assert _tree(job) == {"my-notes.txt"}
    assert (tmp_path / "out" / "_SUCCESS").exists()  # the result is not the job directory's to delete


def test_cleanup_of_a_job_dir_that_does_not_exist_has_nothing_to_do(tmp_path):
    assert jobdir.cleanup(str(tmp_path / "never")).deleted == 0


# -- one job id, one job ----------------------------------------------------------------------
def test_rerunning_a_committed_id_with_other_inputs_is_refused_naming_what_differs(tmp_path):
    """Old: exit 0 with the old result presented as the new one."""
    inp = _words(tmp_path / "in" / "a.txt", "a b a\nc a\n")
    _wc(tmp_path, "daily", inp=inp)
    other = _words(tmp_path / "in2" / "b.txt", "z z\n")
    with pytest.raises(JobFailed, match=r"job id 'daily' already committed a result .* for another job: "
                                        r"inputs was .*in.*, now .*in2") as err:
        _wc(tmp_path, "daily", inp=other)
    assert not err.value.resumable
    with pytest.raises(JobFailed, match=r"params was \{\}, now \{\"x\": \"1\"\}"):
        _wc(tmp_path, "daily", inp=inp, params={"x": "1"})
    assert read_counts(str(tmp_path / "out")) == {"a": 3, "b": 1, "c": 1}
    # identical: the committed result, not recomputed
    before = (tmp_path / "out" / "_SUCCESS").stat().st_mtime_ns
    assert _wc(tmp_path, "daily", inp=inp)["job_id"] == "daily"
    assert (tmp_path / "out" / "_SUCCESS").stat().st_mtime_ns == before
    # the input changed since: the committed result is not this input's
    Path(inp).write_text("a b a\nc a a\n")
    with pytest.raises(JobFailed, match=r"cannot return the result of job daily: its input .*a.txt changed "
                                        r"after it was planned .*--recompute"):
        _wc(tmp_path, "daily", inp=inp)
    # recompute: the job's own state and result are replaced
    summary = _wc(tmp_path, "daily", inp=other, recompute=True)
    assert read_counts(str(tmp_path / "out")) == {"z": 2}
    assert summary["identity"]["inputs"] == {"": [st.normalize(other)]}


def test_resuming_after_an_input_changed_is_refused_naming_the_object(tmp_path):
    inp = tmp_path / "in"
    _words(inp / "a.txt", "a b\n")
    changed = _words(inp / "b.txt", "c d\n")
    spec = JobSpec(job="wordcount", inputs={"": [str(inp)]}, output=str(tmp_path / "out"), job_id="r")
    with LocalRuntime(workers=1) as rt:
        Driver(spec, rt).prepare()
    Path(changed).write_text("c d e\n")
    with pytest.raises(JobFailed, match=rf"its input {st.normalize(changed)} changed after it was planned "
                                        r"\(size 4, .* size 6"):
        _wc(tmp_path, "r", inp=str(inp), partitions=1)
    os.unlink(changed)
    with pytest.raises(JobFailed, match=r"was deleted after it was planned"):
        _wc(tmp_path, "r", inp=str(inp), partitions=1)


def test_a_map_task_refuses_an_object_that_changed_since_planning(tmp_path):
    path = _words(tmp_path / "x.txt", "one\n")
    info = st.for_uri(path).stat(path)
    seg = reader.Segment(info.uri, 0, info.size, info.size, version=info.version)
    reader.check_unchanged([seg])
    os.utime(path, ns=(1, 1))
    with pytest.raises(reader.InputError, match="changed after the job was planned"):
        reader.check_unchanged([seg])


def test_write_new_lets_exactly_one_writer_create_an_object(tmp_path):
    uri = st.normalize(str(tmp_path / "m.json"))
    wins = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        wins.append((i, st.for_uri(uri).write_new(uri, f"{i}".encode())))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in wins if won]
    assert len(winners) == 1
    assert (tmp_path / "m.json").read_text() == str(winners[0])
    assert _tree(tmp_path) == {"m.json"}  # no temporary file left behind


def test_write_new_on_s3_uses_a_conditional_put(s3_bucket):
    uri = f"s3://{s3_bucket}/jobs/m.json"
    store = st.for_uri(uri)
    assert store.write_new(uri, b"first") is True
    assert store.write_new(uri, b"second") is False
    assert store.read_bytes(uri) == b"first"


def _cli_run(tmp_path: Path, inp: str, job_id: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*LAMBDAMR, "run", "wordcount", "--input", inp, "--output", str(tmp_path / "out"), "--job-id", job_id,
         "--workers", "1", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_runs_of_one_job_id_at_once_share_one_plan(tmp_path):
    """Old: both planned and both committed, each under its own plan."""
    inp = _words(tmp_path / "in" / "a.txt", "w x w\n" * 200)
    procs = [_cli_run(tmp_path, inp, "twin", "--split-size", "300") for _ in range(2)]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    assert read_counts(str(tmp_path / "out")) == {"w": 400, "x": 200}
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    manifest = json.loads((tmp_path / "out" / "_jobs" / "twin" / "jobdata.json").read_text())
    assert success["counters"]["input_records"] == 200
    assert success["tasks"]["map"] == len(manifest["tasks"])


def test_two_different_jobs_under_one_id_at_once_one_wins_the_other_fails_clearly(tmp_path):
    a = _words(tmp_path / "in-a" / "a.txt", "a\n" * 50)
    b = _words(tmp_path / "in-b" / "b.txt", "b\n" * 50)
    procs = [_cli_run(tmp_path, a, "clash"), _cli_run(tmp_path, b, "clash")]
    results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[2] == 1)
    assert "names another job: inputs was" in loser[1] or "already committed a result" in loser[1]
    winner_input = json.loads((tmp_path / "out" / "_SUCCESS").read_text())["inputs"][""][0]
    counts = read_counts(str(tmp_path / "out"))
    assert counts == ({"a": 50} if winner_input.endswith("a.txt") else {"b": 50})


# -- budgets are per job ------------------------------------------------------------------------
_GOOD = "1.2.3.4,http://x,1980-01-01,0.5,M,USA,USA-EN,w,1\n"


def _bad(i: int) -> str:
    return f"5.6.7.{i},http://y,1980-01-02,notanumber,M,USA,USA-EN,w,1\n"


@pytest.mark.parametrize("max_files_per_task", [1, 3])
def test_max_bad_records_bounds_the_whole_job_whatever_the_split(tmp_path, max_files_per_task):
    """Old: the budget was per map task, so one file per task let 3 bad records pass a budget of 2."""
    inp = tmp_path / "uv"
    for i in range(3):
        _words(inp / f"f{i}.txt", _GOOD * 2 + _bad(i))
    common = dict(job="amplab-2a", inputs={"": [str(inp)]}, max_files_per_task=max_files_per_task,
                  vectorized=False)
    with pytest.raises(JobFailed, match=r"the input holds 3 bad records, more than the 2 allowed by "
                                        r"max_bad_records for the whole job|more than the 2 allowed"):
        run_job(output=str(tmp_path / "o1"), max_bad_records=2, **common)
    summary = run_job(output=str(tmp_path / "o2"), max_bad_records=3, **common)
    assert summary["counters"]["bad_records"] == 3
    assert read_rows(str(tmp_path / "o2")) == [["1.2.3.4", repr(0.5 * 6)]]


def test_a_job_over_its_bad_record_budget_resumes_with_a_higher_one(tmp_path):
    inp = tmp_path / "uv"
    for i in range(2):
        _words(inp / f"f{i}.txt", _GOOD + _bad(i))
    kw = dict(job="amplab-2a", inputs={"": [str(inp)]}, output=str(tmp_path / "out"), job_id="bud",
              max_files_per_task=1, vectorized=False)
    with pytest.raises(JobFailed, match="holds 2 bad records") as err:
        run_job(max_bad_records=1, **kw)
    assert err.value.resumable
    summary = run_job(max_bad_records=2, **kw)
    assert summary["counters"]["bad_records"] == 2


# -- formats that are not read yet are refused, never read as text ------------------------------
@pytest.mark.parametrize("name", ["x.lz4", "X.ORC", "x.avro", "x.snappy", "x.zip"])
def test_an_unsupported_format_by_name_is_refused_when_planning(tmp_path, name):
    _words(tmp_path / "in" / name, "looks like text\n")
    with pytest.raises(JobFailed, match=rf"{name}: unsupported format or compression") as err:
        _wc(tmp_path, "fmt", inp=str(tmp_path / "in"))
    assert not err.value.resumable


@pytest.mark.parametrize("head", [b"\x04\x22\x4d\x18", b"ORC\x00", b"Obj\x01", b"PK\x03\x04"])
def test_an_unsupported_format_by_content_is_refused_naming_the_object(tmp_path, head):
    """Old: 'invalid UTF-8 at byte 0', or garbage accepted under --max-bad-records."""
    path = tmp_path / "in" / "data.txt"
    path.parent.mkdir()
    path.write_bytes(head + bytes(range(256)) * 4 + b"\nmore\n")
    with pytest.raises(JobFailed, match=rf"{st.normalize(str(path))}: unsupported format or compression"):
        _wc(tmp_path, "fmt2", inp=str(path), max_bad_records=1000, split_size=300)


def test_an_uppercase_gz_extension_is_gzip(tmp_path):
    import gzip

    path = tmp_path / "in" / "DATA.TXT.GZ"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(b"a b a\n"))
    _wc(tmp_path, "gz", inp=str(path))
    assert read_counts(str(tmp_path / "out")) == {"a": 2, "b": 1}


@pytest.mark.parametrize("vectorized", [True, False])
def test_a_long_line_inside_a_split_is_refused_on_both_paths(tmp_path, vectorized):
    """Old: the vectorized path read a line longer than max_line_bytes that the record path refused."""
    long_line = "1.2.3.4,http://x/" + "y" * 300 + ",1980-01-01,0.5,M,USA,USA-EN,w,1\n"
    path = _words(tmp_path / "uv.txt", _GOOD * 3 + long_line + _GOOD * 3)
    offset = len(_GOOD) * 3
    with pytest.raises(JobFailed, match=rf"the line at byte {offset} is longer than 200 bytes"):
        run_job(job="amplab-2a", inputs={"": [path]}, output=str(tmp_path / "out"), max_line_bytes=200,
                vectorized=vectorized)
    summary = run_job(job="amplab-2a", inputs={"": [path]}, output=str(tmp_path / "out2"), max_line_bytes=400,
                      vectorized=vectorized)
    assert summary["tasks"]["map_modes"] == {"vectorized" if vectorized else "record": 1}


def test_the_cli_says_when_a_committed_job_was_not_recomputed(tmp_path):
    inp = _words(tmp_path / "in" / "a.txt", "a b\n")
    cmd = [*LAMBDAMR, "run", "wordcount", "--input", inp, "--output", str(tmp_path / "out"), "--job-id", "once",
           "--workers", "1", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and "job once succeeded" in first.stdout, first.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "job once already committed at " in again.stdout and "not recomputed (pass --recompute" in again.stdout
    recomputed = subprocess.run([*cmd, "--recompute"], capture_output=True, text=True, timeout=120)
    assert recomputed.returncode == 0 and "job once succeeded" in recomputed.stdout, recomputed.stderr


def test_list_children_lists_one_level_locally_and_on_s3(tmp_path, s3_bucket):
    """The output check looks only at the output's own files, never another job's tree below it."""
    for rel in ("part-00000", "_SUCCESS", "sub/part-00001", "_jobs/j/map/00000/t/part-00000"):
        _words(tmp_path / "out" / rel, "x\n")
    local = [st.basename(i.uri) for i in st.for_uri(str(tmp_path)).list_children(str(tmp_path / "out"))]
    assert local == ["_SUCCESS", "part-00000"]
    s3 = st.for_uri(f"s3://{s3_bucket}/")
    for rel in ("out/part-00000", "out/_SUCCESS", "out/sub/part-00001", "out2/part-00009"):
        s3.write_bytes(f"s3://{s3_bucket}/{rel}", b"x\n")
    got = [i.uri for i in s3.list_children(f"s3://{s3_bucket}/out")]
    assert got == [f"s3://{s3_bucket}/out/_SUCCESS", f"s3://{s3_bucket}/out/part-00000"]


def test_a_map_task_checks_all_its_s3_objects_and_names_the_changed_one(s3_bucket):
    store = st.for_uri(f"s3://{s3_bucket}/")
    segs = []
    for i in range(5):
        uri = f"s3://{s3_bucket}/in/f{i}.txt"
        store.write_bytes(uri, b"a\n")
        info = store.stat(uri)
        segs.append(reader.Segment(uri, 0, info.size, info.size, version=info.version))
    reader.check_unchanged(segs)
    store.write_bytes(f"s3://{s3_bucket}/in/f3.txt", b"b\n")
    with pytest.raises(reader.InputError, match=rf"s3://{s3_bucket}/in/f3.txt changed after the job was planned"):
        reader.check_unchanged(segs)
    store.delete([f"s3://{s3_bucket}/in/f1.txt"])
    with pytest.raises(reader.InputError, match=rf"s3://{s3_bucket}/in/f1.txt was deleted"):
        reader.check_unchanged(segs)
