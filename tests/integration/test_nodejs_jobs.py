"""Jobs written in JavaScript, run by the driver on the Node.js handlers: word count and Amplab 2a
checked against a plain reference and DuckDB, locally and on S3 (moto), and against the same jobs
in Python (byte for byte: the shuffle and the CSV are the contract's); multi-step and map-only jobs."""

from __future__ import annotations

import collections
import gzip
import re
from pathlib import Path

import pytest

from airflow_provider_lambdamr.engine import amplab_gen
from airflow_provider_lambdamr.engine.failures import JobFailed
from lambda_src import storage as st
from tests.conftest import FIXTURES
from tests.helpers import read_counts, read_rows, run_job
from tests.integration.test_amplab_duckdb import assert_equal_to_duckdb

NODEJOBS = FIXTURES / "nodejobs"

pytestmark = pytest.mark.usefixtures("node")

TEXT = [
    "The quick brown fox's tail, the QUICK dog",
    "naïve café Café CAFÉ déjà-vu 日本語 テスト 123 x_y",
    "\ufeffline with a BOM is data when not first",
    "crlf ending\r",
    "",
    "emoji 😀 are not words; it's",
]


def _corpus(tmp_path: Path) -> list[Path]:
    """Three files: one plain (cut into many splits), one gzip, one starting with a BOM."""
    lines = [TEXT[i % len(TEXT)] + f" w{i % 13}" for i in range(600)]
    plain = tmp_path / "in" / "a.txt"
    plain.parent.mkdir()
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "in" / "b.txt.gz").write_bytes(gzip.compress("\n".join(lines[::-1]).encode()))
    (tmp_path / "in" / "c.txt").write_bytes(b"\xef\xbb\xbfbom first\nlast line without newline")
    return sorted((tmp_path / "in").iterdir())


def _reference_counts(files: list[Path]) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for path in files:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = data.decode("utf-8").removeprefix("\ufeff")
        for line in text.split("\n"):
            counts.update(re.findall(r"[\w']+", line.removesuffix("\r").lower()))
    return dict(counts)


def _parts(output: str) -> dict[str, bytes]:
    root = Path(st.local_path(output))
    return {p.name: p.read_bytes() for p in sorted(root.glob("part-*"))}


def test_wordcount_in_javascript_equals_a_plain_reference_and_the_python_job(tmp_path):
    files = _corpus(tmp_path)
    kwargs = dict(inputs={"": [str(tmp_path / "in")]}, split_size=2000, partitions=3, fan_in=2)
    summary = run_job(job="wordcount-js", output=str(tmp_path / "js"), **kwargs)
    assert summary["tasks"]["map"] > 5
    assert read_counts(str(tmp_path / "js")) == _reference_counts(files)
    run_job(job="wordcount", output=str(tmp_path / "py"), **kwargs)
    assert _parts(str(tmp_path / "js")) == _parts(str(tmp_path / "py"))


@pytest.mark.parametrize("layout", ["one file, many splits", "gzip files", "skewed keys"])
def test_amplab_2a_in_javascript_equals_duckdb_and_the_python_record_path(tmp_path, layout):
    from tests.integration.test_amplab_duckdb import LAYOUTS

    cfg = LAYOUTS[layout]
    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=cfg["rows"], files=cfg["files"],
                                seed=len(layout), gzip=cfg["gzip"], skew=cfg["skew"])
    kwargs = dict(inputs={"": [str(tmp_path / "uv")]}, split_size=cfg["split_size"], partitions=3, fan_in=4)
    summary = run_job(job="amplab-2a-js", output=str(tmp_path / "js"), **kwargs)
    assert summary["tasks"]["map"] > 1
    assert_equal_to_duckdb(str(tmp_path / "js"), [st.local_path(f["uri"]) for f in files], summary)
    # The Python job's record path sums the same values in the same order: the same bytes.
    run_job(job="amplab-2a", output=str(tmp_path / "py"), vectorized=False, **kwargs)
    assert _parts(str(tmp_path / "js")) == _parts(str(tmp_path / "py"))


