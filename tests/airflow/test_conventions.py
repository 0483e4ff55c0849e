"""Provider conventions: the shared connection base, a storage client per trigger, result
Assets and aliases, extra links, task logs and the invocation counts of ``_SUCCESS``."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from lambda_src import contract
from lambda_src import storage as st
from tests.airflow.test_dag_runs import _register, _state
from tests.helpers import mapped_job

AWS_FIELDS = {"aws_conn_id", "region_name", "verify"}


def _tasks():
    from airflow_provider_lambdamr.operators.lambda_mr import (
        LambdaMapOperator,
        LambdaMapReduceCleanupOperator,
        LambdaReduceOperator,
    )
    from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor

    conn = {"aws_conn_id": "conn_x", "region_name": "eu-west-3", "verify": "/ca.pem",
            "botocore_config": {"retries": {"max_attempts": 2}}}
    return conn, [
        LambdaMapOperator(task_id="m", job="wordcount", inputs="/in", output_uri="/out", **conn),
        LambdaReduceOperator(task_id="r", job_dir="/out/_jobs/j", **conn),
        LambdaMapReduceCleanupOperator(task_id="c", job_dir="/out/_jobs/j", **conn),
        LambdaMapReduceSensor(task_id="s", job_dir="/out/_jobs/j", **conn),
    ]


def test_every_task_takes_the_connection_from_the_one_shared_base():
    from airflow_provider_lambdamr.operators.base import LambdaMapReduceHookMixin

    conn, tasks = _tasks()
    for task in tasks:
        where = type(task).__name__
        assert isinstance(task, LambdaMapReduceHookMixin), where
        # declared once: no task class redeclares the connection keywords
        assert not {"aws_conn_id", "botocore_config"} & set(inspect.signature(type(task).__init__).parameters), where
        assert set(task.template_fields) >= AWS_FIELDS, where
        assert list(task.template_fields) == sorted(task.template_fields), where
        hook = task.hook
        assert (hook.aws_conn_id, hook.region_name, hook.verify, hook.botocore_config) == tuple(conn.values()), where
    task = tasks[1]
    task.aws_conn_id, task.region_name = "conn_{{ ds_nodash }}", "{{ params.region }}"
    task.render_template_fields({"ds_nodash": "20240102", "params": {"region": "ap-south-1"}})
    assert (task.aws_conn_id, task.region_name) == ("conn_20240102", "ap-south-1")


def test_the_deferring_sensor_hands_its_whole_connection_to_the_trigger(tmp_path):
    from airflow.sdk.exceptions import TaskDeferred

    conn, tasks = _tasks()
    sensor = tasks[3]
    sensor.job_dir, sensor.deferrable, sensor.phase = mapped_job(tmp_path, "a\n", "d").job_dir, True, "reduce"
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    kwargs = info.value.trigger.serialize()[1]
    assert {k: kwargs[k] for k in conn} == conn


# -- a storage client per trigger ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def second_moto():
    """A moto server in its own process: its buckets are not the session server's."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "moto_server exited"
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(30)


