"""Whole DAG runs with ``dag.test()``: local runtime, file:// and s3:// (moto) storage."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from lambda_src import storage as st
from tests.helpers import mapped_job, read_counts, read_rows
from tests.integration.test_amplab_duckdb import assert_equal_to_duckdb
from tests.integration.test_service import svc_dir  # noqa: F401 - the fixture

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    return bag.get_dag(dag_id)


def _state(dr) -> str:
    return str(getattr(dr.state, "value", dr.state))


def _register(dag) -> None:
    """Make a DAG defined in a test runnable by dag.test(): serialize it into the DB."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, bundle_name="dags-folder", bundle_version=None)


def test_amplab_2a_example_dag_runs_locally_and_equals_duckdb(airflow_db, tmp_path):
    from airflow_provider_lambdamr.engine import amplab_gen

    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=20_000, files=3, seed=8)
    out = str(tmp_path / "result")
    dr = _dag("example_lambdamr_amplab_2a").test(run_conf={"input": str(tmp_path / "uv"), "output": out})
    assert _state(dr) == "success"
    success = json.loads((tmp_path / "result" / "_SUCCESS").read_text())
    assert_equal_to_duckdb(out, [st.local_path(f["uri"]) for f in files], success)
    assert success["job_id"].startswith("example_lambdamr_amplab_2a__manual__")
    job_dir = tmp_path / "result" / "_jobs" / success["job_id"]
    assert not (job_dir / "map").exists(), "cleanup removes the intermediates"
    # the result is emitted as an Asset event, with the summary as its extra
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri == st.normalize(out)).all()
        )
        assert len(events) == 1
        assert events[0].extra["output_records"] == len(read_rows(out))


def test_amplab_3a_example_dag_joins_named_inputs_in_three_steps(airflow_db, tmp_path):
    from airflow_provider_lambdamr.engine import amplab_gen
    from tests.integration.test_amplab_duckdb import duckdb_3a

    rk = amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=3_000, files=2, seed=12)
    uv = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=80_000, files=3, seed=12,
                             rankings_rows=3_000)
    out = str(tmp_path / "result")
    dr = _dag("example_lambdamr_amplab_3a").test(
        run_conf={"uservisits": str(tmp_path / "uv"), "rankings": str(tmp_path / "rk"), "output": out})
    assert _state(dr) == "success"
    ((ip, revenue, avg_rank),) = duckdb_3a([st.local_path(f["uri"]) for f in uv],
                                           [st.local_path(f["uri"]) for f in rk], "1980-01-01", "1980-04-01", 1)
    ((got_ip, got_revenue, got_avg),) = read_rows(out)
    assert (got_ip, float(got_revenue), float(got_avg)) == (ip, pytest.approx(revenue), pytest.approx(avg_rank))
    success = json.loads((tmp_path / "result" / "_SUCCESS").read_text())
    assert success["steps"] == 3 and len(success["tasks"]["by_step"]) == 3
    job_dir = tmp_path / "result" / "_jobs" / success["job_id"]
    assert not (job_dir / "step-02" / "reduce").exists(), "cleanup removes every step's intermediates"


def test_wordcount_backfill_dates_are_separate_and_reruns_idempotent(airflow_db, tmp_path):
    root = tmp_path / "in"
    for day, words in (("2024-03-01", "a b a"), ("2024-03-02", "c c c d")):
        (root / day).mkdir(parents=True)
        (root / day / "part-0.txt").write_text(words + "\n")
    conf = {"input_root": str(root), "output_root": str(tmp_path / "out")}
    dag = _dag("example_lambdamr_wordcount")
    for day in ("2024-03-01", "2024-03-02"):
        when = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
        assert _state(dag.test(logical_date=when, run_after=when, run_conf=conf)) == "success"
    assert read_counts(str(tmp_path / "out" / "2024-03-01")) == {"a": 2, "b": 1}
    assert read_counts(str(tmp_path / "out" / "2024-03-02")) == {"c": 3, "d": 1}
    part = tmp_path / "out" / "2024-03-01" / "part-00000"
    before = (part.stat().st_mtime_ns, json.loads((part.parent / "_SUCCESS").read_text())["job_id"])
    when = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    assert _state(dag.test(logical_date=when, run_after=when, run_conf=conf)) == "success"
    after = (part.stat().st_mtime_ns, json.loads((part.parent / "_SUCCESS").read_text())["job_id"])
    assert before == after == (before[0], "wordcount-2024-03-01"), "a rerun must not recompute the date"


