"""A job's state as storage holds it: manifest, pinned plans, status records, map commits.

Everything here reads (or, for the driver's own records, writes) the job directory and
nothing else, so any process can rebuild where a job stands: the driver resuming a phase,
a deferrable operator continuing in another worker, a sensor or a trigger waiting for a
phase (they import ``phase_state`` from here).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from airflow_provider_lambdamr.engine import jobdir
from lambda_src import contract
from lambda_src import storage as st
from lambda_src.contract import MAP, REDUCE


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


def write_map_commit(job_dir: str, job_id: str, step: int, records: list[dict],
                     invocations: dict | None = None) -> None:
    """A step's map commit; ``invocations``: the map invocations its driver made (statistics),
    for a commit in another process (a separate reduce task) to add up."""
    outputs = [
        {"index": i, "outputs": r.get("outputs", []), "stats": r.get("stats", {})}
        for i, r in enumerate(records)
    ]
    data = {"job_id": job_id, "tasks": outputs}
    if invocations is not None:
        data["invocations"] = invocations
    write_json(contract.map_commit_uri(job_dir, step), data)


def read_map_invocations(job_dir: str, step: int = 0) -> dict | None:
    """The map invocation statistics a step's map commit recorded, if any."""
    try:
        data = json.loads(st.for_uri(job_dir).read_bytes(contract.map_commit_uri(job_dir, step)))
    except st.NotFound:
        return None
    return data.get("invocations")


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
