"""A LambdaMR job as a task group whose Graph and Grid views show the MapReduce.

``lambdamr_task_group`` builds, in one call: ``plan`` (check the output, plan, deploy), the
map fan-out as one mapped task (each instance runs a batch of map tasks, at most
``max_parallel_instances`` instances however many splits), each reduce round as a task
mapped over batches of that round's groups (as many rounds as ``max_map_tasks`` and
``fan_in`` can need; a round the job does not need is skipped), a task group per step of
a multi-step job, and ``commit``, which writes ``_SUCCESS`` and emits the result Asset as
``LambdaReduceOperator`` does (it is one). Clearing one mapped instance re-runs only its
share: the tasks of its batch that have no status record.

The compact form (``LambdaMapOperator`` and ``LambdaReduceOperator``) runs the same engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.sdk import TaskGroup, TriggerRule, XComArg
from airflow.sdk.exceptions import AirflowException

from airflow_provider_lambdamr.engine import slices
from airflow_provider_lambdamr.engine.driver import Driver, JobWaiting, Share
from airflow_provider_lambdamr.engine.jobcode import describe as describe_job
from airflow_provider_lambdamr.engine.scheduler import InFlight
from airflow_provider_lambdamr.engine.spec import JobSpec, load_spec, resolve_job_ref
from airflow_provider_lambdamr.operators.base import documents_connection, lambdamr_template_fields
from airflow_provider_lambdamr.operators.lambda_mr import (
    LambdaMapOperator,
    LambdaReduceOperator,
    _declare_links,
    _LambdaMapReduceBase,
    encode_job_params,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The keywords every task of the group takes: the connection's, and how a task waits.
_SHARED = ("aws_conn_id", "region_name", "verify", "botocore_config", "deferrable", "poll_interval",
           "cancel_on_kill")


@documents_connection
class LambdaMapReducePlanOperator(LambdaMapOperator):
    """
    Plan a LambdaMR job and deploy its code; returns its map tasks in at most
    ``max_instances`` batches, for a mapped map task to expand over, and pushes the job's
    ``job_dir`` (XCom key, like ``LambdaMapOperator``'s), ``job_id`` and ``output``.

    Takes ``LambdaMapOperator``'s job options. When the job id already committed (and
    ``recompute`` is off) there is nothing to map: the batches are empty.

    :param max_instances: The most batches (mapped map task instances).
    :param max_map_tasks: The most map tasks a step may have (the DAG's reduce rounds are
        built for it); a job planning more fails, naming the options that shrink it.
    """

    ui_color = "#f5b26b"

    def __init__(self, *, max_instances: int = 32, max_map_tasks: int = 5000, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", False)  # Airflow maps over a task's return value only
        super().__init__(**kwargs)
        self.max_instances = max_instances
        self.max_map_tasks = max_map_tasks

    def execute(self, context: Context) -> list[list[int]]:
        _declare_links(context, self.operator_extra_links)
        spec = self.build_spec(context)
        for key, value in (("job_dir", spec.job_dir), ("job_id", spec.job_id), ("output", spec.output)):
            context["ti"].xcom_push(key=key, value=value)

        def phase(driver: Driver) -> list[list[int]]:
            done = driver.completed_summary()
            batches: list[list[int]] = []
            if done is None or not self._keeps_committed(spec, done):
                with driver.tracer:
                    driver.prepare()
                batches = slices.map_batches(driver, 0, self.max_instances, self.max_map_tasks)
                self.log.info("%d map tasks in %d batches", sum(map(len, batches)), len(batches))
            return batches

        return self._run(spec, phase, context)


class _ShareOperator(_LambdaMapReduceBase):
    """A task running one share of a planned job (the spec is the one its manifest recorded).

    Does nothing once the job committed (and the plan did not recompute it)."""

    template_fields: Sequence[str] = lambdamr_template_fields("job_dir")
    ui_color = "#f7d08a"

    def __init__(
        self,
        *,
        job_dir: str,
        step: int = 0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
        **kwargs: Any,
    ) -> None:
        # The connection keywords are named here too: ``partial()`` checks its keywords against
        # the ``__init__`` of BaseOperator subclasses only, and the mixin taking them is not one.
        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name, verify=verify,
                         botocore_config=botocore_config, **kwargs)
        self.job_dir = job_dir
        self.step = step

    def share(self, driver: Driver) -> Any:
        raise NotImplementedError

    def _spec(self) -> JobSpec:
        try:
            return load_spec(self.job_dir)
        except ValueError as err:
            raise AirflowException(f"LambdaMR task {self.task_id}: {err}") from None

    def _committed(self, spec: JobSpec, driver: Driver) -> bool:
        done = driver.completed_summary()
        if done is not None:
            self.log.info("job %s already committed at %s: nothing to do", spec.job_id, done.get("finished_at"))
        return done is not None

    def execute(self, context: Context) -> Any:
        spec = self._spec()
        # committed: nothing to map over (a round plan's mapped task is then skipped)
        return self._run(spec, lambda driver: [] if self._committed(spec, driver) else self.share(driver), context)


class _LaunchingShareOperator(_ShareOperator):
    """A share that invokes functions (a batch of map tasks, a batch of a round's groups).

    Deferrable like ``LambdaMapOperator``: it launches its tasks' invocations, defers to a
    trigger watching their status records, and resumes only to retry failed or lost tasks,
    launch speculative twins or refill the concurrency window, until every task of the share
    committed. Blocking otherwise: the invocations run to their end inside the task.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.wait_for_completion:
            raise ValueError(f"{type(self).__name__} {self.task_id}: wait_for_completion=False would leave its "
                             f"share without a driver (nothing else retries its failed tasks); pass "
                             f"deferrable=True to free the worker slot while it waits")

    def share_of(self, driver: Driver) -> Share:
        """The share's tasks that have not committed."""
        raise NotImplementedError

    def share(self, driver: Driver) -> int:
        """Run the share to its end (not deferrable): how many of its tasks ran."""
        share = self.share_of(driver)
        ran = driver.run_share(share)
        self.log.info("%s: ran %d tasks of this share (the rest had committed)", share.phase, ran)
        return ran

    def execute(self, context: Context) -> int | None:
        """How many of the share's tasks ran (not deferrable); None when it deferred; ``[]``
        when the job had committed."""
        if not self.deferrable:
            return super().execute(context)
        spec = self._spec()
        self._start(context, spec, lambda driver: True if self._committed(spec, driver) else None)

    def _advance(self, driver: Driver, in_flight: Sequence[InFlight], budget_base: Mapping[str, int] | None, *,
                 first: bool) -> tuple[JobWaiting, dict[str, int]]:
        share = self.share_of(driver)
        if first:
            self.log.info("%s: launching the %d tasks of this share that have not committed",
                          share.phase, len(share.tasks))
        return driver.advance_share(share, in_flight=in_flight, budget_base=None if first else dict(budget_base or {}))

    def _finished(self, context: Context, spec: JobSpec, waiting: JobWaiting) -> None:
        self.log.info("%s: every task of this share committed", waiting.phase)

    def _resume_spec(self, context: Context) -> JobSpec:
        return self._spec()


class LambdaMapBatchOperator(_LaunchingShareOperator):
    """Run a batch of a step's map tasks (``indexes``); those already committed are skipped.

    :param job_dir: The job's directory. (templated)
    :param step: The step (0 is the first).
    :param indexes: The map task indexes of this batch (expand over the plan's batches).
    """

    ui_color = "#f5b26b"

    def __init__(self, *, indexes: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.indexes = indexes

    def share_of(self, driver: Driver) -> Share:
        return driver.map_share(self.step, list(self.indexes))


class LambdaMapCommitOperator(_ShareOperator):
    """Commit a step's map phase once all its map tasks committed."""

    def share(self, driver: Driver) -> int:
        return slices.map_commit(driver, self.step)


class LambdaStepPlanOperator(_ShareOperator):
    """Plan a later step's map tasks (the previous step's results); return them in batches.

    :param max_instances: The most batches (mapped map task instances).
    :param max_map_tasks: The most map tasks the step may have.
    """

    def __init__(self, *, max_instances: int = 32, max_map_tasks: int = 5000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_instances = max_instances
        self.max_map_tasks = max_map_tasks

    def share(self, driver: Driver) -> list[list[int]]:
        return slices.map_batches(driver, self.step, self.max_instances, self.max_map_tasks)


class LambdaReduceRoundPlanOperator(_ShareOperator):
    """The groups of a step's reduce round still to run, in at most ``max_instances`` batches;
    empty (the round's task is then skipped) when the job does not need the round.

    :param round: The round (1 is the first).
    """

    def __init__(self, *, round: int, max_instances: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round = round
        self.max_instances = max_instances

    def share(self, driver: Driver) -> list[list[str]]:
        groups = slices.reduce_round_batches(driver, self.step, self.round, self.max_instances)
        self.log.info("round %d: %d groups in %d batches", self.round, sum(map(len, groups)), len(groups))
        return groups


class LambdaReduceGroupsOperator(_LaunchingShareOperator):
    """Run a batch of a reduce round's groups (status keys); those already committed are skipped.

    :param round: The round (1 is the first).
    :param groups: The groups' status keys (expand over the round plan's batches).
    """

    def __init__(self, *, round: int, groups: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round = round
        self.groups = groups

    def share_of(self, driver: Driver) -> Share:
        return driver.reduce_share(self.step, self.round, list(self.groups))


@dataclass(frozen=True)
class LambdaMapReduceTasks:
    """What ``lambdamr_task_group`` built: the group (for dependencies) and its ends."""

    group: TaskGroup
    plan: LambdaMapReducePlanOperator
    commit: LambdaReduceOperator

    @property
    def job_dir(self) -> XComArg:
        return self.plan.output["job_dir"]

    @property
    def result(self) -> XComArg:
        """The commit's result summary (``LambdaReduceOperator``'s)."""
        return self.commit.output


def lambdamr_task_group(
    group_id: str,
    *,
    job: str,
    inputs: Any,
    output_uri: Any,
    job_params: Mapping[str, Any] | None = None,
    fan_in: int = 16,
    max_parallel_instances: int = 32,
    max_map_tasks: int = 5000,
    result_asset: str | None = None,
    **options: Any,
) -> LambdaMapReduceTasks:
    """
    A LambdaMR job as a task group that shows the MapReduce (see the module's docstring).

    :param group_id: The task group's id.
    :param job: A built-in job name or ``package.module:ClassName``; its ``steps()`` (with
        ``job_params``) give a task group per step when there are several.
    :param inputs: As ``LambdaMapOperator``'s (templated).
    :param output_uri: As ``LambdaMapOperator``'s (templated).
    :param job_params: As ``LambdaMapOperator``'s.
    :param fan_in: Runs merged per reduce task; with ``max_map_tasks`` it fixes the number of
        round tasks when the DAG is parsed, so it is not templated.
    :param max_parallel_instances: The most instances of each mapped task.
    :param max_map_tasks: The most map tasks a step may have; a job planning more fails.
    :param result_asset: As ``LambdaReduceOperator``'s.
    :param options: Every other ``LambdaMapOperator`` keyword (job and runtime options, the
        connection's ``aws_conn_id``, ``region_name``, ``verify``, ``botocore_config``). The
        connection and ``deferrable``, ``poll_interval``, ``cancel_on_kill`` go to every task:
        with ``deferrable=True`` each map batch and each round's batch of groups launches its
        invocations and defers, so no worker slot waits on functions.
    """
    steps = describe_job(resolve_job_ref(job), encode_job_params(job_params)).steps
    if not steps[0].reducer:
        # the commit is LambdaReduceOperator's, which reduces; a map-only job has nothing to reduce
        raise ValueError(f"lambdamr_task_group {group_id!r}: job {job!r} is map-only (no reducer), which "
                         f"the task group does not run yet; run it with `lambdamr run`")
    rounds = slices.max_rounds(max_map_tasks, fan_in)
    shared = {k: options[k] for k in _SHARED if k in options}
    with TaskGroup(group_id) as group:
        plan = LambdaMapReducePlanOperator(
            task_id="plan", job=job, inputs=inputs, output_uri=output_uri, job_params=job_params, fan_in=fan_in,
            max_instances=max_parallel_instances, max_map_tasks=max_map_tasks, **options)
        job_dir = plan.output["job_dir"]

        def share(cls: type, task_id: str, step: int, **kwargs: Any) -> Any:
            return cls(task_id=task_id, job_dir=job_dir, step=step, trigger_rule=TriggerRule.NONE_FAILED,
                       **shared, **kwargs)

        def mapped(cls: type, task_id: str, step: int, expand: dict[str, Any], **kwargs: Any) -> Any:
            return cls.partial(task_id=task_id, job_dir=job_dir, step=step, **shared, **kwargs).expand(**expand)

        last: Any = plan
        for step in range(len(steps)):
            with _step_group(step, len(steps)):
                if step == 0:
                    batches: Any = plan.output
                else:
                    step_plan = share(LambdaStepPlanOperator, "plan_map", step, max_instances=max_parallel_instances,
                                      max_map_tasks=max_map_tasks)
                    last >> step_plan
                    last = batches = step_plan.output
                map_batch = mapped(LambdaMapBatchOperator, "map", step, {"indexes": batches})
                last >> map_batch
                commit_map = share(LambdaMapCommitOperator, "map_commit", step)
                map_batch >> commit_map
                last = commit_map
                for rnd in range(1, rounds + 1):
                    groups = share(LambdaReduceRoundPlanOperator, f"round_{rnd}_groups", step, round=rnd,
                                   max_instances=max_parallel_instances)
                    run = mapped(LambdaReduceGroupsOperator, f"round_{rnd}", step, {"groups": groups.output},
                                 round=rnd)
                    last >> groups >> run
                    last = run
        commit = LambdaReduceOperator(task_id="commit", job_dir=job_dir, result_asset=result_asset,
                                      trigger_rule=TriggerRule.NONE_FAILED, **shared)
        last >> commit
    return LambdaMapReduceTasks(group, plan, commit)


def _step_group(step: int, count: int) -> Any:
    """A task group per step of a multi-step job; nothing for a one-step job."""
    return TaskGroup(f"step_{step + 1}") if count > 1 else contextlib.nullcontext()