def test_two_triggers_with_different_connections_read_their_own_job(tmp_path, moto_server, second_moto,
                                                                      monkeypatch):
    """One bucket name and job directory on two S3 endpoints, each a connection's: on A the
    map phase committed, on B the job failed. Both triggers run in one event loop and each
    reports its own endpoint's state through an aiobotocore client of its own
    (``get_async_conn``); neither touches the process-global S3 client."""
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    spec = mapped_job(tmp_path, "a b\nb\n", "two-conns")
    local_dir = st.local_path(spec.job_dir)
    bucket, job_dir = "shared-name", "s3://shared-name/jobs/two-conns"
    for conn_id, endpoint in (("lmr_a", moto_server), ("lmr_b", second_moto)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(
            {"conn_type": "aws", "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        for path in Path(local_dir).rglob("*"):
            if path.is_file():
                s3.put_object(Bucket=bucket, Key=f"jobs/two-conns/{path.relative_to(local_dir)}", Body=path.read_bytes())
        if conn_id == "lmr_b":
            key = st.relative_to(contract.failure_uri(job_dir), f"s3://{bucket}")
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"message": "boom on B"}).encode())
    sentinel = st.S3Storage(client=object())  # any use of the process-global client fails
    monkeypatch.setattr(st, "_s3", sentinel)
    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

    made = []  # every client a hook made, and whether it was the async (aiobotocore) kind
    real = AwsGenericHook.get_client_type

    def recording(self, *args, deferrable=False, **kwargs):
        made.append((self.aws_conn_id, deferrable))
        return real(self, *args, deferrable=deferrable, **kwargs)

    monkeypatch.setattr(AwsGenericHook, "get_client_type", recording)

    async def both():
        async def first(conn_id):
            trigger = LambdaMapReducePhaseTrigger(job_dir=job_dir, phase="map", poll_interval=0.05, timeout=30,
                                                  aws_conn_id=conn_id)
            return (await anext(trigger.run())).payload

        return await asyncio.gather(first("lmr_a"), first("lmr_b"), first("lmr_a"), first("lmr_b"))

    a, b, a2, b2 = asyncio.run(both())
    assert a == a2 == {"status": "success", "job_dir": job_dir, "phase": "map", "done": 1, "total": 1}
    assert b == b2 == {"status": "error", "message": "boom on B", "job_dir": job_dir, "phase": "map"}
    assert st._s3 is sentinel
    # One async client per trigger, from the connection's hook; no blocking boto3 client.
    assert sorted(made) == [("lmr_a", True), ("lmr_a", True), ("lmr_b", True), ("lmr_b", True)]


# -- result assets and aliases --------------------------------------------------------------
def _job_dag(dag_id: str, tmp_path: Path, output: str, **map_kwargs):
    from airflow.sdk import DAG

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    (tmp_path / "in").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (tmp_path / "in" / f"f{i}.txt").write_text(f"w{i} common\n")
    with DAG(dag_id=dag_id, schedule=None, start_date=dt.datetime(2024, 1, 1)) as dag:
        m = LambdaMapOperator(task_id="map", job="wordcount", inputs=str(tmp_path / "in"), output_uri=output,
                              split_size=8, speculation=False, aws_conn_id=None, **map_kwargs)
        LambdaReduceOperator(task_id="reduce", job_dir=m.output["job_dir"], aws_conn_id=None)
    _register(dag)
    return dag


def _events(dag_ids: list[str]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(dag, run, asset URI, alias names) of every asset event the DAGs' tasks emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(AssetEvent.source_dag_id.in_(dag_ids)).all()
        return sorted((e.source_dag_id, e.source_run_id, e.asset.uri, tuple(sorted(a.name for a in e.source_aliases)))
                      for e in rows)


def test_result_asset_is_the_output_per_run_and_each_dag_has_its_own_alias(airflow_db, tmp_path):
    tag = uuid.uuid4().hex[:6]
    first, second = f"lmr_asset_a_{tag}", f"lmr_asset_b_{tag}"
    out_a, out_b = str(tmp_path / "a" / "out"), str(tmp_path / "b" / "out")
    dag_a = _job_dag(first, tmp_path / "a", out_a, job_id=f"fixed-{tag}", recompute=True)
    dag_b = _job_dag(second, tmp_path / "b", out_b)
    runs = []
    for day in (1, 2):
        when = dt.datetime(2024, 5, day, tzinfo=dt.UTC)
        dr = dag_a.test(logical_date=when, run_after=when)
        assert _state(dr) == "success"
        runs.append(dr.run_id)
    when_b = dt.datetime(2024, 5, 9, tzinfo=dt.UTC)
    assert _state(dag_b.test(logical_date=when_b, run_after=when_b)) == "success"
    events = _events([first, second])
    by_dag = {d: [(run, uri, aliases) for dag_id, run, uri, aliases in events if dag_id == d] for d in (first, second)}
    # one DAG's two runs update one Asset: its output's URI
    assert sorted(run for run, _, _ in by_dag[first]) == sorted(runs)
    assert {uri for _, uri, _ in by_dag[first]} == {st.normalize(out_a)}
    # each DAG emits through an alias of its own
    (alias_a,) = {aliases for _, _, aliases in by_dag[first]}
    (alias_b,) = {aliases for _, _, aliases in by_dag[second]}
    assert alias_a == (f"lambdamr-result:{first}:reduce",) and alias_b == (f"lambdamr-result:{second}:reduce",)
    # the same run again (same job id, already committed) recomputes nothing, and emits nothing
    assert _state(dag_b.test(logical_date=when_b, run_after=when_b)) == "success"
    assert len(_events([second])) == 1


# -- links, logs and invocation counts --------------------------------------------------------
def test_result_link_is_an_https_console_url_for_s3_and_absent_for_local_outputs(monkeypatch):
    from airflow.sdk.execution_time.xcom import XCom

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapReduceResultLink

    pushed = {}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: pushed.get(key)))
    link = LambdaMapReduceResultLink()
    pushed["lambdamr_result"] = {"output": "s3://my-bucket/results/day=1/", "region": "eu-west-1"}
    url = link.get_link(None, ti_key=None)
    assert urlsplit(url).scheme == "https" and urlsplit(url).netloc == "eu-west-1.console.aws.amazon.com"
    assert "/s3/buckets/my-bucket?" in url and "prefix=results/day=1/" in url
    for output in ("file:///tmp/out", "/tmp/out"):
        pushed["lambdamr_result"] = {"output": output, "region": None}
        assert link.get_link(None, ti_key=None) == ""
    pushed.clear()
    assert link.get_link(None, ti_key=None) == ""