@pytest.fixture
def moto_connection(moto_server, monkeypatch):
    """Credentials in the environment, the endpoint only in the Airflow connection."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(
        {"conn_type": "aws", "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}
    ))
    monkeypatch.setattr(st, "_s3", None)
    bucket = f"dag-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    yield bucket
    monkeypatch.setattr(st, "_s3", None)


def test_amplab_2a_example_dag_on_s3_through_the_connection(airflow_db, moto_connection, moto_server, tmp_path,
                                                            monkeypatch):
    from airflow_provider_lambdamr.engine import amplab_gen

    local = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=5000, files=2, seed=2)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    for f in local:
        s3.upload_file(st.local_path(f["uri"]), moto_connection, f"uv/{st.basename(f['uri'])}")
    out = f"s3://{moto_connection}/result"
    dr = _dag("example_lambdamr_amplab_2a").test(run_conf={"input": f"s3://{moto_connection}/uv/", "output": out})
    assert _state(dr) == "success"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=moto_connection, Prefix="result/")["Contents"]]
    assert "result/_SUCCESS" in keys and "result/part-00000" in keys
    success = json.loads(s3.get_object(Bucket=moto_connection, Key="result/_SUCCESS")["Body"].read())
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)  # for this test's own reads of the result
    monkeypatch.setattr(st, "_s3", None)
    assert_equal_to_duckdb(out, [st.local_path(f["uri"]) for f in local], success)


def test_deferrable_sensor_waits_in_a_trigger_until_the_job_commits(airflow_db, tmp_path, monkeypatch):
    """The sensor defers; the trigger runs (in-process under dag.test) and sees the reduce
    phase unfinished; only then does the reduce phase finish elsewhere, and the sensor
    resumes on the trigger's event."""
    from airflow.sdk import DAG

    from airflow_provider_lambdamr.engine.driver import Driver
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
    from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    spec = mapped_job(tmp_path, "x y\ny\n", "deferred")
    checks: list[dict | None] = []  # what each of the trigger's polls saw
    resumed: list[dict | None] = []  # the events the sensor resumed with
    trigger_polled = threading.Event()

    async def check(self, reader, real=LambdaMapReducePhaseTrigger._check):
        event = await real(self, reader)
        checks.append(event)
        trigger_polled.set()
        return event

    def execute_complete(self, context, event=None, real=LambdaMapReduceSensor.execute_complete):
        resumed.append(event)
        return real(self, context, event)

    monkeypatch.setattr(LambdaMapReducePhaseTrigger, "_check", check)
    monkeypatch.setattr(LambdaMapReduceSensor, "execute_complete", execute_complete)

    def finish_after_the_trigger_polled():
        trigger_polled.wait(20)  # without a trigger, finish anyway: the asserts below fail
        with LocalRuntime(workers=1) as rt2:
            Driver(spec, rt2).run()

    with DAG(dag_id=f"lambdamr_deferral_{uuid.uuid4().hex[:6]}", schedule=None,
             start_date=dt.datetime(2024, 1, 1)) as dag:
        LambdaMapReduceSensor(task_id="wait", job_dir=spec.job_dir, phase="reduce", deferrable=True,
                              poke_interval=0.2, timeout=60, aws_conn_id=None)
    _register(dag)
    worker = threading.Thread(target=finish_after_the_trigger_polled)
    worker.start()
    try:
        dr = dag.test()
    finally:
        worker.join()
    assert _state(dr) == "success"
    assert checks and checks[0] is None, "the sensor did not defer to a trigger that saw the job unfinished"
    assert checks[-1]["status"] == "success" and resumed == [checks[-1]]
    assert read_counts(str(tmp_path / "out")) == {"x": 1, "y": 2}


class _TI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_a_retried_map_task_resumes_instead_of_redoing_work(tmp_path):
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    for i in range(4):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"f{i}.txt").write_text(f"w{i} common\n")
    op = LambdaMapOperator(task_id="map", job="wordcount", inputs=str(tmp_path / "in"),
                           output_uri=str(tmp_path / "out"), split_size=8, aws_conn_id=None)
    ctx = {"dag": SimpleNamespace(dag_id="d"), "run_id": "manual__1", "ti": _TI()}
    first = op.execute(ctx)
    assert first["invocations"] == first["map_tasks"] == 5  # 40 bytes in 8-byte tasks
    assert ctx["ti"].pushed["job_dir"] == first["job_dir"]
    retry = op.execute({**ctx, "ti": _TI()})  # the Airflow task's second try, same run
    assert retry["invocations"] == 0 and retry["map_tasks"] == 5
    assert first["map_modes"] == retry["map_modes"] == {"record": 5}  # wordcount has no map_table
    assert retry["job_dir"] == first["job_dir"]
    red = LambdaReduceOperator(task_id="reduce", job_dir=first["job_dir"], aws_conn_id=None, result_asset=str(tmp_path / "out"))
    from airflow.sdk.execution_time.context import OutletEventAccessors

    result = red.execute({**ctx, "ti": _TI(), "outlet_events": OutletEventAccessors()})
    assert result["output_records"] == 5 and result["input_records"] == 4
    assert read_counts(str(tmp_path / "out")) == {"w0": 1, "w1": 1, "w2": 1, "w3": 1, "common": 4}


