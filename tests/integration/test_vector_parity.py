"""Every built-in job gives the same result vectorized and in record mode, on hostile input.

The record path is the reference. On each corpus (see ``tests/vector_parity.py``) a job run
with the vectorized path and with ``--no-vectorized`` must write the same part files (the
same rows in each part; map-only parts byte for byte), read and skip the same number of
records, or fail with the same message, naming the same file and byte offset.
"""

from __future__ import annotations

import pytest

from airflow_provider_lambdamr.engine.driver import JobFailed
from airflow_provider_lambdamr.engine.spec import BUILTIN_JOBS
from lambda_src import task
from tests.helpers import run_job
from tests.vector_parity import SPLIT_SIZES, read_parts, sorted_rows, write_corpus

INPUTS = {
    "wordcount": ("uservisits", "rankings"),
    "amplab-3a": ("uservisits", "rankings"),
}


#: Jobs whose vectorized variant is a Join in Arrow (``table_steps``): not compared on the hostile
#: corpora below. Its typed columns cannot hold every value Python's ``int()`` reads (a pageRank of
#: 10**30 fails the task, naming the column), and a broadcast join's tasks read other splits than
#: the record path's, so the first bad record each meets differs. It is compared on the corpus
#: Arrow reads (above), and against DuckDB and across strategies in test_join_strategies.
JOIN_JOBS = ("amplab-3a",)
HOSTILE_JOBS = sorted(set(BUILTIN_JOBS) - set(JOIN_JOBS))


def inputs_of(job: str, dirs: dict) -> dict[str, list[str]]:
    if job == "amplab-3a":
        return {name: [str(dirs[name])] for name in ("uservisits", "rankings")}
    names = INPUTS.get(job, ("rankings",) if job.startswith("amplab-1") else ("uservisits",))
    return {"": [str(dirs[name]) for name in names]}


def run_both(tmp_path, job: str, dirs: dict, **kwargs) -> dict[bool, dict]:
    """Each mode's summary and part files, or the error it failed with."""
    results = {}
    for vectorized in (True, False):
        out = tmp_path / f"out-{vectorized}"
        try:
            summary = run_job(job=job, inputs=inputs_of(job, dirs), output=str(out), vectorized=vectorized,
                              job_id=f"parity-{vectorized}", max_files_per_task=1, partitions=3,
                              params={"start": "1970-01-01", "end": "1990-01-01", "top": "1000"}
                              if job == "amplab-3a" else {}, **kwargs)
        except JobFailed as err:
            message = str(err).replace(f"parity-{vectorized}", "JOB").replace(str(out), "OUT")
            results[vectorized] = {"error": (type(err).__name__, message)}
        else:
            results[vectorized] = {"summary": summary, "parts": read_parts(str(out))}
    return results


def assert_same(results: dict[bool, dict], job: str, *, vectorized: str) -> None:
    """``vectorized``: how many map tasks must have stayed in Arrow (all, most or some)."""
    vec, rec = results[True], results[False]
    assert ("error" in vec) == ("error" in rec), (vec.get("error"), rec.get("error"))
    if "error" in rec:
        assert vec["error"] == rec["error"]
        return
    for name in ("input_records", "bad_records"):
        assert vec["summary"]["counters"][name] == rec["summary"]["counters"][name], name
    assert vec["parts"].keys() == rec["parts"].keys()
    for name, data in rec["parts"].items():
        if name.startswith("part-m-"):  # map-only: the mapper's rows in input order
            assert vec["parts"][name] == data, name
        else:  # a reducer's row order within a part is not specified: same rows, same bytes
            assert sorted(vec["parts"][name].split(b"\n")) == sorted(data.split(b"\n")), name
            assert sorted_rows(vec["parts"][name]) == sorted_rows(data), name
    modes = vec["summary"]["tasks"]["map_modes"]
    job_class = task.load_job_class(BUILTIN_JOBS[job])
    if job_class.has_table_mapper():  # the check is not vacuous: tasks stayed in Arrow
        least = {"all": sum(modes.values()), "most": modes.get("record", 0) + 1, "some": 1}[vectorized]
        assert modes.get("vectorized", 0) >= least, modes


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {kind: write_corpus(root / kind, kind) for kind in ("arrow", "clean", "bad")}


@pytest.mark.parametrize("job", sorted(BUILTIN_JOBS))
def test_same_result_where_every_task_stays_vectorized(tmp_path, corpora, job):
    """Every map task in Arrow, so the Arrow reducers and CSV writer run too."""
    results = run_both(tmp_path, job, corpora["arrow"], split_size=SPLIT_SIZES[0])
    assert "error" not in results[False], results[False]
    assert results[False]["summary"]["counters"]["bad_records"] == 0
    assert_same(results, job, vectorized="all")


@pytest.mark.parametrize("split_size", SPLIT_SIZES)
@pytest.mark.parametrize("job", HOSTILE_JOBS)
def test_same_result_on_lines_the_record_path_accepts(tmp_path, corpora, job, split_size):
    results = run_both(tmp_path, job, corpora["clean"], split_size=split_size)
    assert "error" not in results[False], results[False]
    assert results[False]["summary"]["counters"]["bad_records"] == 0
    assert_same(results, job, vectorized="most")


@pytest.mark.parametrize("split_size", SPLIT_SIZES[:2])
@pytest.mark.parametrize("job", HOSTILE_JOBS)
def test_same_bad_records_skipped(tmp_path, corpora, job, split_size):
    results = run_both(tmp_path, job, corpora["bad"], split_size=split_size, max_bad_records=1000)
    assert_same(results, job, vectorized="some")


@pytest.mark.parametrize("job", HOSTILE_JOBS)
def test_same_error_on_the_first_bad_record(tmp_path, corpora, job):
    results = run_both(tmp_path, job, corpora["bad"], split_size=SPLIT_SIZES[1], workers=1)  # tasks in order
    if job != "wordcount":  # word count reads any text
        assert "error" in results[False] and "bad record in" in results[False]["error"][1]
    assert_same(results, job, vectorized="some")
