"""Round 4 hostile pass: input and output formats, the invocation ledger, coordinator mode.

Each test names the defect it pins: it failed on the code before its fix."""

from __future__ import annotations

import collections
import io

import pyarrow.csv as pacsv

from airflow_provider_lambdamr.engine import jobdir, jobstate
from airflow_provider_lambdamr.engine.scheduler import InvocationStats
from lambda_src import contract
from lambda_src import storage as st
from tests.helpers import read_rows, run_job


def test_a_quoted_csv_field_keeps_its_crlf(tmp_path, fixture_jobs_path):
    """Defect: a quoted CSV field holding ``\\r\\n`` was read as ``\\n`` (the text reader drops
    the ``\\r`` of a line ending; the CSV reader re-joined lines with ``\\n``), so a key changed.
    The reference is pyarrow's CSV reader (RFC 4180), which keeps the field's bytes."""
    data = b'region,amount\r\n"no\r\nrth",1\r\n"a\rb",2\r\n"x\ny",3\nsouth,4\r\n"no\r\nrth",5\n'
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(data)
    expected = collections.Counter(pacsv.read_csv(io.BytesIO(data)).column("region").to_pylist())
    assert expected["no\r\nrth"] == 2  # the reference reads the field as written
    run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
            input_format="csv")
    assert {row[0]: int(row[1]) for row in read_rows(str(tmp_path / "out"))} == expected


def test_cleanup_keeps_files_in_the_ledger_and_launch_directories_that_the_job_did_not_write(tmp_path):
    """Defect: ``lambdamr cleanup --delete-job-dir`` deleted every file under ``invocations/``
    and ``launch/`` (a user's notes there too), though the ledger's reader itself calls an
    entry it did not write foreign. Only ledger entries (``<uuid4 hex>.json``) and launch
    markers (``<status key>.a<N>.json``) are the job's."""
    (tmp_path / "in.txt").write_text("a b a\n")
    job_root = tmp_path / "jobs"
    run_job(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
            job_id="ledger", job_root=str(job_root))
    job_dir = st.normalize(str(job_root / "ledger"))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: InvocationStats(invocations=2)}))
    marker = job_root / "ledger" / contract.LAUNCH / "map" / "00000.a1.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert contract.launch_of(job_dir, st.normalize(str(marker))) == ("map/00000", 1)  # a real marker's name
    foreign = [job_root / "ledger" / contract.LEDGER / name for name in ("notes.txt", "mine.json", "sub/x.json")]
    foreign += [job_root / "ledger" / contract.LAUNCH / "README"]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not the job's")
    report = jobdir.cleanup(job_dir, delete_job_dir=True)
    assert sorted(report.kept) == sorted(st.normalize(str(p)) for p in foreign)
    assert all(p.read_text() == "not the job's" for p in foreign)
    left = sorted(str(p.relative_to(job_root)) for p in job_root.rglob("*") if p.is_file())
    assert left == sorted(str(p.relative_to(job_root)) for p in foreign)  # the entry and the marker went