def test_on_kill_stops_the_local_workers(tmp_path, fixture_jobs_path):
    """Airflow calls on_kill from its SIGTERM handler, in the task's own thread: do the same."""
    import signal

    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    (tmp_path / "in.txt").write_text("a\n")
    op = LambdaMapOperator(task_id="map", job="userjobs.faulty:FaultyCount", inputs=str(tmp_path / "in.txt"),
                           output_uri=str(tmp_path / "out"), job_params={"sleep_always": "60"},
                           workers=1, aws_conn_id=None)
    seen = {}

    def on_term(signum, frame):
        runtime = op._runtime
        seen["pids"] = [w.proc.pid for w in runtime._pool]
        seen["procs"] = [w.proc for w in runtime._pool]
        op.on_kill()

    old = signal.signal(signal.SIGALRM, on_term)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    started = time.monotonic()
    try:
        with pytest.raises(AirflowException, match=r"map task 0 of 1 was cancelled: Runtime\.Cancelled"):
            op.execute({"dag": SimpleNamespace(dag_id="d"), "run_id": "kill", "ti": _TI()})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 30, "on_kill must end the task promptly"
    assert seen["pids"] and all(p.poll() is not None for p in seen["procs"]), "workers still running"


def test_extra_links_are_stored_for_a_traced_run(airflow_db, tmp_path, monkeypatch):
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG
    from airflow.utils.session import create_session

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:9")  # discard segments
    (tmp_path / "in.txt").write_text("p q\n")
    with DAG(dag_id=f"lambdamr_links_{uuid.uuid4().hex[:6]}", schedule=None,
             start_date=dt.datetime(2024, 1, 1)) as dag:
        m = LambdaMapOperator(task_id="map", job="wordcount", inputs=str(tmp_path / "in.txt"),
                              output_uri=str(tmp_path / "out"), tracing=True, aws_conn_id=None)
        LambdaReduceOperator(task_id="reduce", job_dir=m.output["job_dir"], aws_conn_id=None)
    _register(dag)
    dr = dag.test()
    assert _state(dr) == "success"
    with create_session() as session:
        rows = {(x.task_id, x.key): x.value for x in session.query(XComModel).filter(
            XComModel.dag_id == dag.dag_id, XComModel.run_id == dr.run_id, XComModel.key.like("_link_%"))}
    trace = rows[("map", "_link_LambdaMapReduceTraceLink")]
    assert trace.startswith("https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#xray:traces/1-")
    assert rows[("reduce", "_link_LambdaMapReduceTraceLink")].startswith("https://")
    assert rows[("reduce", "_link_LambdaMapReduceResultLink")] == ""  # a file:// result: the UI renders no link
    assert rows[("map", "_link_LambdaMapReduceFunctionLink")] == ""  # local runtime: no function
    assert rows[("reduce", "_link_LambdaMapReduceReportLink")] == ""  # a local report: no link
    # the reduce task that committed wrote the job's report, with every task attempt on its timeline
    from tests.integration.test_report import _parse

    jobs = Path(st.local_path(st.join(st.normalize(str(tmp_path / "out")), "_jobs")))
    (page,) = jobs.glob("*/report.html")
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    attempts = _parse(str(page)).attempts
    assert len(attempts) == success["tasks"]["map"] + success["tasks"]["reduce"] == 2
    assert {a["data-state"] for a in attempts} == {"committed"}


def test_coordinator_example_dag_one_deferred_task_covers_the_job_its_coordinator_commits(
    airflow_db, tmp_path, svc_dir  # noqa: F811 - the fixture
):
    from airflow_provider_lambdamr.engine import amplab_gen

    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=20_000, files=3, seed=3)
    out = str(tmp_path / "result")
    dr = _dag("example_lambdamr_coordinator").test(run_conf={"input": str(tmp_path / "uv"), "output": out})
    assert _state(dr) == "success"
    success = json.loads((tmp_path / "result" / "_SUCCESS").read_text())
    assert_equal_to_duckdb(out, [st.local_path(f["uri"]) for f in files], success)
    job_dir = tmp_path / "result" / "_jobs" / success["job_id"]
    assert (job_dir / "coordinator.json").exists() and (job_dir / "launch").is_dir()
    assert not (job_dir / "map").exists(), "the coordinator's commit removed the intermediates"
