"""``lambdamr run --config driverconfig.json``: the reference architecture's configuration file
mapped onto a job.

The reference's ``driverconfig.json`` names the input (``bucket``, ``prefix``), where the job
writes (``jobBucket``), its concurrency and memory, and its three functions (``mapper``,
``reducer``, ``reducerCoordinator``: ``{name, handler, zip}``). Its functions, as shipped,
compute Amplab query 2a (``SUBSTR(sourceIP, 1, 8), SUM(adRevenue)``): here that is the built-in
job ``amplab-2a``, and the coordinator entry is this project's coordinator mode. Every field
is either honoured or refused with an error naming it; nothing is silently dropped.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_lambdamr.engine.spec import new_job_id

#: The reference's functions as it ships them (``name``, ``handler``, ``zip``).
REFERENCE_FUNCTIONS = {
    "mapper": ("mapper.py", "mapper.lambda_handler", "mapper.zip"),
    "reducer": ("reducer.py", "reducer.lambda_handler", "reducer.zip"),
    "reducerCoordinator": ("reducerCoordinator.py", "reducerCoordinator.lambda_handler", "reducerCoordinator.zip"),
}
#: The job the reference's shipped mapper and reducer compute.
REFERENCE_JOB = "amplab-2a"
#: Where the reference's scripts read the execution role from.
ROLE_ENV = "serverless_mapreduce_role"
#: Fields that set the Lambda client (``run``'s ``--region`` and botocore settings), not the job.
CLIENT_FIELDS = ("region", "lambda_read_timeout", "boto_max_connections")
_JOB_FIELDS = ("bucket", "prefix", "jobBucket", "concurrentLambdas", "lambdaMemory")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class DriverConfigError(ValueError):
    """A driverconfig.json this project cannot honour; the message names the field."""


def load(path: str) -> dict:
    """The configuration file, parsed (JSON only: never evaluated)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        config = json.loads(text, object_pairs_hook=functools.partial(_unique, path))
    except json.JSONDecodeError as err:
        hint = ""
        if re.search(r",\s*[}\]]", text):
            hint = " (a comma before a closing brace: the reference's sample driverconfig.json has one after " \
                   "its last entry; remove it)"
        raise DriverConfigError(f"{path} is not JSON: {err}{hint}") from None
    if not isinstance(config, dict):
        raise DriverConfigError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _unique(path: str, pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose names are unique (json keeps the last of a repeated name)."""
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DriverConfigError(f"{path}: an object names {', '.join(map(repr, repeated))} more than once (JSON "
                                f"would keep only the last): remove the others")
    return dict(pairs)


def _field(config: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = config[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DriverConfigError(f"{where}: {name} must be a {kind.__name__}, got {value!r}")
    return value


def spec_values(config: Mapping[str, Any], given: Mapping[str, Any], where: str = "driverconfig.json",
                env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JobSpec values a driverconfig means, under the options ``given`` on the command line
    (which win); and the Lambda client settings (``region``, ``read_timeout``,
    ``max_pool_connections``) it names."""
    unknown = sorted(set(config) - {*_JOB_FIELDS, *CLIENT_FIELDS, *REFERENCE_FUNCTIONS})
    if unknown:
        raise DriverConfigError(
            f"{where}: lambdamr cannot honour the field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"it knows {', '.join((*_JOB_FIELDS, *CLIENT_FIELDS, *REFERENCE_FUNCTIONS))}")
    for name in ("bucket", "jobBucket"):
        if name not in config:
            raise DriverConfigError(f"{where}: {name} is required")
        if not _BUCKET.match(_field(config, name, str, where)):
            raise DriverConfigError(f"{where}: {name} must be an S3 bucket name, got {config[name]!r}")
    values: dict[str, Any] = {}
    prefix = _field(config, "prefix", str, where).lstrip("/") if "prefix" in config else ""
    values["inputs"] = {"": [f"s3://{config['bucket']}/{prefix}"]}
    values["job"] = given.get("job") or _reference_job(config, where)
    values["job_id"] = given.get("job_id") or new_job_id(values["job"])
    # The reference writes <jobBucket>/<job id>/result; here the job id is new for every job.
    values["output"] = f"s3://{config['jobBucket']}/{values['job_id']}/result"
    values["runtime"] = "aws"
    values["coordinator"] = "reducerCoordinator" in config
    if "concurrentLambdas" in config:
        values["concurrency"] = _positive(config, "concurrentLambdas", where)
    if "lambdaMemory" in config:
        values["memory_mb"] = _positive(config, "lambdaMemory", where)
    role = (env or {}).get(ROLE_ENV)
    if role:
        values["role_arn"] = role
    client: dict[str, Any] = {}
    if "region" in config:
        client["region"] = _field(config, "region", str, where)
    if "lambda_read_timeout" in config:
        client["read_timeout"] = _positive(config, "lambda_read_timeout", where)
    if "boto_max_connections" in config:
        client["max_pool_connections"] = _positive(config, "boto_max_connections", where)
    return {**values, **given}, client


def _positive(config: Mapping[str, Any], name: str, where: str) -> int:
    value = _field(config, name, int, where)
    if value < 1:
        raise DriverConfigError(f"{where}: {name} must be at least 1, got {value}")
    return value


def _reference_job(config: Mapping[str, Any], where: str) -> str:
    """The job of the mapper and reducer entries: the reference's own functions are Amplab 2a;
    other code cannot run here (it is the reference's Python 2.7 handler code)."""
    for name, shipped in REFERENCE_FUNCTIONS.items():
        if name not in config:
            if name != "reducerCoordinator":
                raise DriverConfigError(f"{where}: {name} is required (or pass the job: lambdamr run JOB --config ...)")
            continue
        entry = config[name]
        if not isinstance(entry, dict) or set(entry) - {"name", "handler", "zip"}:
            raise DriverConfigError(f"{where}: {name} must be {{\"name\", \"handler\", \"zip\"}}, got {entry!r}")
        theirs = tuple(entry.get(k) for k in ("name", "handler", "zip"))
        if theirs != shipped:
            raise DriverConfigError(
                f"{where}: {name} names {theirs[1]!r} in {theirs[2]!r}, not the reference's own {name} "
                f"({shipped[1]} in {shipped[2]}, Amplab query 2a): lambdamr does not run the reference's "
                f"handler code; write the job as a MapReduceJob class and pass it: "
                f"lambdamr run package.module:Class --config {where}")
    return REFERENCE_JOB
