"""Round 4 hostile pass: input and output formats, the invocation ledger, coordinator mode.

Each test names the defect it pins: it failed on the code before its fix."""

from __future__ import annotations

import collections
import csv
import io
import random
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from airflow_provider_lambdamr.engine import coordinator, jobdir, jobstate, planner
from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.failures import JobFailed
from airflow_provider_lambdamr.engine.scheduler import InvocationStats
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src import contract, formats
from lambda_src import storage as st
from lambda_src.job import MapReduceJob
from tests.helpers import read_counts, read_rows, run_job
from tests.integration.test_coordinator import Bus, _deliver


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


def test_a_job_live_in_coordinator_mode_is_refused_to_a_driver_without_it(tmp_path, fixture_jobs_path):
    """Defect: the same job id run without ``--coordinator`` while its coordinator advanced it
    invoked attempts the coordinator had launched a second time (it takes no launch markers),
    and its ``_SUCCESS`` counted 20 of the 24 invocations. Refused now; the coordinator then
    commits the exact result with every attempt launched once and counted."""
    lines = [" ".join(f"w{(i * 7 + j) % 13}" for j in range(5)) for i in range(400)]
    (tmp_path / "in.txt").write_text("".join(line + "\n" for line in lines))
    common = dict(job="wordcount", inputs={"": [str(tmp_path / "in.txt")]}, output=str(tmp_path / "out"),
                  job_id="both", job_root=str(tmp_path / "jobs"), runtime="service", split_size=2000,
                  partitions=2, speculation=False)
    spec = JobSpec(coordinator=True, **common)
    bus = Bus()
    assert Driver(spec, bus).launch().state == "running"
    _, record = bus.run(*bus.take())
    assert coordinator.step(spec.job_dir, bus, coordinator.parse_event(record)).state == "running"
    with pytest.raises(JobFailed, match=r"job both was launched in coordinator mode .* launch it again with "
                                        r"--coordinator"):
        Driver(JobSpec(**common), bus).run()
    assert jobstate.read_failure(spec.job_dir) is None  # the refusal did not fail the coordinator's job
    with ThreadPoolExecutor(max_workers=2) as pool:
        _deliver(bus, spec.job_dir, random.Random(4), drop=0.0, pool=pool)
    assert read_counts(spec.output) == collections.Counter(" ".join(lines).split())
    assert set(bus.launches.values()) == {1}
    invocations = jobdir.read_success(spec.output).summary["invocations"]
    assert sum(invocations[p]["invocations"] for p in ("map", "reduce")) == sum(bus.launches.values())


@pytest.mark.parametrize("header", [b'region,"amo"unt', b"region,amount\rx", b"reg\xffion,amount"],
                         ids=["quote", "lone-cr", "invalid-utf8"])
def test_a_csv_header_that_cannot_be_read_fails_the_job_even_with_bad_records_allowed(tmp_path, fixture_jobs_path,
                                                                                       header):
    """Defect: with --max-bad-records, an unreadable CSV header was skipped as a bad record and
    the first data row became the header: ``north,1`` named the columns and every later row
    was read under those names (``{'north': 'south', '1': '2'}``), a silently wrong result."""
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(header + b"\nnorth,1\nsouth,2\n")
    with pytest.raises(JobFailed, match=rf"{st.normalize(str(path))}: the CSV header at byte 0 cannot be read: "):
        run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
                input_format="csv", max_bad_records=5)


def test_a_lone_cr_in_an_unquoted_csv_field_is_a_bad_record_whose_reason_gives_a_remedy_that_works(
    tmp_path, fixture_jobs_path
):
    """Defect: the reason was Python's "do you need to open the file in universal-newline
    mode?", advice no user of lambdamr can follow."""
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(b"region,amount\nno\rrth,1\nsouth,2\n")
    with pytest.raises(JobFailed, match=r"at byte 14: malformed CSV record: a \\r in an unquoted field .*: quote") as err:
        run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
                input_format="csv")
    assert "universal-newline" not in str(err.value)


