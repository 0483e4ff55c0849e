"""A hostile pass against the README's Guarantees (issue 10, "Trust").

Each test is one attack. Seven of them found defects (two jobs into one output, a committed
id served after its input changed, overwrite deleting a listed non-part file, a _SUCCESS
directory, a listed directory, cleanup through a link, a two-field manifest): they failed
before the fixes that followed the pass; the rest are attacks the engine withstood.
"""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import jobdir
from airflow_provider_lambdamr.engine.driver import Driver, JobFailed
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from airflow_provider_lambdamr.engine.spec import JobSpec
from tests.helpers import read_counts, read_rows, run_job

LAMBDAMR = [sys.executable, "-m", "airflow_provider_lambdamr.cli"]


def _write(path: Path, data: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return str(path)


def _wc(tmp_path: Path, job_id: str, **kw) -> dict:
    inp = tmp_path / "in" / "a.txt"
    if not inp.exists():
        _write(inp, "a b a\nc a\n")
    kw.setdefault("partitions", 2)
    return run_job(job="wordcount", inputs={"": [str(inp)]}, output=str(tmp_path / "out"), job_id=job_id, **kw)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LAMBDAMR, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def _top_part_files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_file() and p.name.startswith("part-")}


# -- two jobs, one output ------------------------------------------------------------------------
def test_two_job_ids_at_once_into_one_output_never_mix(tmp_path):
    _write(tmp_path / "a.txt", "a b a\n")
    _write(tmp_path / "b.txt", "x y z w\n")
    out = tmp_path / "out"
    spec_a = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "a.txt")]}, output=str(out),
                     job_id="A", partitions=4)
    spec_b = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "b.txt")]}, output=str(out),
                     job_id="B", partitions=2)
    with LocalRuntime(workers=1) as rt:
        a, b = Driver(spec_a, rt), Driver(spec_b, rt)
        a.prepare()
        with pytest.raises(JobFailed, match=r"output .* is being written by job 'A'"):
            b.prepare()  # started while A runs: the output is A's until A commits
        a_maps = a.run_map()
        a.run_reduce(a_maps)
        a.commit(a_maps)
        with pytest.raises(JobFailed, match="already holds the result of job 'A'"):
            Driver(spec_b, rt).prepare()
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["job_id"] == "A"
    assert _top_part_files(out) == set(success["files"]), "part files in the output that its _SUCCESS does not list"
    assert read_counts(str(out)) == {"a": 2, "b": 1}
    assert not (out / "_LAMBDAMR_JOB").exists()  # released at commit


# -- --overwrite against crafted _SUCCESS files ---------------------------------------------------
def test_overwrite_never_deletes_a_file_that_is_not_a_part_file(tmp_path):
    out = tmp_path / "out"
    _write(out / "data.csv", "precious\n")
    _write(out / "_SUCCESS", json.dumps({"job_id": "forged", "files": ["data.csv"]}))
    with contextlib.suppress(JobFailed, ValueError):  # refusing is fine
        _wc(tmp_path, "mine", overwrite=True)
    assert (out / "data.csv").read_text() == "precious\n"


def test_overwrite_of_a_success_listing_a_directory_is_refused_before_deleting(tmp_path):
    out = tmp_path / "out"
    _write(out / "sub" / "x", "keep\n")
    _write(out / "_SUCCESS", json.dumps({"job_id": "other", "files": ["sub"]}))
    with pytest.raises(JobFailed, match="not a LambdaMR result manifest"):
        _wc(tmp_path, "mine")
    _wc(tmp_path, "mine", overwrite=True)  # foreign: only the _SUCCESS is replaced
    assert json.loads((out / "_SUCCESS").read_text())["job_id"] == "mine"
    assert (out / "sub" / "x").read_text() == "keep\n"


@pytest.mark.parametrize("name", ["..", ".", "", "/etc/passwd", "../victim.txt", "a/../../victim.txt"])
def test_overwrite_of_a_success_listing_an_escaping_name_deletes_nothing(tmp_path, name):
    out = tmp_path / "out"
    victim = _write(tmp_path / "victim.txt", "precious\n")
    _write(out / "_SUCCESS", json.dumps({"job_id": "other", "files": [name]}))
    with pytest.raises(JobFailed, match="holds JSON that is not a LambdaMR result manifest"):
        _wc(tmp_path, "mine")
    _wc(tmp_path, "mine", overwrite=True)  # a foreign _SUCCESS: only it is replaced
    assert Path(victim).read_text() == "precious\n"
    assert json.loads((out / "_SUCCESS").read_text())["job_id"] == "mine"


