"""The reference architecture's driverconfig.json mapped onto a job, or refused naming the field."""

from __future__ import annotations

import json

import pytest

from airflow_provider_lambdamr.engine import driverconfig
from airflow_provider_lambdamr.engine.driverconfig import DriverConfigError, spec_values
from airflow_provider_lambdamr.engine.spec import JobSpec

#: The reference README's sample, as printed there (with the comma after its last entry).
REFERENCE_SAMPLE = """
{
        "bucket": "big-data-benchmark",
        "prefix": "pavlo/text/1node/uservisits/",
        "jobBucket": "YOUR-BUCKET-NAME-HERE",
        "concurrentLambdas": 100,
        "mapper": {
            "name": "mapper.py",
            "handler": "mapper.lambda_handler",
            "zip": "mapper.zip"
        },
        "reducer":{
            "name": "reducer.py",
            "handler": "reducer.lambda_handler",
            "zip": "reducer.zip"
        },
        "reducerCoordinator":{
            "name": "reducerCoordinator.py",
            "handler": "reducerCoordinator.lambda_handler",
            "zip": "reducerCoordinator.zip"
        },
}
"""


def _sample(**changes) -> dict:
    config = json.loads(REFERENCE_SAMPLE.replace("},\n}", "}\n}").replace("YOUR-BUCKET-NAME-HERE", "my-job-bucket"))
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def test_the_reference_sample_becomes_an_amplab_2a_job_in_coordinator_mode_on_lambda():
    values, client = spec_values(_sample(region="eu-west-1", lambdaMemory=2048, lambda_read_timeout=300,
                                         boto_max_connections=50), {},
                                 env={driverconfig.ROLE_ENV: "arn:aws:iam::123456789012:role/biglambda_role"})
    spec = JobSpec(**values)
    assert spec.inputs == {"": ["s3://big-data-benchmark/pavlo/text/1node/uservisits/"]}
    assert spec.job_ref == "lambda_src.jobs.amplab:Query2a"
    assert spec.output == f"s3://my-job-bucket/{spec.job_id}/result"
    assert (spec.runtime, spec.coordinator, spec.concurrency, spec.memory_mb) == ("aws", True, 100, 2048)
    assert spec.role_arn == "arn:aws:iam::123456789012:role/biglambda_role"
    assert client == {"region": "eu-west-1", "read_timeout": 300, "max_pool_connections": 50}


def test_options_given_on_the_command_line_win_and_a_given_job_replaces_the_entries():
    values, _ = spec_values(_sample(mapper={"name": "m.py", "handler": "m.handler", "zip": "m.zip"}),
                            {"job": "wordcount", "runtime": "service", "concurrency": 7, "job_id": "j1"})
    spec = JobSpec(**values)
    assert (spec.job_ref, spec.runtime, spec.concurrency, spec.job_id) == (
        "lambda_src.jobs.wordcount:WordCount", "service", 7, "j1")
    assert spec.output == "s3://my-job-bucket/j1/result"


def test_without_the_coordinator_entry_the_driver_runs_the_whole_job():
    values, _ = spec_values(_sample(reducerCoordinator=None), {})
    assert values["coordinator"] is False


@pytest.mark.parametrize("changes,names", [
    ({"lambdaTimeout": 10, "extra": 1}, "fields extra, lambdaTimeout"),
    ({"jobBucket": None}, "jobBucket is required"),
    ({"bucket": "Not_A_Bucket"}, "bucket must be an S3 bucket name"),
    ({"concurrentLambdas": 0}, "concurrentLambdas must be at least 1"),
    ({"concurrentLambdas": "100"}, "concurrentLambdas must be a int"),
    ({"mapper": {"name": "mapper.py", "handler": "mine.handler", "zip": "mapper.zip"}},
     "mapper names 'mine.handler' in 'mapper.zip', not the reference's own mapper"),
    ({"reducer": None}, "reducer is required"),
    ({"reducer": {"name": "reducer.py", "handler": "reducer.lambda_handler", "zip": "reducer.zip", "memory": 1}},
     "reducer must be"),
])
def test_a_field_lambdamr_cannot_honour_is_refused_by_name(changes, names):
    with pytest.raises(DriverConfigError, match=names.replace("(", r"\(").replace(")", r"\)")):
        spec_values(_sample(**changes), {}, "cfg.json")


def test_the_reference_sample_as_printed_is_refused_pointing_at_its_trailing_comma(tmp_path):
    path = tmp_path / "driverconfig.json"
    path.write_text(REFERENCE_SAMPLE)
    with pytest.raises(DriverConfigError, match=r"is not JSON: .*line 22 column 1.*comma before a closing brace"):
        driverconfig.load(str(path))
    path.write_text("[1]")
    with pytest.raises(DriverConfigError, match="must hold a JSON object, got list"):
        driverconfig.load(str(path))
