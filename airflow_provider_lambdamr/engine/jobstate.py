"""A job's state as storage holds it: manifest, pinned plans, status records, map commits.

Everything here reads (or, for the driver's own records, writes) the job directory and
nothing else, so any process can rebuild where a job stands: the driver resuming a phase,
a deferrable operator continuing in another worker, a sensor or a trigger waiting for a
phase (they import ``phase_state`` from here).
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from airflow_provider_lambdamr.engine import jobdir
from airflow_provider_lambdamr.engine.scheduler import InvocationStats
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import MAP, REDUCE

log = logging.getLogger(__name__)


def write_json(uri: str, data: dict | list) -> None:
    st.for_uri(uri).write_bytes(uri, json.dumps(data, sort_keys=True, indent=1).encode("utf-8"))


def read_manifest(job_dir: str) -> dict | None:
    """The manifest as written (no checks: the driver that wrote it reads it back)."""
    try:
        return json.loads(st.for_uri(job_dir).read_bytes(contract.manifest_uri(job_dir)))
    except st.NotFound:
        return None


def read_failure(job_dir: str) -> dict | None:
    """Why the job last failed (``failed.json``); None when it has not failed."""
    try:
        return json.loads(st.for_uri(job_dir).read_bytes(contract.failure_uri(job_dir)))
    except st.NotFound:
        return None


@dataclass
class StatusListing:
    """One listing of the status records under a status-key prefix."""

    #: Status keys with a commit record.
    committed: list[str]
    #: Per status key, the highest attempt number that left a failed-attempt record.
    failed_attempts: dict[str, int]


def list_statuses(job_dir: str, prefix: str) -> StatusListing:
    where = contract.status_dir(job_dir, prefix)
    committed: list[str] = []
    failed: dict[str, int] = {}
    for info in st.for_uri(where).list(where):
        key = contract.committed_status_key(job_dir, info.uri)
        if key is not None:
            committed.append(key)
            continue
        attempt = contract.failed_attempt_of(job_dir, info.uri)
        if attempt is not None:
            failed[attempt[0]] = max(failed.get(attempt[0], 0), attempt[1])
    return StatusListing(committed, failed)


def committed(job_dir: str, prefix: str) -> list[str]:
    """The status keys under ``prefix`` that have a commit record."""
    return list_statuses(job_dir, prefix).committed


def attempts_used(job_dir: str, prefix: str) -> dict[str, int]:
    """Per status key under ``prefix``, how many attempts failed (by their records' numbers)."""
    return list_statuses(job_dir, prefix).failed_attempts


def read_records(job_dir: str, keys: list[str]) -> dict[str, dict]:
    """The commit records of ``keys``, by status key."""
    store = st.for_uri(job_dir)

    def read(key: str) -> tuple[str, dict]:
        return key, json.loads(store.read_bytes(contract.status_uri(job_dir, key)))

    if len(keys) < 8:
        return dict(map(read, keys))
    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(read, keys))


def read_statuses(job_dir: str, prefix: str) -> dict[str, dict]:
    """Committed status records under a status-key prefix, by status key (``map/00007``)."""
    return read_records(job_dir, committed(job_dir, prefix))


def final_records(job_dir: str, step: int) -> dict[int, dict]:
    """The committed final-round status records of a step's reduce, by partition."""
    return {
        int(r["task"]["partition"]): r
        for r in read_statuses(job_dir, contract.status_prefix(step, REDUCE)).values()
        if r.get("task", {}).get("final")
    }


def read_map_commit(job_dir: str, step: int = 0) -> list[dict] | None:
    """A step's map commit (each task's outputs and stats, in task order); None before it."""
    try:
        data = json.loads(st.for_uri(job_dir).read_bytes(contract.map_commit_uri(job_dir, step)))
    except st.NotFound:
        return None
    return [{"outputs": t["outputs"], "stats": t.get("stats", {})} for t in data["tasks"]]


def write_map_commit(job_dir: str, job_id: str, step: int, records: list[dict]) -> None:
    """A step's map commit: each task's outputs and stats, in task order."""
    outputs = [
        {"index": i, "outputs": r.get("outputs", []), "stats": r.get("stats", {})}
        for i, r in enumerate(records)
    ]
    write_json(contract.map_commit_uri(job_dir, step), {"job_id": job_id, "tasks": outputs})