def test_overwrite_of_a_success_listing_thousands_of_absent_names_replaces_it(tmp_path):
    out = tmp_path / "out"
    _write(out / "_SUCCESS", json.dumps({"job_id": "other", "files": [f"part-{i:05d}" for i in range(5000)]}))
    _write(out / "keep.txt", "keep\n")
    summary = _wc(tmp_path, "mine", overwrite=True)
    assert read_counts(str(out)) == {"a": 3, "b": 1, "c": 1}
    assert _top_part_files(out) == set(summary["files"])
    assert (out / "keep.txt").read_text() == "keep\n"


def test_a_success_that_is_a_directory_is_refused_before_anything_runs(tmp_path):
    _write(tmp_path / "in" / "a.txt", "a b\n")
    (tmp_path / "out" / "_SUCCESS").mkdir(parents=True)
    res = _cli("run", "wordcount", "--input", "in", "--output", "out", "--workers", "1", "--quiet", cwd=tmp_path)
    assert res.returncode != 0
    assert "_SUCCESS" in res.stderr and "directory" in res.stderr
    assert ".tmp-" not in res.stderr and "Errno" not in res.stderr
    assert _top_part_files(tmp_path / "out") == set()


# -- cleanup ----------------------------------------------------------------------------------------
def test_cleanup_through_a_symlink_named_after_another_id_deletes_nothing(tmp_path):
    target = tmp_path / "other" / "J2"
    _write(target / "jobdata.json", json.dumps({"job_id": "J3", "spec": {}}))
    _write(target / "map" / "f", "keep\n")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "J3").symlink_to(target)
    with pytest.raises(jobdir.NotAJobDir):
        jobdir.cleanup(str(tmp_path / "jobs" / "J3"))
    assert (target / "map" / "f").read_text() == "keep\n"


def test_cleanup_refuses_a_manifest_no_job_wrote(tmp_path):
    data = tmp_path / "data"
    _write(data / "jobdata.json", json.dumps({"job_id": "data", "spec": {}}))
    _write(data / "map" / "x.csv", "precious\n")
    res = _cli("cleanup", "--job-dir", "data", "--delete-job-dir", cwd=tmp_path)
    assert res.returncode != 0
    assert (data / "map" / "x.csv").read_text() == "precious\n"


# -- job identity ---------------------------------------------------------------------------------
def test_rerunning_a_committed_id_after_its_input_changed_is_not_served_the_old_result(tmp_path):
    inp = Path(_write(tmp_path / "in" / "a.txt", "a b\n"))
    _wc(tmp_path, "J")
    inp.write_text("zzz zzz\n")
    try:
        _wc(tmp_path, "J")
    except JobFailed as err:
        assert str(inp) in str(err) and "changed" in str(err)
    else:
        assert read_counts(str(tmp_path / "out")) == {"zzz": 2}


def test_a_crash_between_the_part_files_and_success_resumes_exactly(tmp_path):
    _write(tmp_path / "in" / "a.txt", "w x w\n" * 50)
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   job_id="crash", partitions=3, split_size=64)
    with LocalRuntime(workers=2) as rt:
        d = Driver(spec, rt)
        d.prepare()
        d.run_reduce(d.run_map())  # final part files written; the driver "dies" before _SUCCESS
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    with pytest.raises(JobFailed, match="part files that no _SUCCESS lists"):
        _wc(tmp_path, "intruder", overwrite=True)  # another id may not adopt them
    with LocalRuntime(workers=2) as rt:
        summary = Driver(spec, rt).run()
    assert summary["job_id"] == "crash"
    assert read_counts(str(tmp_path / "out")) == {"w": 100, "x": 50}
    assert _top_part_files(tmp_path / "out") == set(summary["files"])


