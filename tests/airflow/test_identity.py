"""What identifies a job from Airflow: job_params values, default job ids, and a cleared run."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from lambda_src import storage as st
from lambda_src.task import JOB_ID_RE, validate_job_id
from tests.airflow.test_dag_runs import _register, _state
from tests.helpers import read_counts

# -- job_params ---------------------------------------------------------------------------


def _map_op(task_id: str = "m", **kwargs):
    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator

    return LambdaMapOperator(task_id=task_id, job="wordcount", inputs="/in", output_uri="/out", **kwargs)


_CTX = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r1"}


def test_job_params_strings_pass_and_other_json_values_are_json_encoded():
    params = {"s": "True", "t": True, "f": False, "n": None, "i": 7, "x": 1.5, "l": [1, None, "a"],
              "d": {"b": 1, "a": {"z": [True]}}}
    got = _map_op(job_params=params).build_spec(_CTX).params
    assert got == {"s": "True", "t": "true", "f": "false", "n": "null", "i": "7", "x": "1.5",
                   "l": '[1, null, "a"]', "d": '{"a": {"z": [true]}, "b": 1}'}
    assert {k: json.loads(v) for k, v in got.items() if k != "s"} == {k: v for k, v in params.items() if k != "s"}
    # the same mapping in another order is the same parameter, so the same job identity
    reordered = _map_op(job_params={"d": {"a": {"z": [True]}, "b": 1}}).build_spec(_CTX).params
    assert reordered["d"] == got["d"]


@pytest.mark.parametrize(("params", "message"), [
    ({"day": dt.date(2024, 1, 2)}, r"job_params\['day'\] is a date \(datetime.date\(2024, 1, 2\)\)"),
    ({"tags": {"a", "b"}}, r"job_params\['tags'\] is a set"),
    ({"obj": object()}, r"job_params\['obj'\] is a object"),
    ({"cfg": {"when": dt.datetime(2024, 1, 1)}}, r"job_params\['cfg'\]\['when'\] is a datetime"),
    ({"cfg": [1, b"raw"]}, r"job_params\['cfg'\]\[1\] is a bytes"),
    ({"cfg": {1: "a"}}, r"job_params\['cfg'\] has the key 1, a int: JSON keys are strings"),
    ({"x": float("nan")}, r"job_params\['x'\] is nan, which JSON cannot represent"),
    ({1: "a"}, r"job_params name 1 is a int, not a string"),
    (["a", "b"], r"job_params must be a mapping of names to values, got list"),
])
def test_job_params_of_other_types_are_refused_by_name(params, message):
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match=r"Invalid LambdaMR job for task m: " + message):
        _map_op(job_params=params).build_spec(_CTX)


def test_job_params_rendered_as_native_objects_are_json_encoded_or_refused():
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException

    with DAG(dag_id="native", schedule=None, render_template_as_native_obj=True,
             params={"flag": True, "cfg": {"b": 2, "a": 1}}) as dag:
        op = _map_op(job_params={"n": "{{ 1 + 1 }}", "flag": "{{ params.flag }}", "cfg": "{{ params.cfg }}",
                                 "word": "{{ 'x' }}"})
        dated = _map_op(task_id="dated", job_params={"when": "{{ logical_date }}"})
    context = {"params": {"flag": True, "cfg": {"b": 2, "a": 1}}, "logical_date": dt.datetime(2024, 1, 2)}
    op.render_template_fields(context, jinja_env=dag.get_template_env())
    assert op.job_params == {"n": 2, "flag": True, "cfg": {"b": 2, "a": 1}, "word": "x"}  # native objects
    assert op.build_spec(_CTX).params == {"n": "2", "flag": "true", "cfg": '{"a": 1, "b": 2}', "word": "x"}
    dated.render_template_fields(context, jinja_env=dag.get_template_env())
    with pytest.raises(AirflowException, match=r"task dated: job_params\['when'\] is a datetime"):
        dated.build_spec(_CTX)


# -- default job ids ----------------------------------------------------------------------


def _job_id(dag_id: str, run_id: str) -> str:
    from airflow_provider_lambdamr.operators.lambda_mr import default_job_id

    return default_job_id({"dag": SimpleNamespace(dag_id=dag_id), "run_id": run_id})


def _valid(job_id: str) -> bool:
    # fullmatch: JOB_ID_RE ends in "$", which also matches before a trailing newline
    return JOB_ID_RE.fullmatch(job_id) is not None and ".." not in job_id and validate_job_id(job_id) == job_id


def test_safe_run_ids_keep_their_readable_job_id():
    assert _job_id("my_dag", "manual_run-1.2+x") == "my_dag__manual_run-1.2+x"
    # an Airflow-made run id has ":", so it gets a hash (it used to be the sanitized form alone)
    scheduled = _job_id("my_dag", "scheduled__2024-01-01T00:00:00+00:00")
    prefix, _, digest = scheduled.partition("=")
    assert prefix == "my_dag__scheduled__2024-01-01T00-00-00+00-00" and len(digest) == 16
    assert _valid(scheduled)


@pytest.mark.parametrize(("a", "b"), [
    (("d", "a:b"), ("d", "a-b")),  # sanitizing maps both to d__a-b
    (("d", "a:b"), ("d", "a;b")),
    (("a__b", "c"), ("a", "b__c")),  # "__" in the dag id: both read a__b__c
    (("a_", "_b"), ("a", "__b")),  # both read a___b
    (("d", "x" * 300), ("d", "x" * 300 + "y")),  # alike up to any truncation
    (("d", "r=" + "0" * 16), ("d", "r")),  # "=" in a run id cannot pose as a hashed id
    (("d", "..x"), ("d", ".x")),
    (("d", "a\n"), ("d", "a")),
])
def test_run_ids_that_sanitizing_would_merge_get_distinct_job_ids(a, b):
    assert _job_id(*a) != _job_id(*b)
    assert _valid(_job_id(*a)) and _valid(_job_id(*b))


def test_a_run_id_made_to_look_like_a_hashed_id_does_not_take_it():
    hashed = _job_id("d", "r:")
    assert _job_id("d", hashed.removeprefix("d__")) != hashed


_dag_ids = hs.text(alphabet="ab_.-é", min_size=1, max_size=8) | hs.text(alphabet="ab_", min_size=150, max_size=260)
_run_ids = (hs.text(alphabet="ab_:+-.=é\n ", max_size=10) | hs.text(max_size=20)
            | hs.text(alphabet="ab:", min_size=150, max_size=260))


@hs.composite
def _confusable_pairs(draw) -> list[tuple[str, str]]:
    """Pairs whose ``dag_id__run_id`` reads the same, split at every ``__``, and the same
    pairs with ':' for '-' (sanitizing maps both to '-')."""
    text = draw(hs.text(alphabet="a_", min_size=1, max_size=5)) + "__" + draw(hs.text(alphabet="a_-:", max_size=6))
    pairs = [(text[:i], text[i + 2:]) for i in range(len(text) - 1) if text[i:i + 2] == "__"]
    return pairs + [(d.replace("-", ":"), r.replace("-", ":")) for d, r in pairs]


@settings(max_examples=600, deadline=None)
@given(hs.lists(hs.tuples(_dag_ids, _run_ids), max_size=8), _confusable_pairs())
def test_default_job_ids_are_valid_deterministic_and_injective(random_pairs, confusable):
    pairs = list(dict.fromkeys(random_pairs + confusable))
    ids = [_job_id(*p) for p in pairs]
    assert all(_valid(i) for i in ids), ids
    assert ids == [_job_id(*p) for p in pairs]
    assert len(set(ids)) == len(pairs), list(zip(pairs, ids, strict=True))


# -- a cleared run, recompute ---------------------------------------------------------------

_WHEN = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def _wordcount_dag(tmp_path, *, recompute: bool, result_asset: str | None):
    from airflow.sdk import DAG

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    (tmp_path / "in.txt").write_text("a b a\nc\n")
    with DAG(dag_id=f"lambdamr_identity_{uuid.uuid4().hex[:6]}", schedule=None,
             start_date=dt.datetime(2024, 1, 1)) as dag:
        m = LambdaMapOperator(task_id="map", job="wordcount", inputs=str(tmp_path / "in.txt"),
                              output_uri=str(tmp_path / "out"), workers=1, aws_conn_id=None, recompute=recompute)
        r = LambdaReduceOperator(task_id="reduce", job_dir=m.output["job_dir"], workers=1, aws_conn_id=None,
                                 recompute=recompute, result_asset=result_asset)
        m >> r
    _register(dag)
    return dag


def _asset_events(uri: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [(e.source_run_id, e.extra) for e in session.query(AssetEvent)
                .join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(AssetModel.uri == uri)]


def _run_twice(dag, tmp_path, capfd) -> list[tuple[str, int, dict]]:
    """dag.test() twice for one logical date (the same run id, its task instances cleared):
    each run's log output (structlog writes it to stdout), the part file's mtime and ``_SUCCESS``."""
    runs = []
    for _ in range(2):
        capfd.readouterr()
        dr = dag.test(logical_date=_WHEN, run_after=_WHEN)
        assert _state(dr) == "success"
        out = tmp_path / "out"
        runs.append(("".join(capfd.readouterr()), (out / "part-00000").stat().st_mtime_ns,
                     json.loads((out / "_SUCCESS").read_text())))
    return runs


@pytest.mark.parametrize("fixed_asset", [False, True], ids=["alias", "result_asset"])
def test_a_cleared_run_does_not_recompute_a_committed_job(airflow_db, tmp_path, capfd, fixed_asset):
    asset_uri = st.normalize(str(tmp_path / ("fixed" if fixed_asset else "out")))
    dag = _wordcount_dag(tmp_path, recompute=False, result_asset=asset_uri if fixed_asset else None)
    (first_logs, *first), (second_logs, *second) = _run_twice(dag, tmp_path, capfd)
    assert read_counts(str(tmp_path / "out")) == {"a": 2, "b": 1, "c": 1}
    assert second == first, "the committed result was rewritten"
    summary = first[1]
    expected = (f"job {summary['job_id']} already committed at {summary['finished_at']}; "
                f"not recomputed (pass recompute=True to recompute)")
    assert "already committed" not in first_logs
    assert second_logs.count(expected) == 2, "both the map and the reduce task say so"
    events = _asset_events(asset_uri)
    assert len(events) == 1, events
    assert events[0][1]["output_records"] == 3


def test_a_cleared_run_with_recompute_runs_the_job_again(airflow_db, tmp_path, capfd):
    dag = _wordcount_dag(tmp_path, recompute=True, result_asset=None)
    (first_logs, first_mtime, first), (second_logs, second_mtime, second) = _run_twice(dag, tmp_path, capfd)
    assert "already committed" not in first_logs
    assert f"job {first['job_id']} already committed at {first['finished_at']}; recomputing" in second_logs
    assert second_mtime != first_mtime, "the part file was not rewritten"
    assert second["job_id"] == first["job_id"] and second["finished_at"] >= first["finished_at"]
    assert read_counts(str(tmp_path / "out")) == {"a": 2, "b": 1, "c": 1}
    assert len(_asset_events(st.normalize(str(tmp_path / "out")))) == 2


def test_a_map_only_job_commits_through_the_compact_reduce_task(airflow_db, tmp_path):
    """Old: the reduce task of a map-only job (amplab-1a) failed with a TypeError in the rounds."""
    from airflow.sdk import DAG

    from airflow_provider_lambdamr.operators.lambda_mr import LambdaMapOperator, LambdaReduceOperator

    (tmp_path / "rankings.txt").write_text("http://a,1200,3\nhttp://b,5,1\nhttp://c,5000,2\n")
    with DAG(dag_id=f"lambdamr_map_only_{uuid.uuid4().hex[:6]}", schedule=None,
             start_date=dt.datetime(2024, 1, 1)) as dag:
        m = LambdaMapOperator(task_id="map", job="amplab-1a", inputs=str(tmp_path / "rankings.txt"),
                              output_uri=str(tmp_path / "out"), workers=1, aws_conn_id=None)
        r = LambdaReduceOperator(task_id="reduce", job_dir=m.output["job_dir"], workers=1, aws_conn_id=None)
        m >> r
    _register(dag)
    assert _state(dag.test(logical_date=_WHEN, run_after=_WHEN)) == "success"
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert success["files"] == ["part-m-00000"]
    rows = (tmp_path / "out" / "part-m-00000").read_text().splitlines()
    assert sorted(rows) == ["http://a,1200", "http://c,5000"]
