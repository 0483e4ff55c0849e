"""The invocation ledger: each driver process's invocation statistics, summed by the commit."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from airflow_provider_lambdamr.engine import jobstate
from airflow_provider_lambdamr.engine.scheduler import InvocationStats
from lambda_src import contract
from lambda_src import storage as st


def _stats(invocations: int, failures: int = 0, durations=(5.0,)) -> InvocationStats:
    return InvocationStats(list(durations), billed_ms=7 * invocations, peak_memory_mb=64.0 + invocations,
                           invocations=invocations, failures=failures, cold_starts=1)


def test_entries_of_several_processes_sum_and_an_empty_one_is_not_written(tmp_path):
    job_dir = st.normalize(str(tmp_path / "job"))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: _stats(3, 1)}, 2))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: _stats(2), contract.REDUCE: _stats(4)}))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: InvocationStats()}))  # launched nothing
    entries = list((tmp_path / "job" / contract.LEDGER).iterdir())
    assert len(entries) == 2
    total = jobstate.read_invocations(job_dir)
    assert total.stats[contract.MAP].invocations == 5 and total.stats[contract.MAP].failures == 1
    assert total.stats[contract.REDUCE].invocations == 4 and total.speculative_attempts == 2
    assert total.stats[contract.MAP].peak_memory_mb == 67.0 and total.stats[contract.MAP].billed_ms == 35
    assert all(contract.written_by_job(f"{contract.LEDGER}/{p.name}") for p in entries)


def test_a_corrupt_or_foreign_entry_is_left_out_with_a_warning_naming_it(tmp_path, caplog):
    job_dir = st.normalize(str(tmp_path / "job"))
    jobstate.record_invocations(job_dir, jobstate.Ledger({contract.MAP: _stats(3)}))
    ledger = tmp_path / "job" / contract.LEDGER
    good = asdict(_stats(100))
    hostile = {
        "not-json.json": b"{",
        "a-list.json": b"[]",
        "unknown-field.json": json.dumps({"stats": {"map": {**good, "extra": 1}}}).encode(),
        "string-count.json": json.dumps({"stats": {"map": {**good, "invocations": "100"}}}).encode(),
        "negative.json": json.dumps({"stats": {"map": {**good, "invocations": -100}}}).encode(),
        "bool-duration.json": json.dumps({"stats": {"map": {**good, "durations_ms": [True]}}}).encode(),
        "bad-speculative.json": json.dumps({"stats": {}, "speculative_attempts": "2"}).encode(),
    }
    for name, data in hostile.items():
        (ledger / name).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_lambdamr.engine.jobstate"):
        total = jobstate.read_invocations(job_dir)
    assert total.stats[contract.MAP].invocations == 3 and total.speculative_attempts == 0
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in hostile:
        assert name in warned, name