@dataclass
class Ledger:
    """Invocation statistics by phase (``map``, ``reduce``) and the speculative attempts:
    one driver process's (an entry of the job's ledger), or the sum of the entries."""

    stats: dict[str, InvocationStats]
    speculative_attempts: int = 0

    def __add__(self, other: Ledger) -> Ledger:
        return Ledger({p: self.stats.get(p, InvocationStats()) + other.stats.get(p, InvocationStats())
                       for p in (MAP, REDUCE)}, self.speculative_attempts + other.speculative_attempts)

    @property
    def empty(self) -> bool:
        return not any(s.invocations for s in self.stats.values()) and not self.speculative_attempts


def record_invocations(job_dir: str, ledger: Ledger) -> None:
    """Add one process's entry to the job's invocation ledger (nothing when it launched nothing)."""
    if ledger.empty:
        return
    entry = {"stats": {p: asdict(s) for p, s in ledger.stats.items()},
             "speculative_attempts": ledger.speculative_attempts}
    write_json(contract.ledger_entry_uri(job_dir, uuid.uuid4().hex), entry)


def read_invocations(job_dir: str) -> Ledger:
    """The sum of the job's ledger entries: the invocations every process recorded.

    An entry that is not one this engine writes (corrupt, foreign) is left out, with a
    warning naming it: the ledger is accounting, and it must not stop a commit.
    """
    where = contract.ledger_dir(job_dir)
    store = st.for_uri(where)
    total = Ledger({MAP: InvocationStats(), REDUCE: InvocationStats()})
    for info in store.list(where):
        try:
            entry = json.loads(store.read_bytes(info.uri))
            total += Ledger({p: _ledger_stats(entry["stats"][p]) for p in (MAP, REDUCE) if p in entry["stats"]},
                            _count(entry.get("speculative_attempts", 0)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("invocation ledger entry %s is not one this engine wrote (%s: %s): its invocations are "
                        "not counted", info.uri, type(err).__name__, err)
    return total


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"{value!r} is not a count")
    return value


def _ledger_stats(data: dict) -> InvocationStats:
    stats = InvocationStats(**data)
    for value in (stats.invocations, stats.failures, stats.cold_starts, stats.billed_ms):
        _count(value)
    numbers = [stats.peak_memory_mb, *stats.durations_ms]
    if not isinstance(stats.durations_ms, list) or not all(type(n) in (int, float) and math.isfinite(n)
                                                           for n in numbers):
        raise TypeError("durations and memory must be finite numbers")
    return stats


def read_step_plan(job_dir: str, step: int) -> list[tuple[list[str], int]] | None:
    """A later step's pinned map tasks (runs, bytes); None before it was planned."""
    try:
        pinned = json.loads(st.for_uri(job_dir).read_bytes(contract.step_plan_uri(job_dir, step)))
    except st.NotFound:
        return None
    return [(list(t["runs"]), int(t["bytes"])) for t in pinned["tasks"]]


def write_step_plan(job_dir: str, job_id: str, step: int, tasks: list[tuple[list[str], int]]) -> bool:
    """Pin a later step's map tasks, exclusively: False (nothing written) when another process
    (a concurrent coordinator, a resumed driver) pinned them first."""
    uri = contract.step_plan_uri(job_dir, step)
    data = {"job_id": job_id, "step": step + 1, "tasks": [{"runs": r, "bytes": b} for r, b in tasks]}
    return st.for_uri(uri).write_new(uri, json.dumps(data, sort_keys=True, indent=1).encode("utf-8"))


@dataclass
class PhaseState:
    """How far a phase of a job has got, read from storage alone."""

    phase: str
    done: int
    total: int
    complete: bool
    failure: dict | None = None


def phase_state(job_dir: str, phase: str) -> PhaseState:
    """The state of ``phase`` ("map", or "reduce": the whole job) of the job in ``job_dir``."""
    if phase not in (MAP, REDUCE):
        raise ValueError(f"phase must be 'map' or 'reduce', got {phase!r}")
    manifest = read_manifest(job_dir)
    if manifest is None:
        return PhaseState(phase, 0, 0, False)
    failure = read_failure(job_dir)
    if phase == MAP:
        total = len(manifest["tasks"])
        done = len(committed(job_dir, MAP))
        return PhaseState(phase, done, total, done >= total, failure)
    success = jobdir.read_success(manifest["spec"]["output"]).summary
    complete = bool(success and success["job_id"] == manifest["job_id"])
    total = manifest.get("final_partitions", manifest["spec"]["partitions"])
    return PhaseState(phase, total if complete else 0, total, complete, failure)