# -- key identity -----------------------------------------------------------------------------------
_KEY_LINES = [
    '[[1,1],[1.0,1],[true,1],["1",1]]',
    '[[-0.0,1],[0,1],[0.0,1]]',
    '[[{"a":1,"b":2},1],[{"b":2,"a":1},1],[{"a":{"y":1,"x":2}},1],[{"a":{"x":2,"y":1}},1]]',
    '[[100000000000000000000000000001,1],[1e29,1],[9223372036854775808,1],[9223372036854775807,1]]',
    '[[NaN,1],[NaN,1],[1e400,1],[Infinity,1]]',
    '[[null,1],[[],1],[{},1],["",1],[[1,[2]],1]]',
    '[[1,1],[1.0,1],[true,1],["1",1]]',
]


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("vectorized", [True, False])
def test_keys_of_every_json_type_keep_their_identity_through_the_combiner(
    tmp_path, partitions, vectorized, fixture_jobs_path
):
    from userjobs.jsonkeys import canonical

    expected: collections.Counter[str] = collections.Counter()
    for line in _KEY_LINES:
        for key, value in json.loads(line):
            expected[canonical(key)] += value
    inp = _write(tmp_path / "in.txt", "\n".join(_KEY_LINES) + "\n")
    run_job(job="userjobs.jsonkeys:JsonKeySum", inputs={"": [inp]}, output=str(tmp_path / "out"),
            partitions=partitions, split_size=40, vectorized=vectorized)
    rows = read_rows(str(tmp_path / "out"))
    assert len(rows) == len({r[0] for r in rows}), "a key in two rows"
    assert {r[0]: int(r[1]) for r in rows} == dict(expected)


# -- names and places ----------------------------------------------------------------------------------
def test_odd_local_names_are_read_as_themselves_by_the_cli(tmp_path):
    names = {
        "sp ace%41#?.txt": "a\n",
        "new\nline": "b\n",
        unicodedata.normalize("NFC", "café"): "c\n",
        unicodedata.normalize("NFD", "café"): "d\n",
        "x" * 250: "e\n",
        "*'\"quotes": "f\n",
    }
    for name, text in names.items():
        _write(tmp_path / "in" / name, text)
    out = "out dir%20#?"
    res = _cli("run", "wordcount", "--input", f"file://{tmp_path}/in/", "--output", out, "--workers", "1",
               "--quiet", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_counts(str(tmp_path / out)) == {k: 1 for k in "abcdef"}
    assert json.loads(res.stdout)["counters"]["input_objects"] == len(names)


@pytest.mark.parametrize("form", ["in/../in", "./in/", "file://{root}/in", "file://{root}/in/../in"])
def test_relative_dotdot_and_file_uri_inputs_read_each_line_once(tmp_path, form):
    _write(tmp_path / "in" / "a.txt", "a b\n")
    res = _cli("run", "wordcount", "--input", form.format(root=tmp_path), "--output", "out", "--workers", "1",
               "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_counts(str(tmp_path / "out")) == {"a": 1, "b": 1}


def test_an_input_that_is_a_symlink_to_the_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "inlink").symlink_to(tmp_path / "out")
    res = _cli("run", "wordcount", "--input", "inlink", "--output", "out", "--workers", "1", "--quiet", cwd=tmp_path)
    assert res.returncode == 2  # refused as an invalid invocation
    assert "inside the output" in res.stderr and "Traceback" not in res.stderr


# -- lines and files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("vectorized", [True, False])
def test_a_line_at_max_line_bytes_is_read_and_one_byte_over_is_refused_by_name(tmp_path, vectorized):
    at = _write(tmp_path / "at" / "a.txt", "a" * 16 + "\nb\n")
    run_job(job="wordcount", inputs={"": [at]}, output=str(tmp_path / "o1"), max_line_bytes=16,
            vectorized=vectorized, partitions=1)
    assert read_counts(str(tmp_path / "o1")) == {"a" * 16: 1, "b": 1}
    over = _write(tmp_path / "over" / "a.txt", "b\n" + "a" * 17)
    with pytest.raises(JobFailed, match=r"over/a.txt: the line at byte 2 is longer than 16 bytes"):
        run_job(job="wordcount", inputs={"": [over]}, output=str(tmp_path / "o2"), max_line_bytes=16,
                vectorized=vectorized, partitions=1)


@pytest.mark.parametrize("head,error", [(b"\x04\x22\x4d\x18", r"unsupported format or compression \(lz4\)"),
                                        (b"\x28\xb5\x2f\xfd", r"corrupt zstd data")])  # zstd is read (by magic)
def test_compressed_content_behind_a_text_name_is_named_not_read_as_bad_records(tmp_path, head, error):
    inp = _write(tmp_path / "in" / "data.txt", head + bytes(64))
    with pytest.raises(JobFailed, match=rf"data.txt: {error}"):
        run_job(job="wordcount", inputs={"": [inp]}, output=str(tmp_path / "out"), max_bad_records=1000)
