"""A trigger that waits, without a worker slot, for a phase of a LambdaMR job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_provider_lambdamr.hooks.job_state import JobStateReader


class LambdaMapReducePhaseTrigger(BaseTrigger):
    """
    Poll a job's status records until a phase completes, fails, or the deadline passes.

    Each trigger reads through a storage client of its own, made from its connection
    (``LambdaMapReduceHook.job_state_reader``): triggers of different connections in one
    triggerer never share one.

    :param job_dir: The job's directory.
    :param phase: ``map`` (all map tasks committed) or ``reduce`` (the job committed).
    :param poll_interval: Seconds between checks.
    :param timeout: Seconds until an error event; the trigger enforces it itself.
    :param aws_conn_id: Airflow AWS connection for ``s3://`` storage.
    :param region_name: AWS region; overrides the connection's.
    :param verify: Whether to verify TLS certificates, or a CA bundle path.
    :param botocore_config: botocore client configuration, as a dict.
    """

    def __init__(
        self,
        *,
        job_dir: str,
        phase: str,
        poll_interval: float = 10.0,
        timeout: float = 3600.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.job_dir = job_dir
        self.phase = phase
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_dir": self.job_dir,
                "phase": self.phase,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
            },
        )

    def reader(self) -> JobStateReader:
        """This trigger's reader of the job state, with a client of its own."""
        from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook

        return LambdaMapReduceHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify,
                                   botocore_config=self.botocore_config).job_state_reader()

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
        reader = self.reader()
        while True:
            try:
                event = await self._check(reader)
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
