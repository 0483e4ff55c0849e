"""Registration, DAG parsing, template fields, trigger serialization, sensor deferral."""

from __future__ import annotations

import asyncio
import json
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from airflow_provider_lambdamr import get_provider_info
from tests.helpers import mapped_job

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"


def test_provider_info_validates_against_airflows_schema():
    schema = json.loads(files("airflow").joinpath("provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == metadata.distribution("airflow-provider-lambdamr").metadata["Name"]


def test_airflow_discovers_the_provider(airflow_db):
    from airflow.providers_manager import ProvidersManager

    providers = ProvidersManager().providers
    assert "airflow-provider-lambdamr" in providers
    assert providers["airflow-provider-lambdamr"].version == metadata.version("airflow-provider-lambdamr")


def test_every_module_named_in_provider_info_imports():
    import importlib

    info = get_provider_info()
    for section in ("hooks", "operators", "sensors", "triggers"):
        for item in info[section]:
            for module in item["python-modules"]:
                importlib.import_module(module)
    for path in info["extra-links"]:
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name)


def test_example_dags_import_without_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    assert {"example_lambdamr_amplab_2a", "example_lambdamr_wordcount", "example_lambdamr_aws"} <= set(bag.dag_ids)
    dag = bag.get_dag("example_lambdamr_amplab_2a")
    assert dag.get_task("reduce").upstream_task_ids == {"map", "wait_for_map"}
    assert dag.get_task("cleanup").trigger_rule == "all_done"


def _operators():
    from airflow_provider_lambdamr.operators.lambda_mr import (
        LambdaMapOperator,
        LambdaMapReduceCleanupOperator,
        LambdaReduceOperator,
    )
    from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor

    return [
        LambdaMapOperator(task_id="m", job="wordcount", inputs="/in", output_uri="/out"),
        LambdaReduceOperator(task_id="r", job_dir="/out/_jobs/j"),
        LambdaMapReduceCleanupOperator(task_id="c", job_dir="/out/_jobs/j"),
        LambdaMapReduceSensor(task_id="s", job_dir="/out/_jobs/j"),
    ]


#: The fields each operator promises to template, as documented for DAG authors.
TEMPLATED = [
    ("function_prefix", "inputs", "job", "job_id", "job_params", "job_root", "output_uri", "region_name",
     "role_arn", "runtime"),
    ("function_prefix", "job_dir", "region_name", "role_arn", "runtime"),
    ("function_prefix", "job_dir", "region_name"),
    ("job_dir",),
]


@pytest.mark.parametrize("index", range(4))
def test_template_fields_are_attributes_and_render(index):
    op = _operators()[index]
    assert list(op.template_fields) == sorted(op.template_fields)
    assert [f for f in op.template_fields if not hasattr(op, f)] == []
    for name in TEMPLATED[index]:
        setattr(op, name, {"k": f"{name}-{{{{ ds }}}}"} if name == "job_params" else f"{name}-{{{{ ds }}}}")
    op.render_template_fields({"ds": "2024-01-01", "run_id": "r", "params": {}})
    rendered = {name: getattr(op, name) for name in TEMPLATED[index]}
    assert rendered == {name: {"k": f"{name}-2024-01-01"} if name == "job_params" else f"{name}-2024-01-01"
                        for name in TEMPLATED[index]}


def test_map_operator_renders_its_templates():
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    op = LambdaMapOperator(
        task_id="m", job="{{ params.job }}", inputs=["s3://b/in/{{ ds }}/"], output_uri="s3://b/out/{{ ds }}",
        job_params={"day": "{{ ds }}"}, job_id="j-{{ ds }}",
    )
    op.render_template_fields({"ds": "2024-01-02", "params": {"job": "wordcount"}})
    assert (op.job, op.inputs, op.output_uri, op.job_params, op.job_id) == (
        "wordcount", ["s3://b/in/2024-01-02/"], "s3://b/out/2024-01-02", {"day": "2024-01-02"}, "j-2024-01-02"
    )


def test_invalid_arguments_are_named():
    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator
    from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor

    with pytest.raises(ValueError, match="Parameter 'phase' must be one of"):
        LambdaMapReduceSensor(task_id="s", job_dir="/x", phase="shuffle")
    op = LambdaMapOperator(task_id="m", job="nope", inputs="/in", output_uri="/out")
    ctx = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r1"}
    with pytest.raises(AirflowException, match="Invalid LambdaMR job for task m: unknown job 'nope'"):
        op.build_spec(ctx)


def test_default_job_id_is_stable_per_run_and_valid():
    from airflow_provider_lambdamr.operators.lambda_mr import default_job_id
    from lambda_src.task import validate_job_id

    ctx = {"dag": SimpleNamespace(dag_id="my_dag"), "run_id": "scheduled__2024-01-01T00:00:00+00:00"}
    assert default_job_id(ctx) == default_job_id(dict(ctx))
    assert validate_job_id(default_job_id(ctx)).startswith("my_dag__scheduled__2024-01-01T00-00-00+00-00=")
    other = {"dag": SimpleNamespace(dag_id="my_dag"), "run_id": "scheduled__2024-01-02T00:00:00+00:00"}
    assert default_job_id(other) != default_job_id(ctx)
    long = {"dag": SimpleNamespace(dag_id="d" * 150), "run_id": "r" * 150}
    assert len(validate_job_id(default_job_id(long))) <= 200


def test_trigger_serialization_round_trips():
    from airflow.sdk.module_loading import import_string

    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    trigger = LambdaMapReducePhaseTrigger(job_dir="s3://b/j", phase="map", poll_interval=2.5, timeout=30,
                                          aws_conn_id="conn")
    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert json.loads(json.dumps(kwargs)) == kwargs


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_trigger_reports_success_failure_and_timeout(tmp_path):
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    spec = mapped_job(tmp_path, "a b\nb c\n", "trig")
    done = _first_event(LambdaMapReducePhaseTrigger(job_dir=spec.job_dir, phase="map", aws_conn_id=None))
    assert done == {"status": "success", "job_dir": spec.job_dir, "phase": "map", "done": 1, "total": 1}
    waiting = _first_event(LambdaMapReducePhaseTrigger(job_dir=spec.job_dir, phase="reduce", poll_interval=0.05,
                                                       timeout=0.2, aws_conn_id=None))
    assert waiting["status"] == "timeout" and "did not finish within 0 seconds" in waiting["message"]
    (tmp_path / "out" / "_jobs" / "trig" / "failed.json").write_text(json.dumps({"message": "map task 0 of 1 failed: boom"}))
    failed = _first_event(LambdaMapReducePhaseTrigger(job_dir=spec.job_dir, phase="reduce", aws_conn_id=None))
    assert failed["status"] == "error" and failed["message"] == "map task 0 of 1 failed: boom"


def test_sensor_defers_then_validates_the_event(tmp_path):
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from airflow_provider_lambdamr.sensors.lambda_mr import LambdaMapReduceSensor
    from airflow_provider_lambdamr.triggers.lambda_mr import LambdaMapReducePhaseTrigger

    spec = mapped_job(tmp_path, "a b\nb c\n", "trig")
    sensor = LambdaMapReduceSensor(task_id="s", job_dir=spec.job_dir, phase="reduce", deferrable=True,
                                   timeout=120, poke_interval=3, aws_conn_id=None)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute({})
    assert isinstance(info.value.trigger, LambdaMapReducePhaseTrigger)
    assert info.value.method_name == "execute_complete"
    assert info.value.trigger.serialize()[1]["poll_interval"] == 3
    sensor.execute_complete({}, {"status": "success", "phase": "reduce", "job_dir": spec.job_dir})
    with pytest.raises(AirflowException, match="did not finish"):
        sensor.execute_complete({}, {"status": "timeout", "message": "the reduce phase did not finish"})
    with pytest.raises(AirflowException, match="without a trigger event"):
        sensor.execute_complete({}, None)
    # poke mode: done for map, a recorded failure fails the sensor with its message
    assert LambdaMapReduceSensor(task_id="p", job_dir=spec.job_dir, phase="map", aws_conn_id=None).poke({})
    (tmp_path / "out" / "_jobs" / "trig" / "failed.json").write_text(json.dumps({"message": "reduce task x failed"}))
    with pytest.raises(AirflowException, match="LambdaMR job failed: reduce task x failed"):
        LambdaMapReduceSensor(task_id="p", job_dir=spec.job_dir, phase="reduce", aws_conn_id=None).poke({})


def test_default_deferrable_comes_from_config(monkeypatch):
    import importlib

    import airflow_provider_lambdamr.sensors.lambda_mr as mod

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    try:
        reloaded = importlib.reload(mod)
        assert reloaded.LambdaMapReduceSensor(task_id="s", job_dir="/x").deferrable is True
    finally:
        monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
        importlib.reload(mod)
