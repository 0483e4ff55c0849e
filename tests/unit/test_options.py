"""Job options are declared once, on JobSpec's fields: the CLI and the operators follow them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import pytest

from airflow_provider_lambdamr import cli
from airflow_provider_lambdamr.engine.runtimes import RUNTIMES, create_runtime
from airflow_provider_lambdamr.engine.spec import JobSpec, load_spec, option_default
from airflow_provider_lambdamr.operators.lambda_mr import (
    MAP_OPTIONS,
    LambdaMapOperator,
    LambdaReduceOperator,
)

OPTIONS = list(dataclasses.fields(JobSpec))
BY_NAME = {f.name: f for f in OPTIONS}

#: JobSpec options that are not keywords of the map operator, and why.
NOT_MAP_KWARGS = {
    "keep_intermediates": "the map task always keeps its runs: the reduce task reads them",
}
#: Operator defaults that differ in form from the spec's, and why they mean the same.
OPERATOR_DEFAULT_FORMS = {
    "params": (None, "no job_params is no parameters"),
    "input_format": (None, "no input_format: every input's format is the job's or inferred"),
}


def _run_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def _cli_actions() -> dict[str, argparse.Action]:
    """The ``run`` arguments by destination."""
    return {a.dest: a for a in _run_parser()._actions}


def _kwarg(f: dataclasses.Field) -> str:
    return f.metadata["option"].kwarg or f.name


def test_every_field_is_declared_as_an_option():
    for f in OPTIONS:
        opt = f.metadata.get("option")
        assert opt is not None, f"JobSpec.{f.name} has no Option metadata"
        assert opt.help.strip(), f"JobSpec.{f.name} has no help text"


def test_every_option_is_a_run_flag_and_a_map_operator_kwarg():
    actions = _cli_actions()
    params = inspect.signature(LambdaMapOperator.__init__).parameters
    for f in OPTIONS:
        assert f.name in actions, f"lambdamr run has no flag for JobSpec.{f.name}"
        flag = f.metadata["option"].flag_for(f.name, option_default(f))
        assert flag in (actions[f.name].option_strings or [actions[f.name].dest]), (f.name, flag)
        if f.name in NOT_MAP_KWARGS:
            assert _kwarg(f) not in params
            continue
        assert _kwarg(f) in params, f"LambdaMapOperator has no keyword for JobSpec.{f.name}"
    assert {f.name for f in MAP_OPTIONS} == set(BY_NAME) - set(NOT_MAP_KWARGS)


def test_the_new_options_are_on_both_sides():
    actions = _cli_actions()
    params = inspect.signature(LambdaMapOperator.__init__).parameters
    for name in ("max_line_bytes", "job_timeout_s", "speculation", "max_files_per_task", "speculation_factor",
                 "speculation_min_s"):
        assert name in actions and name in params, name


def test_defaults_agree():
    # The CLI leaves an option it was not given to the spec: the spec's default is the only one.
    args = _run_parser().parse_args(["wordcount", "--input", "/in", "--output", "/out"])
    assert set(cli._given_options(args)) == {"job", "inputs", "output"}
    for name, action in _cli_actions().items():
        if name in BY_NAME and action.option_strings:
            assert action.default is argparse.SUPPRESS, f"--{name} has its own default {action.default!r}"
    params = inspect.signature(LambdaMapOperator.__init__).parameters
    for f in MAP_OPTIONS:
        default = params[_kwarg(f)].default
        if f.name in OPERATOR_DEFAULT_FORMS:
            assert default == OPERATOR_DEFAULT_FORMS[f.name][0]
        elif option_default(f) is dataclasses.MISSING:
            assert default is inspect.Parameter.empty, f"{_kwarg(f)} is optional on the operator only"
        else:
            assert default == option_default(f), f"{_kwarg(f)}: operator {default!r}, JobSpec {option_default(f)!r}"
            assert type(default) is type(option_default(f)), _kwarg(f)


def test_the_reduce_operator_overrides_the_recorded_runtime_options():
    params = inspect.signature(LambdaReduceOperator.__init__).parameters
    for f in OPTIONS:
        if f.metadata["option"].runtime:
            assert params[_kwarg(f)].default is None, f"{_kwarg(f)}: a reduce task uses the recorded value"
    for name in ("keep_intermediates", "recompute"):
        assert params[name].default == option_default(BY_NAME[name])


def test_help_and_docs_come_from_the_spec():
    actions = _cli_actions()
    map_doc = inspect.getdoc(LambdaMapOperator)
    reduce_doc = inspect.getdoc(LambdaReduceOperator)
    for f in OPTIONS:
        help_text = f.metadata["option"].help
        assert actions[f.name].help.startswith(help_text), f.name
        if f.name in MAP_OPTIONS_WITH_OWN_DOCS:
            assert f":param {_kwarg(f)}: " in map_doc
        elif f.name not in NOT_MAP_KWARGS:
            assert f":param {_kwarg(f)}: {help_text}" in map_doc, f.name
        if f.metadata["option"].runtime:
            assert f":param {_kwarg(f)}: {help_text}" in reduce_doc, f.name
    deferral = set(inspect.signature(LambdaMapOperator.__mro__[1].__init__).parameters) - {"self", "kwargs"}
    assert deferral == {"deferrable", "wait_for_completion", "poll_interval", "cancel_on_kill"}
    assert map_doc.count(":param ") == len(set(inspect.signature(LambdaMapOperator.__init__).parameters)
                                           - {"self", "kwargs"}) + 4 + len(deferral)  # + aws_conn_id, region_name,
    # verify, botocore_config; the deferral keywords of the operators' shared base


#: Map keywords whose docs say how the operator converts them (beyond the spec's help).
MAP_OPTIONS_WITH_OWN_DOCS = ("inputs", "job_id", "params", "recompute")


def test_template_fields_are_the_templated_options():
    templated = {_kwarg(f) for f in MAP_OPTIONS if f.metadata["option"].templated}
    connection = {"aws_conn_id", "region_name", "verify"}  # templated on every task, as amazon's are
    assert set(LambdaMapOperator.template_fields) == templated | connection
    runtime_templated = {_kwarg(f) for f in OPTIONS if f.metadata["option"].runtime and f.metadata["option"].templated}
    # launched: an XComArg (map_task.output) is resolved only in a templated field
    assert set(LambdaReduceOperator.template_fields) == runtime_templated | {"job_dir", "launched"} | connection


def test_runtime_choices_come_from_the_registry():
    assert tuple(_cli_actions()["runtime"].choices) == tuple(RUNTIMES)
    with pytest.raises(ValueError, match=r"runtime must be one of local, service, aws, got 'gcp'"):
        JobSpec(job="wordcount", inputs={"": ["/in"]}, output="/out", runtime="gcp")


BOUNDED = [f for f in OPTIONS if f.metadata["option"].low is not None]


@pytest.mark.parametrize("f", BOUNDED, ids=[f.name for f in BOUNDED])
def test_bounds_are_checked_once_and_everywhere(f, tmp_path):
    """The spec, the CLI and the map operator refuse the same out-of-bounds value, naming it."""
    opt = f.metadata["option"]
    integer = str(f.type).startswith("int")
    exclusive = opt.above_low
    bad = opt.low if exclusive else opt.low - (1 if integer else 0.5)
    base = {"job": "wordcount", "inputs": {"": [str(tmp_path / "in")]}, "output": str(tmp_path / "out")}
    with pytest.raises(ValueError, match=rf"^{f.name} must be"):
        JobSpec(**base, **{f.name: bad})
    lowest = opt.low + 0.5 if exclusive else opt.low
    assert getattr(JobSpec(**base, **{f.name: lowest}), f.name) == lowest
    if opt.high is not None:
        with pytest.raises(ValueError, match=rf"^{f.name} must be"):
            JobSpec(**base, **{f.name: opt.high + 1})
        assert getattr(JobSpec(**base, **{f.name: opt.high}), f.name) == opt.high
    flag = opt.flag_for(f.name, option_default(f))
    with pytest.raises(SystemExit):
        _run_parser().parse_args(["wordcount", "--input", "/in", "--output", "/out", flag, str(bad)])
    op = LambdaMapOperator(task_id="m", job="wordcount", inputs=str(tmp_path / "in"), output_uri=str(tmp_path / "out"),
                           job_id="j", **{_kwarg(f): bad})
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match=rf"Invalid LambdaMR job for task m: {f.name} must be"):
        op.build_spec({})


@pytest.mark.parametrize("name", ["timeout_s", "job_timeout_s"])
def test_a_time_limit_of_zero_is_refused(name, tmp_path):
    with pytest.raises(ValueError, match=rf"^{name} must be a number above 0"):
        JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"), **{name: 0})


def test_the_cli_names_the_flag_of_a_bad_value(capsys):
    with pytest.raises(SystemExit):
        _run_parser().parse_args(["wordcount", "--input", "/in", "--output", "/out", "--partitions", "0"])
    assert "argument --partitions: partitions must be an integer from 1 to 100000, got 0" in capsys.readouterr().err


def _recorded_job(tmp_path, **options) -> JobSpec:
    """A job directory holding a manifest as the driver writes it (``spec.to_dict()``)."""
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   job_id="j", **options)
    (tmp_path / "out" / "_jobs" / "j").mkdir(parents=True)
    (tmp_path / "out" / "_jobs" / "j" / "jobdata.json").write_text(json.dumps({"spec": spec.to_dict()}))
    return spec


def test_a_reduce_task_needs_only_the_job_directory(tmp_path):
    recorded = _recorded_job(tmp_path, runtime="aws", role_arn="arn:aws:iam::1:role/r", function_prefix="fp",
                             architecture="arm64", runtime_version="python3.13", concurrency=7,
                             code_uri="s3://b/code", memory_mb=512, timeout_s=60.0, tracing=True, workers=3)
    op = LambdaReduceOperator(task_id="r", job_dir=recorded.job_dir)
    spec = op.load_spec()
    assert spec.runtime_options() == recorded.runtime_options()
    assert spec.runtime_options()["role_arn"] == "arn:aws:iam::1:role/r"
    # A reduce task may override one of them; the others stay as recorded.
    spec = LambdaReduceOperator(task_id="r", job_dir=recorded.job_dir, runtime="local", workers=1).load_spec()
    assert spec.runtime_options() == {**recorded.runtime_options(), "runtime": "local", "workers": 1}
    assert load_spec(recorded.job_dir).to_dict() == recorded.to_dict()


def test_runtime_options_are_all_the_runtime_factories_take(tmp_path):
    spec = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "out"),
                   workers=2, memory_mb=256, timeout_s=30.0, tracing=True)
    runtime = create_runtime(spec.runtime, spec.runtime_options(), env=lambda: {"X": "1"})
    assert (runtime.name, runtime.workers, runtime.memory_mb, runtime.tracing) == ("local", 2, 256, True)
    assert runtime.env["X"] == "1"
    with pytest.raises(ValueError, match="--runtime aws needs --role ARN"):
        create_runtime("aws", {**spec.runtime_options(), "runtime": "aws"}, lambda_client=lambda: None)