def test_a_bad_record_fails_a_javascript_job_blaming_the_input_unless_allowed(tmp_path):
    amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=500, files=1, seed=3)
    (tmp_path / "uv" / "zz-bad.txt").write_text("1.2.3.4,only,three\n")
    kwargs = dict(job="amplab-2a-js", inputs={"": [str(tmp_path / "uv")]}, partitions=2)
    with pytest.raises(JobFailed, match=r"not retried: the input itself is at fault\): InputError: bad record "
                       r"in .*zz-bad.txt at byte 0: BadRecord: expected 9 comma-separated columns, found 3"):
        run_job(output=str(tmp_path / "out"), **kwargs)
    summary = run_job(output=str(tmp_path / "out2"), max_bad_records=1, **kwargs)
    assert summary["counters"]["bad_records"] == 1
    assert summary["counters"]["input_records"] == 501


def test_a_two_step_javascript_job_equals_the_python_one(tmp_path, fixture_jobs_path):
    (tmp_path / "in.txt").write_text("\n".join(f"a b{i % 3} c{i % 7} d{i}" for i in range(300)) + "\n")
    kwargs = dict(inputs={"": [str(tmp_path / "in.txt")]}, partitions=2, split_size=1500,
                  params={"step2_partitions": "1"})
    run_job(job=str(NODEJOBS / "countofcounts.mjs"), output=str(tmp_path / "js"), **kwargs)
    run_job(job="userjobs.countofcounts:CountOfCounts", output=str(tmp_path / "py"), **kwargs)
    assert read_counts(str(tmp_path / "js")) == {"1": 300, "300": 1, "100": 3, "42": 1, "43": 6}
    assert _parts(str(tmp_path / "js")) == _parts(str(tmp_path / "py"))


def test_a_map_only_javascript_job_writes_its_pairs_in_input_order(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("short elephant giraffe a\nhippopotamus\n")
    summary = run_job(job=str(NODEJOBS / "longwords.mjs"), inputs={"animals": [str(tmp_path / "in")]},
                      output=str(tmp_path / "out"), params={"min": "7"})
    assert summary["files"] == ["part-m-00000"]
    assert read_rows(str(tmp_path / "out")) == [
        ["elephant", "animals", "8"], ["giraffe", "animals", "7"], ["hippopotamus", "animals", "12"]]


def test_a_module_that_is_not_a_job_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "in.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"broken.mjs: steps\(\) must return a non-empty list of steps"):
        run_job(job=str(NODEJOBS / "broken.mjs"), inputs={"": [str(tmp_path / "in.txt")]},
                output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_wordcount_and_2a_in_javascript_on_s3(s3_bucket, node_s3_sdk, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    files = _corpus(tmp_path)
    for path in files:
        s3.put_object(Bucket=s3_bucket, Key=f"in/{path.name}", Body=path.read_bytes())
    out = f"s3://{s3_bucket}/wc"
    summary = run_job(job="wordcount-js", inputs={"": [f"s3://{s3_bucket}/in"]}, output=out,
                      job_root=f"s3://{s3_bucket}/jobs", split_size=3000, partitions=2, fan_in=2)
    assert read_counts(out) == _reference_counts(files)
    job = f"jobs/{summary['job_id']}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=job)["Contents"]]
    assert any(k.startswith(job + "status/reduce/") for k in keys)
    assert not [k for k in keys if k.startswith((job + "map/", job + "reduce/"))], "intermediates left"

    local = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=5000, files=2, seed=5)
    amplab_gen.generate(f"s3://{s3_bucket}/uv", table="uservisits", rows=5000, files=2, seed=5)
    out = f"s3://{s3_bucket}/2a"
    summary = run_job(job="amplab-2a-js", inputs={"": [f"s3://{s3_bucket}/uv"]}, output=out,
                      job_root=f"s3://{s3_bucket}/jobs", split_size=120_000, partitions=2)
    assert summary["tasks"]["map"] > 2
    assert_equal_to_duckdb(out, [st.local_path(f["uri"]) for f in local], summary)
