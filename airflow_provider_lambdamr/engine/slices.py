"""A job's phases in shares, one per Airflow task instance: the expanded DAG's engine.

The Airflow task group of ``airflow_provider_lambdamr.task_group`` shows the MapReduce:
the plan, the map tasks as mapped task instances (each runs a batch of map tasks), each
reduce round as a task mapped over batches of that round's groups, and the commit. Each
function here runs one share through the driver and its scheduler, on the status records
in storage: a share skips what already committed, so clearing one task instance re-runs
only what its share has not finished.

The number of rounds is fixed when the DAG is parsed (``max_rounds``); a round a job does
not need has no groups (``reduce_round_batches`` is empty) and its task is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from airflow_provider_lambdamr.engine.driver import Driver
from airflow_provider_lambdamr.engine.failures import JobFailed

T = TypeVar("T")


def batches(items: Sequence[T], max_batches: int) -> list[list[T]]:
    """``items`` cut into at most ``max_batches`` contiguous batches of near-equal size."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    count = min(len(items), max_batches)
    out, start = [], 0
    for b in range(count):
        end = start + len(items) // count + (1 if b < len(items) % count else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def max_rounds(max_map_tasks: int, fan_in: int) -> int:
    """The most reduce rounds a step of at most ``max_map_tasks`` map tasks needs.

    A partition gets at most one run per map task; rounds merge groups of ``fan_in`` runs
    until at most ``fan_in`` remain, which the final round reduces.
    """
    if max_map_tasks < 1 or fan_in < 2:
        raise ValueError(f"max_map_tasks must be at least 1 and fan_in at least 2, got {max_map_tasks} and {fan_in}")
    rounds, runs = 1, max_map_tasks
    while runs > fan_in:
        runs = -(-runs // fan_in)
        rounds += 1
    return rounds


def map_batches(driver: Driver, step: int, max_batches: int, max_map_tasks: int) -> list[list[int]]:
    """A step's map task indexes in at most ``max_batches`` batches (a later step is planned here).

    Fails when the step has more map tasks than ``max_map_tasks``, the bound the DAG's
    number of reduce rounds was built for.
    """
    count = driver.map_task_count(step)
    if count > max_map_tasks:
        raise JobFailed(
            f"job {driver.spec.job_id} has {count} map tasks in step {step + 1}, more than the "
            f"max_map_tasks={max_map_tasks} its DAG was built for (its reduce rounds may not "
            f"suffice): raise max_map_tasks, or split_size / max_files_per_task",
            phase="prepare", resumable=False,
        )
    return batches(range(count), max_batches)


def run_map_batch(driver: Driver, step: int, indexes: Sequence[int]) -> int:
    """Run a batch of a step's map tasks (those not committed); how many ran."""
    return driver.run_share(driver.map_share(step, indexes))


def map_commit(driver: Driver, step: int) -> int:
    """Commit a step's map phase once all its map tasks committed; its task count."""
    return len(driver.commit_map(step))


def reduce_round_batches(driver: Driver, step: int, rnd: int, max_batches: int) -> list[list[str]]:
    """The groups (status keys) of reduce round ``rnd`` still to run, in at most ``max_batches``
    batches; empty when the job does not need that round."""
    return batches([t.key for t in driver.reduce_round_tasks(step, rnd)], max_batches)


def run_reduce_groups(driver: Driver, step: int, rnd: int, groups: Sequence[str]) -> int:
    """Run those groups of reduce round ``rnd`` that have not committed; how many ran."""
    return driver.run_share(driver.reduce_share(step, rnd, groups))
