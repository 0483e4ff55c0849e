"""Apache Airflow provider that runs MapReduce jobs on AWS Lambda and S3, or locally.

Importing this package must stay cheap and must not import Airflow: the ``lambdamr`` CLI
and the engine use it without Airflow.
"""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""
    integration = "LambdaMR"
    return {
        "package-name": "airflow-provider-lambdamr",
        "name": "LambdaMR",
        "description": "Run MapReduce jobs on AWS Lambda and S3, or on the embedded local runtime.",
        "versions": [__version__],
        "integrations": [{"integration-name": integration, "tags": ["aws", "service"]}],
        "hooks": [
            {"integration-name": integration, "python-modules": ["airflow_provider_lambdamr.hooks.lambda_mr"]}
        ],
        "operators": [
            {"integration-name": integration, "python-modules": ["airflow_provider_lambdamr.operators.lambda_mr"]}
        ],
        "sensors": [
            {"integration-name": integration, "python-modules": ["airflow_provider_lambdamr.sensors.lambda_mr"]}
        ],
        "triggers": [
            {"integration-name": integration, "python-modules": ["airflow_provider_lambdamr.triggers.lambda_mr"]}
        ],
        "extra-links": [
            "airflow_provider_lambdamr.operators.lambda_mr.LambdaMapReduceResultLink",
            "airflow_provider_lambdamr.operators.lambda_mr.LambdaMapReduceFunctionLink",
            "airflow_provider_lambdamr.operators.lambda_mr.LambdaMapReduceTraceLink",
            "airflow_provider_lambdamr.operators.lambda_mr.LambdaMapReduceReportLink",
        ],
    }
