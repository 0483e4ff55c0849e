"""airflow-provider-lambdamr: MapReduce on AWS Lambda and S3, or on a laptop."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="airflow-provider-lambdamr",
    version="0.1.0",
    description="Apache Airflow provider that runs MapReduce jobs on AWS Lambda and S3, "
    "with an embedded local runtime that runs the same handlers on one machine.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["airflow_provider_lambdamr*", "lambda_src*"]),
    package_data={"airflow_provider_lambdamr": ["py.typed"],
                  "lambda_src": ["nodejs/*.mjs", "nodejs/jobs/*.mjs", "nodejs/jobs/package.json"]},
    install_requires=[
        "apache-airflow>=3.3,<3.4",
        "apache-airflow-providers-amazon[aiobotocore]>=9.20",
        "boto3>=1.34",
        "aws-xray-sdk>=2.14",
        "pyarrow>=16",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "moto[server,s3,lambda,iam]>=5.1",
            "duckdb>=1.1",
            "ruff>=0.6",
            "hypothesis>=6.100",
            "jsonschema>=4.20",
            # runs the handler zips as Lambda does (tests/lambda_ric.py)
            "awslambdaric>=4.2",
        ],
    },
    entry_points={
        "console_scripts": ["lambdamr=airflow_provider_lambdamr.prestart:main"],
        "apache_airflow_provider": [
            "provider_info=airflow_provider_lambdamr:get_provider_info",
        ],
    },
    classifiers=[
        "Framework :: Apache Airflow",
        "Framework :: Apache Airflow :: Provider",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
)
