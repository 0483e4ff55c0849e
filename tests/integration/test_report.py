"""``lambdamr report``: the job's HTML page, from storage alone, for committed, failed and running jobs."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from airflow_provider_lambdamr import cli
from airflow_provider_lambdamr.engine import jobdir, report
from airflow_provider_lambdamr.engine.driver import JobFailed
from lambda_src import contract
from lambda_src import storage as st
from tests.helpers import run_job


class _Page(HTMLParser):
    """Every element with a data-attempt attribute, every src/href, the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[dict] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "data-attempt" in a:
            self.attempts.append(a)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def _parse(uri: str) -> _Page:
    page = _Page()
    page.feed(st.for_uri(uri).read_bytes(uri).decode("utf-8"))
    return page


def _records(job_dir: str) -> list[dict]:
    status = contract.status_dir(job_dir)
    return [jobdir.read_json(i.uri) for i in st.for_uri(status).list(status)]


def _inputs(tmp_path: Path, files: int = 6) -> str:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(files):
        (d / f"{i}.txt").write_text("".join(f"w{i} x{j % 4}\n" for j in range(30)))
    return str(d)


def test_a_report_shows_every_attempt_the_failure_the_twin_and_the_records_per_phase(tmp_path, fixture_jobs_path):
    summary = run_job(
        job="userjobs.faulty:FaultyCount", inputs={"": [_inputs(tmp_path)]}, output=str(tmp_path / "out"),
        max_files_per_task=1, partitions=2, fan_in=2, speculation_factor=3.0, speculation_min_s=1.0,
        keep_intermediates=True,
        params={"fail_once": str(tmp_path / "fail"), "sleep_once": str(tmp_path / "slow"), "sleep_s": "60"},
    )
    assert summary["speculative_attempts"] == 1
    job_dir = summary["job_dir"]
    records = _records(job_dir)
    assert all(isinstance(r["started_at"], float) for r in records), "every record carries its start time"

    assert cli.main(["report", job_dir]) == 0
    uri = contract.report_uri(job_dir)
    page = _parse(uri)
    bars = page.attempts

    # One element per attempt: per record, plus each attempt that left none (the cancelled straggler).
    committed = [r for r in records if r["state"] == "succeeded"]
    failed = [r for r in records if r["state"] == "failed"]
    unrecorded = sum(r["attempt"] - 1 - sum(f["task"] == {**r["task"], "attempt": f["attempt"]} for f in failed)
                     for r in committed)
    assert len(bars) == len(records) + unrecorded
    assert [b["data-state"] for b in bars].count("committed") == len(committed) == (
        summary["tasks"]["map"] + summary["tasks"]["reduce"])

    # The injected failure: a failed attempt, kind task, of a map task that then committed.
    assert len(failed) == 1
    failed_bars = [b for b in bars if b["data-state"] == "failed"]
    assert [(b["data-task"], b["data-attempt"], b["data-kind"]) for b in failed_bars] == [
        (contract.map_status_key(0, failed[0]["task"]["index"]), str(failed[0]["attempt"]), "task")]
    # The straggler killed when its speculative twin committed left no record: marked, not drawn with times.
    assert unrecorded == 1
    ghost = [b for b in bars if b["data-state"] == "unrecorded"]
    assert len(ghost) == 1 and "mark" in ghost[0]["class"].split()
    twin = [b for b in bars if b["data-task"] == ghost[0]["data-task"] and b["data-state"] == "committed"]
    assert int(twin[0]["data-attempt"]) > int(ghost[0]["data-attempt"])

    # Records per phase equal the _SUCCESS counters.
    phases = {p.name: p for p in report.collect(job_dir).phases()}
    counters = summary["counters"]
    assert phases["step 1 map"].input_records == counters["input_records"]
    assert phases["step 1 map"].output_records == counters["map_output_records"]
    last_round = max(n for n in phases if n.startswith("step 1 reduce"))
    assert phases[last_round].output_records == counters["output_records"]
    text = " ".join(page.text)
    for n in (counters["input_records"], counters["map_output_records"], counters["output_records"]):
        assert f"{n:,}" in text
    assert "committed" in text and "Cost" in text

    # Self-contained: no scripts, nothing fetched from the network.
    assert "script" not in page.tags
    assert not [u for u in page.links if re.match(r"(?i)\s*(https?:)?//", u)]

    # The report is the job's own file: deleting the job directory removes it.
    jobdir.cleanup(job_dir, delete_job_dir=True)
    assert not st.for_uri(uri).exists(uri)


