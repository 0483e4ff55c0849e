"""Triggers that wait, without a worker slot, for a LambdaMR job: a phase, or a wave of invocations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_lambdamr.hooks.job_state import JobStateReader


def cancel_invocations(runtime: str, request_ids: Sequence[str], log: logging.Logger | Any) -> None:
    """Cancel invocations in flight where ``runtime`` can: the local function service
    cancels them; Lambda cannot cancel an asynchronous invocation (logged)."""
    if not request_ids:
        return
    if runtime != "service":
        log.warning("runtime %s cannot cancel invocations: %d in flight run to completion", runtime,
                    len(request_ids))
        return
    from airflow_provider_lambdamr.engine.runtimes import service

    with service.connect(start=False) as client:
        cancelled = sum(bool(client.request("cancel", request_id=rid).get("cancelled")) for rid in request_ids)
    log.info("cancelled %d of %d invocations in flight on the lambdamr service", cancelled, len(request_ids))


class _JobStateTrigger(BaseTrigger):
    """
    A trigger reading a job's records through a storage client of its own, made from its
    connection (``LambdaMapReduceHook.job_state_reader``: an aiobotocore client from the
    amazon provider's ``get_async_conn``, closed when the trigger ends): triggers of
    different connections in one triggerer never share one.
    """

    def __init__(
        self,
        *,
        job_dir: str,
        poll_interval: float = 10.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.job_dir = job_dir
        self.poll_interval = poll_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def _kwargs(self) -> dict[str, Any]:
        """The keywords ``serialize`` gives back: the connection's and the job's."""
        return {"job_dir": self.job_dir, "poll_interval": self.poll_interval, "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name, "verify": self.verify, "botocore_config": self.botocore_config}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", self._kwargs()

    def reader(self) -> JobStateReader:
        """This trigger's reader of the job state, with a client of its own."""
        from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook

        return LambdaMapReduceHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify,
                                   botocore_config=self.botocore_config).job_state_reader()


class LambdaMapReducePhaseTrigger(_JobStateTrigger):
    """
    Poll a job's status records until a phase completes, fails, or the deadline passes.

    :param job_dir: The job's directory.
    :param phase: ``map`` (all map tasks committed) or ``reduce`` (the job committed).
    :param poll_interval: Seconds between checks.
    :param timeout: Seconds until an error event; the trigger enforces it itself.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` storage.
    :param region_name: AWS region; overrides the connection's.
    :param verify: Whether to verify TLS certificates, or a CA bundle path.
    :param botocore_config: botocore client configuration, as a dict.
    """

    def __init__(self, *, phase: str, timeout: float = 3600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phase = phase
        self.timeout = timeout

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "phase": self.phase, "timeout": self.timeout}

    async def _check(self, reader: JobStateReader) -> dict | None:
        from lambda_src import storage as st

        state = await reader.phase_state(st.normalize(self.job_dir), self.phase)
        if state.failure:
            return {"status": "error", "message": state.failure.get("message", "the job failed"),
                    "job_dir": self.job_dir, "phase": self.phase}
        if state.complete:
            return {"status": "success", "job_dir": self.job_dir, "phase": self.phase,
                    "done": state.done, "total": state.total}
        self.log.info("%s phase of %s: %d/%d tasks", self.phase, self.job_dir, state.done, state.total)
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        async with self.reader() as reader:
            while True:
                try:
                    event = await self._check(reader)
                except Exception as err:
                    event = {"status": "error", "message": f"{type(err).__name__}: {err}",
                             "job_dir": self.job_dir, "phase": self.phase}
                if event is None and time.monotonic() >= deadline:
                    event = {"status": "timeout", "job_dir": self.job_dir, "phase": self.phase,
                             "message": f"the {self.phase} phase of {self.job_dir} did not finish within "
                                        f"{self.timeout:.0f} seconds"}
                if event is not None:
                    break
                await asyncio.sleep(self.poll_interval)
        yield TriggerEvent(event)


class LambdaMapReduceWaveTrigger(_JobStateTrigger):
    """
    Wait for the next thing a deferred LambdaMR operator must act on: an invocation in
    flight ended (its task committed, or its attempt left a failed-attempt record), or
    ``wake_at`` passed (a straggler's twin is due, the job's deadline, or an invocation
    without a record may be lost). The event carries ``in_flight`` and ``budget_base`` back
    to the operator, whose ``Driver.advance`` rebuilds the job from storage with them.

    :param job_dir: The job's directory.
    :param job_id: The job's id (for messages).
    :param task_ref: The Airflow task that deferred, ``<dag_id>.<task_id>`` (for messages).
    :param in_flight: The invocations in flight: ``{request_id, key, attempt, started_at}``.
    :param wake_at: Epoch seconds at which to wake without a record; None: only records.
    :param budget_base: Passed through to the operator (``Driver.restart_after_failure``).
    :param runtime: The job's runtime (``service`` or ``aws``).
    :param cancel_on_kill: Cancel the invocations in flight when a user kills the deferred task.
    :param poll_interval: Seconds between listings of the status records.
    """

    def __init__(self, *, job_id: str, task_ref: str, in_flight: list[dict], wake_at: float | None = None,
                 budget_base: dict[str, int] | None = None, runtime: str = "service",
                 cancel_on_kill: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.task_ref = task_ref
        self.in_flight = in_flight
        self.wake_at = wake_at
        self.budget_base = budget_base or {}
        self.runtime = runtime
        self.cancel_on_kill = cancel_on_kill

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "job_id": self.job_id, "task_ref": self.task_ref, "in_flight": self.in_flight,
                "wake_at": self.wake_at, "budget_base": self.budget_base, "runtime": self.runtime,
                "cancel_on_kill": self.cancel_on_kill}

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel what is in flight (``cancel_on_kill``)."""
        if self.cancel_on_kill:
            await asyncio.to_thread(cancel_invocations, self.runtime,
                                    [f["request_id"] for f in self.in_flight], self.log)

    def _event(self, status: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "job_id": self.job_id, "job_dir": self.job_dir,
                             "in_flight": self.in_flight, "budget_base": self.budget_base, **fields})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from lambda_src import storage as st

        awaited = [(f["key"], int(f["attempt"])) for f in self.in_flight]
        try:
            job_dir = st.normalize(self.job_dir)
            async with self.reader() as reader:
                while True:
                    # Sleep first: what was just launched has not ended yet, and an event right
                    # after the deferral races the scheduler's handling of the task's defer-exit
                    # (Airflow 3.3 fails the task then: apache/airflow#67287, #72716).
                    pause = self.poll_interval
                    if self.wake_at is not None:
                        pause = max(0.0, min(pause, self.wake_at - time.time()))
                    await asyncio.sleep(pause)
                    settled = await reader.settled(job_dir, awaited) if awaited else []
                    if settled:
                        event = self._event("ready", settled=settled)
                        break
                    if self.wake_at is not None and time.time() >= self.wake_at:
                        event = self._event("ready", woke_at=self.wake_at)
                        break
                    self.log.info("job %s: %d invocations in flight", self.job_id, len(awaited))
        except Exception as err:
            event = self._event("error", message=(
                f"watching LambdaMR job {self.job_id} ({self.job_dir}) for task {self.task_ref} failed: "
                f"{type(err).__name__}: {err}"))
        yield event