def test_blank_lines_before_a_csv_header_are_skipped(tmp_path, fixture_jobs_path):
    """Defect: a blank first line (after a BOM too) was taken for an empty header, so every
    row was a bad record ("CSV record of 2 fields, the header has 0"). pyarrow's reader
    (the reference) skips blank lines and reads the header after them."""
    data = b"\xef\xbb\xbf\r\n\nregion,amount\nnorth,1\nsouth,2\nnorth,3\n"
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(data)
    expected = collections.Counter(pacsv.read_csv(io.BytesIO(data)).column("region").to_pylist())
    summary = run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
                      input_format="csv")
    assert read_counts(str(tmp_path / "out")) == expected and summary["counters"]["bad_records"] == 0


def test_invalid_utf8_inside_a_quoted_csv_field_makes_the_whole_record_bad(tmp_path, fixture_jobs_path):
    """Defect: the line holding invalid UTF-8 was dropped from the middle of a quoted field
    and the rest of the record was kept, spliced (``"x\\ny"`` for ``"x\\n<bad>\\ny"``): a
    changed value, under a count of one skipped record. Now the record is the bad one, named
    by the byte it starts at."""
    good = b"region,amount\n"
    bad = b'north,"x\n\xff\ny"\n'
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(good + bad + b"south,2\n")
    with pytest.raises(JobFailed, match=rf"bad record in {st.normalize(str(path))} at byte {len(good)}: invalid "
                                        r"UTF-8 \(invalid start byte at byte 23\), inside this record"):
        run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
                input_format="csv")
    summary = run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "skip"),
                      input_format="csv", max_bad_records=1)
    assert read_counts(str(tmp_path / "skip")) == {"south": 1} and summary["counters"]["bad_records"] == 1


def test_a_driverconfig_naming_a_field_twice_is_refused(tmp_path):
    """Defect: ``{"bucket": "data-b", ..., "bucket": "other-b"}`` read other-b and dropped
    data-b without a word (json keeps the last), though every field is to be honoured or
    refused by name. Inside a function's entry too."""
    from airflow_provider_lambdamr.engine import driverconfig

    path = tmp_path / "driverconfig.json"
    for text, name in (('{"bucket": "data-b", "jobBucket": "job-b", "bucket": "other-b"}', "'bucket'"),
                       ('{"bucket": "b1", "mapper": {"zip": "mapper.zip", "zip": "x.zip"}}', "'zip'")):
        path.write_text(text)
        with pytest.raises(driverconfig.DriverConfigError,
                           match=rf"{path}: an object names {name} more than once \(JSON would keep only the last\)"):
            driverconfig.load(str(path))
    path.write_text('{"bucket": "data-b", "jobBucket": "job-b"}')
    assert driverconfig.load(str(path)) == {"bucket": "data-b", "jobBucket": "job-b"}


def _skippable(payload: bytes, kind: int = 0) -> bytes:
    """A zstd skippable frame (RFC 8878 3.1.2), as pzstd writes before each frame it compresses."""
    return bytes([0x50 + kind, 0x2A, 0x4D, 0x18]) + len(payload).to_bytes(4, "little") + payload


@pytest.mark.parametrize("name", ["words.txt.zst", "words"], ids=["by-name", "by-signature"])
def test_a_zstd_stream_starting_with_a_skippable_frame_is_read(tmp_path, name):
    """Defect: a zstd object as pzstd writes it (a skippable frame, then a frame, and so on)
    was refused as "not zstd data", named ``.zst`` or not (then it was read as text)."""
    first, second = "a b a\nc\n" * 50, "b d\n" * 30
    data = b"".join((_skippable(b"\x10\x00\x00\x00"), pa.compress(first.encode(), codec="zstd", asbytes=True),
                     _skippable(b"", kind=15), pa.compress(second.encode(), codec="zstd", asbytes=True)))
    path = tmp_path / "in" / name
    path.parent.mkdir()
    path.write_bytes(data)
    run_job(job="wordcount", inputs={"": [str(path)]}, output=str(tmp_path / "out"))
    assert read_counts(str(tmp_path / "out")) == collections.Counter((first + second).split())


