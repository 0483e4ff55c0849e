"""Apache Airflow provider that runs MapReduce jobs on AWS Lambda and S3, or locally.

Importing this package must stay cheap and must not import Airflow: the ``lambdamr`` CLI
and the engine use it without Airflow.
"""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata, read by Airflow through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-lambdamr",
        "name": "LambdaMR",
        "description": "Run MapReduce jobs on AWS Lambda and S3, or on the embedded local runtime.",
        "versions": [__version__],
    }