def test_report_link_is_the_s3_console_object_for_an_s3_job_dir_and_absent_for_a_local_one(monkeypatch):
    from airflow.sdk.execution_time.xcom import XCom

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapReduceReportLink

    pushed = {}
    monkeypatch.setattr(XCom, "get_value", classmethod(lambda cls, *, ti_key, key: pushed.get(key)))
    link = LambdaMapReduceReportLink()
    pushed["lambdamr_report"] = {"uri": "s3://jobs-bucket/_jobs/j1/report.html", "region": "eu-west-1"}
    url = urlsplit(link.get_link(None, ti_key=None))
    assert (url.scheme, url.netloc, url.path) == ("https", "eu-west-1.console.aws.amazon.com", "/s3/object/jobs-bucket")
    assert "prefix=_jobs/j1/report.html" in url.query
    for uri in ("file:///tmp/j1/report.html", "/tmp/j1/report.html"):
        pushed["lambdamr_report"] = {"uri": uri, "region": None}
        assert link.get_link(None, ti_key=None) == ""
    pushed.clear()
    assert link.get_link(None, ti_key=None) == ""


#: The schemes the Airflow 3.3 UI renders as an extra link (ui/dist: ``kft``/``Aft``);
#: other links it drops, and the API turns "" into no link.
UI_SCHEMES = {"http", "https", "mailto"}


def test_separate_map_and_reduce_tasks_count_every_invocation_log_no_missing_xcom_and_link_nothing_unrenderable(
        airflow_db, tmp_path, capfd):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out = str(tmp_path / "out")
    dag = _job_dag(f"lmr_counts_{uuid.uuid4().hex[:6]}", tmp_path, out)
    capfd.readouterr()
    dr = dag.test()
    logs = "".join(capfd.readouterr())
    assert _state(dr) == "success"
    assert "[DAG TEST]" in logs or "map phase done" in logs, "the task logs were not captured"
    assert "XCom not found" not in logs
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    with create_session() as session:
        xcoms = {(x.task_id, x.key): x.value for x in session.query(XComModel).filter(
            XComModel.dag_id == dag.dag_id, XComModel.run_id == dr.run_id)}
    map_summary = xcoms[("map", "return_value")]
    # 30 bytes in 8-byte splits: several map tasks, each invoked once (no speculation, no failure)
    assert success["tasks"]["map"] == map_summary["map_tasks"] == map_summary["invocations"] > 1
    assert success["invocations"]["map"]["invocations"] == map_summary["invocations"]
    assert success["invocations"]["reduce"]["invocations"] == success["tasks"]["reduce"] >= 1
    links = {k: v for k, v in xcoms.items() if k[1].startswith("_link_")}
    assert links, "no extra link was stored"
    assert all(v == "" or urlsplit(v).scheme in UI_SCHEMES for v in links.values()), links
