"""A trigger that waits, without a worker slot, for a phase of a LambdaMR job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class LambdaMapReducePhaseTrigger(BaseTrigger):
    """
    Poll a job's status records until a phase completes, fails, or the deadline passes.

    Storage calls are blocking (boto3), so they run in a thread, off the event loop.

    :param job_dir: The job's directory.
    :param phase: ``map`` (all map tasks committed) or ``reduce`` (the job committed).
    :param poll_interval: Seconds between checks.
    :param timeout: Seconds until an error event; the trigger enforces it itself.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` storage.
    """

    def __init__(
        self,
        *,
        job_dir: str,
        phase: str,
        poll_interval: float = 10.0,
        timeout: float = 3600.0,
        aws_conn_id: str | None = "aws_default",
    ) -> None:
        super().__init__()
        self.job_dir = job_dir
        self.phase = phase
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.aws_conn_id = aws_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_dir": self.job_dir,
                "phase": self.phase,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "aws_conn_id": self.aws_conn_id,
            },
        )

    def _check(self) -> dict | None:
        from airflow_provider_lambdamr.engine.jobstate import phase_state
        from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook
        from lambda_src import storage as st

        LambdaMapReduceHook(aws_conn_id=self.aws_conn_id).configure_storage_for(st.normalize(self.job_dir))
        state = phase_state(st.normalize(self.job_dir), self.phase)
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
        while True:
            try:
                event = await asyncio.to_thread(self._check)
            except Exception as err:
                event = {"status": "error", "message": f"{type(err).__name__}: {err}",
                         "job_dir": self.job_dir, "phase": self.phase}
            if event is not None:
                yield TriggerEvent(event)
                return
            if time.monotonic() >= deadline:
                yield TriggerEvent({
                    "status": "timeout", "job_dir": self.job_dir, "phase": self.phase,
                    "message": f"the {self.phase} phase of {self.job_dir} did not finish within "
                               f"{self.timeout:.0f} seconds",
                })
                return
            await asyncio.sleep(self.poll_interval)