def test_a_report_of_a_failed_job_names_its_state_and_escapes_what_storage_holds(tmp_path, fixture_jobs_path):
    hostile = "<script>alert(1)</script>"
    with pytest.raises(JobFailed):
        run_job(job="userjobs.faulty:FaultyCount", inputs={"": [_inputs(tmp_path, files=2)]},
                output=str(tmp_path / "out"), job_id="bad-job", max_files_per_task=1, speculation=False,
                params={"always_fail": "1"})
    job_dir = st.join(st.from_path(str(tmp_path / "out")), "_jobs", "bad-job")
    # Error messages, the job's code reference and failure text from storage are attacker-controlled
    # (job ids cannot hold markup: the contract's pattern and the directory check refuse it).
    records = [i.uri for i in st.for_uri(job_dir).list(contract.status_dir(job_dir))]
    assert records, "the failing attempts left records"
    for rec_uri in records:
        rec = jobdir.read_json(rec_uri)
        rec["error"]["message"] = hostile
        st.for_uri(rec_uri).write_bytes(rec_uri, json.dumps(rec).encode())
    manifest_uri = contract.manifest_uri(job_dir)
    manifest = jobdir.read_json(manifest_uri)
    manifest["spec"]["job"] = hostile
    st.for_uri(manifest_uri).write_bytes(manifest_uri, json.dumps(manifest).encode())
    failure_uri = contract.failure_uri(job_dir)
    st.for_uri(failure_uri).write_bytes(failure_uri, json.dumps({"message": hostile}).encode())

    out = str(tmp_path / "r.html")
    uri = report.write(job_dir, out)
    assert uri == st.from_path(out)
    raw = Path(out).read_text()
    page = _parse(uri)
    assert "script" not in page.tags and "<script>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert report.collect(job_dir).state == "failed"
    assert "failed" in page.text[page.text.index("LambdaMR job bad-job: ") + 1]
    assert {b["data-state"] for b in page.attempts} == {"failed"}
    assert {b["data-kind"] for b in page.attempts} == {"task"}


def test_a_report_of_a_running_job_shows_the_attempts_that_ended(tmp_path):
    summary = run_job(job="wordcount", inputs={"": [_inputs(tmp_path, files=3)]}, output=str(tmp_path / "out"),
                      max_files_per_task=1, keep_intermediates=True)
    job_dir = summary["job_dir"]
    # As it was before the commit and the final round: no _SUCCESS, reduce records not yet written.
    Path(st.local_path(contract.success_uri(summary["output"]))).unlink()
    for info in list(st.for_uri(job_dir).list(contract.status_dir(job_dir, contract.REDUCE))):
        st.for_uri(info.uri).delete([info.uri])
    rep = report.collect(job_dir)
    assert rep.state == "running" and rep.summary is None
    page = _parse(report.write(job_dir))
    assert len(page.attempts) == summary["tasks"]["map"]
    assert {b["data-state"] for b in page.attempts} == {"committed"}
    assert "running" in " ".join(page.text)


def test_a_report_names_the_join_strategy_the_planner_chose(tmp_path, fixture_jobs_path):
    inputs = {}
    for name, text in (("left", "k1,x\nk2,y\n"), ("right", "k1,z\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.csv").write_text(text)
        inputs[name] = [str(tmp_path / name)]
    summary = run_job(job="userjobs.joins:JoinPairs", inputs=inputs, output=str(tmp_path / "out"),
                      keep_intermediates=True)
    assert summary["join"]["strategy"] == "broadcast" and summary["join"]["broadcast"] == "right"
    page = _parse(report.write(summary["job_dir"], str(tmp_path / "r.html")))
    row = page.text[page.text.index("join") + 1]
    assert row == "broadcast of right (inputs left 10 B, right 5 B; function memory 1536 MB)"
