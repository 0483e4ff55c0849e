"""What the driver knows of a job's code before it runs: its steps and named inputs.

A Python job is imported (``lambda_src.task.load_job_class``); a JavaScript job is asked by
Node.js (``lambda_src/nodejs/describe.mjs``), since the driver cannot import it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_lambdamr.engine import packaging


@dataclass(frozen=True)
class StepShape:
    partitions: int | None
    reducer: bool


@dataclass(frozen=True)
class JobShape:
    """A job's named inputs (None: any) and steps, as the planner needs them."""

    input_names: tuple[str, ...] | None
    steps: tuple[StepShape, ...]

    @property
    def map_only(self) -> bool:
        return len(self.steps) == 1 and not self.steps[0].reducer


class JobCodeError(ValueError):
    """The job's code cannot be loaded as a job."""


def describe(job_ref: str, params: dict[str, str]) -> JobShape:
    """The shape of the job ``job_ref`` run with ``params``."""
    if packaging.language_of(job_ref) == packaging.NODEJS:
        return _describe_node(job_ref, params)
    from lambda_src.task import load_job_class

    cls = load_job_class(job_ref)
    steps = cls(params).checked_steps()
    return JobShape(
        input_names=tuple(cls.input_names) if cls.input_names is not None else None,
        steps=tuple(StepShape(s.partitions, s.reducer is not None) for s in steps),
    )


def _describe_node(module: str, params: dict[str, str]) -> JobShape:
    from airflow_provider_lambdamr.engine.runtimes.local import node_executable

    script = Path(packaging.NODE_HANDLERS_DIR) / "describe.mjs"
    try:
        res = subprocess.run([node_executable(), str(script), module, json.dumps(params)],
                             capture_output=True, text=True, timeout=120, check=False)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as err:
        raise JobCodeError(f"cannot load the JavaScript job {module}: {err}") from err
    if res.returncode != 0:
        raise JobCodeError(f"cannot load the JavaScript job {module}: {res.stderr.strip() or f'exit status {res.returncode}'}")
    shape = json.loads(res.stdout)
    names = shape["input_names"]
    return JobShape(
        input_names=tuple(names) if names is not None else None,
        steps=tuple(StepShape(s["partitions"], bool(s["reducer"])) for s in shape["steps"]),
    )
