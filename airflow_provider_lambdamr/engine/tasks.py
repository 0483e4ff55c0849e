"""A job's tasks as the scheduler runs them: typed specs (their lists stored when an event
would be too large), with what a failure message says about each."""

from __future__ import annotations

import dataclasses
import json

from airflow_provider_lambdamr.engine import jobstate, packaging
from airflow_provider_lambdamr.engine.rounds import PartitionRounds
from airflow_provider_lambdamr.engine.scheduler import Task
from airflow_provider_lambdamr.engine.spec import JobSpec
from lambda_src.contract import JobConfig, MapTask, ReduceTask, TaskSpec
from lambda_src.reader import Segment

#: Events above this size carry their lists through storage (Lambda's async limit is 256 KB).
MAX_INLINE_EVENT = 200 * 1024


class TaskFactory:
    """Builds the tasks of one job: step 1's map tasks, later steps' and reduce tasks."""

    def __init__(self, spec: JobSpec, *, map_only: bool, step_count: int) -> None:
        self.spec = spec
        self.map_only = map_only
        self.step_count = step_count
        self.job = JobConfig(
            ref=packaging.event_ref(spec.job_ref),
            params=spec.params,
            partitions=spec.partitions,
            max_bad_records=spec.max_bad_records,
            vectorized=spec.vectorized,
            max_line_bytes=spec.max_line_bytes,
            output_format=spec.output_format,
        )

    def use_plan(self, manifest: dict) -> dict:
        """Take the strategy the plan pinned for a Join step (every task's event carries it)."""
        join = manifest["plan"].get("join") or {}
        self.job = dataclasses.replace(self.job, broadcast=join.get("broadcast"))
        return manifest

    def map_task(self, index: int, count: int, splits: list[dict]) -> Task:
        segs = [Segment.from_dict(s) for s in splits]
        spec = self._inline_or_stored(MapTask(
            self.spec.job_id, self.spec.job_dir, self.job, index=index, count=count, items=splits,
            output=self.spec.output if self.map_only else None,
        ))
        if len(segs) == 1:
            input_desc = segs[0].describe()
        else:
            input_desc = f"{len(segs)} splits: {segs[0].describe()}, ..., {segs[-1].describe()}"
        return self._task(spec, input_desc, bytes=sum(s.end - s.start for s in segs), index=index)

    def later_map_task(self, step: int, index: int, count: int, runs: list[str], size: int) -> Task:
        spec = self._inline_or_stored(MapTask(self.spec.job_id, self.spec.job_dir, self.job, step=step,
                                              index=index, count=count, items=runs))
        return self._task(spec, f"{len(runs)} result runs of step {step}", bytes=size, index=index)

    def reduce_task(self, step: int, rounds: PartitionRounds, group: int, inputs: list[str]) -> Task:
        final, p = rounds.final, rounds.partition
        spec = self._inline_or_stored(ReduceTask(
            self.spec.job_id, self.spec.job_dir, self.job, step=step, round=rounds.round, partition=p,
            group=group, final=final, items=inputs,
            output=self.spec.output if final and step == self.step_count - 1 else None,
        ))
        return self._task(spec, f"{len(inputs)} runs of partition {p}", partition=p, group=group)

    @staticmethod
    def _task(spec: TaskSpec, input_desc: str, bytes: int = 0, **meta: int) -> Task:
        return Task(key=spec.status_key(), spec=spec, describe=spec.describe(), input_desc=input_desc,
                    bytes=bytes, meta=meta)

    @staticmethod
    def _inline_or_stored(spec: TaskSpec) -> TaskSpec:
        """The spec, its list stored under the job directory when the event would be too large."""
        if len(json.dumps(spec.to_event())) <= MAX_INLINE_EVENT:
            return spec
        uri = spec.stored_list_uri()
        jobstate.write_json(uri, spec.items)  # type: ignore[arg-type]
        return spec.with_stored_list(uri)
