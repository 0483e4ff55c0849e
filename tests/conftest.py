"""Shared fixtures: an isolated code cache, moto's S3/Lambda/IAM server on 127.0.0.1, helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Airflow reads its configuration when first imported: give the whole session its own
# home (SQLite DB), the example DAGs as the DAG folder, and no example DAGs of Airflow's.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="lambdamr-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "example_dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["LAMBDAMR_SAMPLE_DIR"] = os.path.join(_AIRFLOW_HOME, "samples")
os.environ.pop("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", None)

from lambda_src import storage as st  # noqa: E402 - after the Airflow environment above

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _private_service() -> Iterator[None]:
    """No test starts a local function service in the user's own directory: the session has a
    private one (short path: socket paths are limited), stopped at the end with its workers.
    Tests that need a service of their own use ``svc_dir`` (tests/integration/test_service.py)."""
    import shutil

    from airflow_provider_lambdamr.engine.runtimes import service
    from tests.helpers import stop_test_service

    directory = Path(tempfile.mkdtemp(prefix="lmr-sess-", dir="/tmp")) / "svc"
    old = os.environ.get(service.DIR_ENV)
    os.environ[service.DIR_ENV] = str(directory)
    yield
    stop_test_service(directory)
    shutil.rmtree(directory.parent, ignore_errors=True)
    if old is None:
        os.environ.pop(service.DIR_ENV, None)
    else:
        os.environ[service.DIR_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Zips and extracted code go to a per-session directory, never ~/.cache."""
    old = os.environ.get("LAMBDAMR_CACHE_DIR")
    os.environ["LAMBDAMR_CACHE_DIR"] = str(tmp_path_factory.mktemp("lambdamr-cache"))
    yield
    if old is None:
        os.environ.pop("LAMBDAMR_CACHE_DIR", None)
    else:
        os.environ["LAMBDAMR_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def fixture_jobs_path() -> Iterator[str]:
    """Put tests/fixtures (the ``userjobs`` package, outside the project) on the path."""
    path = str(FIXTURES)
    sys.path.insert(0, path)
    yield path
    sys.path.remove(path)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB for this session (``airflow db migrate`` once)."""
    airflow = Path(sys.executable).with_name("airflow")
    res = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server (S3, Lambda, IAM control planes) on 127.0.0.1; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point boto3 (here and in worker processes) at moto's server with fake credentials."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(st, "_s3", None)  # a fresh client that sees this endpoint
    yield moto_server
    monkeypatch.setattr(st, "_s3", None)


@pytest.fixture
def s3_bucket(aws_env: str, request: pytest.FixtureRequest) -> str:
    """A fresh, uniquely named bucket on moto's server."""
    import uuid

    import boto3

    name = f"lmr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket=name)
    return name


#: The trust policy of a role Lambda may assume.
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture
def lambda_client(aws_env: str):
    """A Lambda client of moto's server."""
    import boto3

    return boto3.client("lambda", region_name="us-east-1")


@pytest.fixture
def role_arn(aws_env: str) -> str:
    """A fresh IAM role on moto's server that Lambda may assume."""
    import json
    import uuid

    import boto3

    name = f"lmr-role-{uuid.uuid4().hex[:8]}"
    return boto3.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST))["Role"]["Arn"]


# -- the Node.js data plane ----------------------------------------------------------------------
NODE_TESTS = ROOT / "tests" / "nodejs"


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` that runs JavaScript jobs (20 or later); the test is skipped, saying so, without one."""
    import shutil

    path = os.environ.get("LAMBDAMR_NODE") or shutil.which("node")
    if not path:
        pytest.skip("Node.js is not installed: the JavaScript data plane's tests need node 20 or later")
    major = int(subprocess.run([path, "-p", "process.versions.node.split('.')[0]"], capture_output=True,
                               text=True, check=True).stdout)
    if major < 20:
        pytest.skip(f"Node.js {major} is too old for the JavaScript data plane (it needs 20 or later)")
    return path


@pytest.fixture(scope="session")
def node_s3_sdk(node: str) -> Iterator[str]:
    """The AWS SDK's S3 client for Node workers (Lambda's runtime has it): ``npm ci`` of
    tests/nodejs/package-lock.json once, then on NODE_PATH for the workers."""
    import shutil

    modules = NODE_TESTS / "node_modules"
    if not (modules / "@aws-sdk" / "client-s3" / "package.json").is_file():
        npm = shutil.which("npm")
        if not npm:
            pytest.skip("npm is not installed: cannot install the AWS SDK for JavaScript the S3 tests of the "
                        "Node.js data plane need (npm ci in tests/nodejs)")
        res = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=NODE_TESTS,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"npm ci in {NODE_TESTS} failed:\n{res.stdout}\n{res.stderr}"
    old = os.environ.get("NODE_PATH")
    os.environ["NODE_PATH"] = str(modules) + (os.pathsep + old if old else "")
    yield str(modules)
    if old is None:
        os.environ.pop("NODE_PATH", None)
    else:
        os.environ["NODE_PATH"] = old