def test_a_quoted_csv_field_over_the_line_limit_names_the_option_that_raises_it(tmp_path, fixture_jobs_path):
    """Defect: a quoted field of many short lines, longer in all than --max-line-bytes, was a
    bad record "field larger than field limit (1048576)", naming no option; raising
    --max-line-bytes reads it."""
    path = tmp_path / "in" / "rows.csv"
    path.parent.mkdir()
    path.write_bytes(b"region,amount\nnorth,\"" + b"x\n" * 600_000 + b"\"\nsouth,2\n")
    with pytest.raises(JobFailed, match=r"at byte 14: malformed CSV record: a quoted field longer than the line "
                                        r"limit \(.*\): raise --max-line-bytes"):
        run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "out"),
                input_format="csv")
    run_job(job="userjobs.rows:RegionRows", inputs={"": [str(path)]}, output=str(tmp_path / "big"),
            input_format="csv", max_line_bytes=2 * 1024 * 1024)
    assert read_counts(str(tmp_path / "big")) == {"north": 1, "south": 1}


def test_the_csv_field_limit_is_the_jobs_not_what_an_earlier_job_left_in_a_warm_worker(tmp_path):
    """Defect: the csv module's field limit is process-wide and was only ever raised, so a
    warm worker that had run a job with a larger --max-line-bytes read a field that a cold
    one refused: the result depended on the worker's history."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"region,amount\nnorth,\"" + b"x\n" * 600_000 + b"\"\nsouth,2\n")
    tasks, _ = planner.plan({"": [str(path)]}, 64 << 20, 10, input_formats={"": "csv"})
    (seg,) = [seg for task in tasks for seg in task.splits]
    job = type("WholeRows", (MapReduceJob,), {})()
    before = csv.field_size_limit()
    csv.field_size_limit(8 << 20)  # what an earlier job with --max-line-bytes 8MB leaves behind
    try:
        bad: list = []
        rows = [r for block in formats.of(seg).read_blocks(st.for_uri(seg.uri), seg, lambda *a: bad.append(a),
                                                            1 << 20, job) for r in block.records]
    finally:
        csv.field_size_limit(before)
    assert rows == [{"region": "south", "amount": "2"}]
    assert [(offset, reason) for offset, _, reason in bad] == [
        (14, "malformed CSV record: a quoted field longer than the line limit (1048576 bytes): raise --max-line-bytes")]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_ledger_entry_with_a_number_that_is_not_finite_is_left_out(tmp_path, number):
    """Defect: json reads ``NaN`` and ``Infinity``; an entry holding them (no process of this
    engine writes one) was summed, and ``_SUCCESS`` would carry task_ms ``Infinity`` (not
    JSON to most readers) instead of the entry being left out with a warning."""
    job_dir = st.normalize(str(tmp_path / "job"))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: InvocationStats(
        durations_ms=[10.0], billed_ms=10, peak_memory_mb=60.0, invocations=1)}))
    for field in ("durations_ms", "peak_memory_mb"):
        value = f"[{number}]" if field == "durations_ms" else number
        (tmp_path / "job" / contract.LEDGER / f"{field}.json").write_text(
            '{"stats": {"map": {"durations_ms": [5.0], "billed_ms": 5, "peak_memory_mb": 50.0, "invocations": 1, '
            f'"failures": 0, "cold_starts": 0, "{field}": {value}}}}}}}')
    summary = jobstate.read_invocations(job_dir).stats[contract.MAP].summary()
    assert summary["invocations"] == 1 and summary["task_ms"] == {"min": 10.0, "median": 10.0, "max": 10.0}
