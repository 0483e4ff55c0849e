"""The AWS example DAG against real AWS. Opt-in: it creates a real bucket, IAM role and Lambda
functions, so it runs only with ``LAMBDAMR_SYSTEM_TESTS=1`` (and real AWS credentials), never
just because boto3 finds ambient credentials (an instance role, an SSO session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
OPT_IN = "LAMBDAMR_SYSTEM_TESTS"


def _why_not_run() -> str | None:
    """Why not to run against real AWS, or None when asked to and able to."""
    if os.environ.get(OPT_IN) != "1":
        return (f"set {OPT_IN}=1 to run it (it creates a bucket, an IAM role and Lambda functions in "
                f"the AWS account of the current credentials)")
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return "AWS_ENDPOINT_URL points at an emulator, not AWS"
    import boto3

    if boto3.session.Session().get_credentials() is None:
        return "no AWS credentials (set a profile or AWS_ACCESS_KEY_ID to run against real AWS)"
    return None


def test_the_system_test_is_opt_in_whatever_the_credentials(monkeypatch):
    """Ambient credentials alone never start it."""
    monkeypatch.delenv(OPT_IN, raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAAMBIENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient")
    reason = _why_not_run()
    assert reason is not None and reason.startswith(f"set {OPT_IN}=1 to run it"), reason
    monkeypatch.setenv(OPT_IN, "1")
    assert _why_not_run() is None


@pytest.mark.system
def test_example_lambdamr_aws_on_real_aws(airflow_db):
    reason = _why_not_run()
    if reason:
        pytest.skip(f"system test for real AWS: {reason}")
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(EXAMPLE_DAGS)).get_dag("example_lambdamr_aws")
    dr = dag.test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
