"""A sensor that waits for a phase of a LambdaMR job, from its status records."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException

from airflow_provider_lambdamr.hooks.job_state import PHASES
from airflow_provider_lambdamr.operators.base import (
    LambdaMapReduceHookMixin,
    documents_connection,
    lambdamr_template_fields,
)
from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger
from lambda_src import storage as st

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_lambdamr.engine.driver import PhaseState


@documents_connection
class LambdaMapReduceSensor(LambdaMapReduceHookMixin, BaseSensorOperator):
    """
    Wait until a phase of a LambdaMR job is complete; fail if the job failed.

    The sensor only waits: it never retries a task or starts a round. A job is moved on by
    its map and reduce operators (deferrable or not); see ``wait_for_completion`` there.

    :param job_dir: The job's directory, e.g. ``map_task.output["job_dir"]``. (templated)
    :param phase: ``map`` (every map task committed) or ``reduce`` (the job committed).
    :param deferrable: Wait in the triggerer instead of a worker slot (default:
        ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = lambdamr_template_fields("job_dir")
    ui_color = "#fbe3b5"

    def __init__(
        self,
        *,
        job_dir: str,
        phase: str = "map",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if phase not in PHASES:
            raise ValueError(f"Parameter 'phase' must be one of {PHASES}, got {phase!r}")
        self.job_dir = job_dir
        self.phase = phase
        self.deferrable = deferrable

    def poke(self, context: Context) -> bool:
        async def read() -> PhaseState:
            async with self.hook.job_state_reader() as reader:
                return await reader.phase_state(st.normalize(self.job_dir), self.phase)

        state = asyncio.run(read())
        if state.failure:
            raise AirflowException(f"LambdaMR job failed: {state.failure.get('message')}")
        self.log.info("%s phase: %d/%d tasks", self.phase, state.done, state.total)
        return state.complete

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(
            trigger=LambdaMapReducePhaseTrigger(
                job_dir=self.job_dir,
                phase=self.phase,
                poll_interval=self.poke_interval,
                timeout=self.timeout,
                **self.hook_parameters,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict | None = None) -> None:
        if not event:
            raise AirflowException("LambdaMR sensor resumed without a trigger event")
        if event.get("status") != "success":
            raise AirflowException(f"LambdaMR job: {event.get('message', event)}")
        self.log.info("%s phase of %s is complete", event.get("phase"), event.get("job_dir"))
