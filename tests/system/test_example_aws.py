"""The AWS example DAG against real AWS. Skipped, with the reason, without credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"


def _real_aws_credentials() -> str | None:
    """Why not to run, or None when real AWS credentials are available."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return "AWS_ENDPOINT_URL points at an emulator, not AWS"
    import boto3

    if boto3.session.Session().get_credentials() is None:
        return "no AWS credentials (set a profile or AWS_ACCESS_KEY_ID to run against real AWS)"
    return None


@pytest.mark.system
def test_example_lambdamr_aws_on_real_aws(airflow_db):
    reason = _real_aws_credentials()
    if reason:
        pytest.skip(f"system test for real AWS: {reason}")
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(EXAMPLE_DAGS)).get_dag("example_lambdamr_aws")
    dr = dag.test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
