"""The map operator in coordinator mode: it launches the job, and one wait (deferred to the
triggerer, or in the worker) covers the whole job, which its coordinator commits."""

from __future__ import annotations

import pytest

from tests.airflow.test_deferral import JOB, _context, _first_event, _map_op, _words
from tests.helpers import read_counts
from tests.integration.test_service import svc_dir  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("svc_dir")


def test_a_deferred_map_task_waits_for_the_whole_job_its_coordinator_commits(tmp_path, fixture_jobs_path):
    from airflow.sdk.exceptions import TaskDeferred
    from airflow.sdk.module_loading import import_string

    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    inputs, expected = _words(tmp_path)
    make = _map_op(tmp_path, inputs, coordinator=True, job_params={"fail_once": str(tmp_path / "once")})
    with pytest.raises(TaskDeferred) as deferred:
        make().execute(_context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, LambdaMapReducePhaseTrigger) and trigger.phase == "reduce"
    assert deferred.value.method_name == "execute_coordinated_complete"
    classpath, kwargs = trigger.serialize()
    event = _first_event(import_string(classpath)(**kwargs))  # no task runs meanwhile: the coordinator does
    summary = make().execute_coordinated_complete(_context(), event)
    assert read_counts(str(tmp_path / "out")) == expected
    assert summary["job_id"] == kwargs["job_dir"].rsplit("/", 1)[1] and summary["tasks"]["reduce"] >= 2
    assert (tmp_path / "once").exists(), "the injected failure did not fire (the coordinator retried it)"


def test_a_map_task_that_does_not_defer_waits_in_the_worker_and_a_failed_job_fails_it(tmp_path, fixture_jobs_path):
    from airflow.sdk.exceptions import AirflowException

    inputs, expected = _words(tmp_path)
    summary = _map_op(tmp_path, inputs, coordinator=True, deferrable=False)().execute(_context())
    assert read_counts(str(tmp_path / "out")) == expected and summary["output"] == f"file://{tmp_path}/out"
    failing = _map_op(tmp_path, inputs, coordinator=True, deferrable=False, output_uri=str(tmp_path / "out2"),
                      job=JOB, max_attempts=1, job_params={"always_fail": "1"})
    with pytest.raises(AirflowException, match=r"map task \d+ of \d+ failed after 1 attempt: .*injected failure \(always\)"):
        failing().execute(_context(run_id="manual__2"))
