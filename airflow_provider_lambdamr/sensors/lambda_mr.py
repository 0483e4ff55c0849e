"""A sensor that waits for a phase of a LambdaMR job, from its status records."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException

from airflow_provider_lambdamr.engine.jobstate import phase_state
from airflow_provider_lambdamr.hooks.lambda_mr import LambdaMapReduceHook
from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger
from lambda_src import storage as st

if TYPE_CHECKING:
    from airflow.sdk import Context

PHASES = ("map", "reduce")


class LambdaMapReduceSensor(BaseSensorOperator):
    """
    Wait until a phase of a LambdaMR job is complete; fail if the job failed.

    :param job_dir: The job's directory, e.g. ``map_task.output["job_dir"]``. (templated)
    :param phase: ``map`` (every map task committed) or ``reduce`` (the job committed).
    :param deferrable: Wait in the triggerer instead of a worker slot (default:
        ``[operators] default_deferrable``).
    :param aws_conn_id: Airflow AWS connection for ``s3://`` storage.
    """

    template_fields: Sequence[str] = ("job_dir",)
    ui_color = "#fbe3b5"

    def __init__(
        self,
        *,
        job_dir: str,
        phase: str = "map",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if phase not in PHASES:
            raise ValueError(f"Parameter 'phase' must be one of {PHASES}, got {phase!r}")
        self.job_dir = job_dir
        self.phase = phase
        self.deferrable = deferrable
        self.aws_conn_id = aws_conn_id

    def poke(self, context: Context) -> bool:
        job_dir = st.normalize(self.job_dir)
        LambdaMapReduceHook(aws_conn_id=self.aws_conn_id).configure_storage_for(job_dir)
        state = phase_state(job_dir, self.phase)
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
                aws_conn_id=self.aws_conn_id,
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
