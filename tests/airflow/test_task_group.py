"""The expanded form: a task group whose mapped tasks are the map fan-out and the reduce rounds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_provider_lambdamr.engine import slices
from lambda_src import storage as st
from tests.airflow.test_dag_runs import _TI, _dag, _register, _state
from tests.helpers import read_counts, read_rows
from tests.integration.test_amplab_duckdb import assert_equal_to_duckdb
from tests.integration.test_service import svc_dir  # noqa: F401 - the fixture


def _tis(dr) -> dict[str, list]:
    """The run's task instances by task id (a mapped task's instances in map-index order)."""
    out: dict[str, list] = {}
    for ti in sorted(dr.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        out.setdefault(ti.task_id, []).append(ti)
    return out


def _states(tis: list) -> set[str]:
    return {str(getattr(t.state, "value", t.state)) for t in tis}


def _part_bytes(output: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(output.glob("part-*"))}


def test_batches_are_bounded_contiguous_and_cover_every_item():
    assert [len(b) for b in slices.batches(range(100), 32)] == [4] * 4 + [3] * 28
    for n in (0, 1, 5, 31, 32, 33, 100, 5000):
        got = slices.batches(range(n), 32)
        assert len(got) == min(n, 32) and [i for b in got for i in b] == list(range(n))
        assert not got or max(map(len, got)) - min(map(len, got)) <= 1


def test_max_rounds_is_what_a_partition_of_that_many_runs_needs():
    from airflow_provider_lambdamr.engine.rounds import PartitionRounds

    for runs, fan_in in ((1, 16), (16, 16), (17, 16), (256, 16), (257, 16), (5000, 16), (100, 4), (7, 2)):
        rounds = PartitionRounds(0, [f"r{i}" for i in range(runs)], fan_in)
        needed = 1
        while not rounds.final:
            rounds.inputs = [str(g) for g in range(len(rounds.groups()))]
            needed += 1
        assert slices.max_rounds(runs, fan_in) == needed, (runs, fan_in)


def test_expanded_2a_example_equals_duckdb_and_the_compact_form_byte_for_byte(airflow_db, tmp_path,
                                                                               svc_dir):  # noqa: F811
    """The expanded example (deferrable, on a test-private local function service) against
    DuckDB and, byte for byte, against the compact example (the in-process local runtime)."""
    from airflow_provider_lambdamr.engine import amplab_gen

    files = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=20_000, files=3, seed=8)
    out = tmp_path / "expanded"
    dr = _dag("example_lambdamr_amplab_2a_expanded").test(run_conf={"input": str(tmp_path / "uv"),
                                                                    "output": str(out)})
    assert _state(dr) == "success"
    success = json.loads((out / "_SUCCESS").read_text())
    assert_equal_to_duckdb(str(out), [st.local_path(f["uri"]) for f in files], success)
    tis = _tis(dr)
    assert len(tis["amplab_2a.map"]) == success["tasks"]["map"] > 1, "an instance per map task (fewer than 32)"
    assert _states(tis["amplab_2a.round_1"]) == {"success"}
    for rnd in range(2, slices.max_rounds(512, 8) + 1):  # a few runs per partition: one round
        assert _states(tis[f"amplab_2a.round_{rnd}"]) == {"skipped"}, rnd
    assert _states(tis["amplab_2a.commit"]) == {"success"}
    assert not (out / "_jobs" / success["job_id"] / "map").exists(), "the commit removes the intermediates"

    compact = tmp_path / "compact"
    dr = _dag("example_lambdamr_amplab_2a").test(run_conf={"input": str(tmp_path / "uv"), "output": str(compact)})
    assert _state(dr) == "success"
    assert _part_bytes(out) and _part_bytes(out) == _part_bytes(compact)


def _wordcount_dag(dag_id: str, inputs: str, output: str, **kwargs):
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_lambdamr.task_group import lambdamr_task_group

    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
        tasks = lambdamr_task_group("wc", inputs=inputs, output_uri=output, aws_conn_id=None, **kwargs)
    _register(dag)
    return dag, tasks


def test_many_splits_map_in_at_most_32_instances_and_rounds_follow_the_job(airflow_db, tmp_path):
    words = Counter()
    (tmp_path / "in").mkdir()
    for i in range(100):
        line = f"w{i % 7} w{i % 13} common"
        words.update(line.split())
        (tmp_path / "in" / f"f{i:03d}.txt").write_text(line + "\n")
    out = tmp_path / "out"
    dag, _ = _wordcount_dag("lambdamr_many_splits", str(tmp_path / "in"), str(out), job="wordcount",
                            max_files_per_task=1, partitions=2, workers=2)
    assert slices.max_rounds(5000, 16) == 4
    dr = dag.test()
    assert _state(dr) == "success"
    assert read_counts(str(out)) == dict(words)
    tis = _tis(dr)
    assert len(tis["wc.map"]) == 32 and _states(tis["wc.map"]) == {"success"}
    # 100 runs per partition: round 1 merges 7 groups of 16, round 2 (final) the 7 results
    assert _states(tis["wc.round_1"]) == _states(tis["wc.round_2"]) == {"success"}
    assert _states(tis["wc.round_3"]) == _states(tis["wc.round_4"]) == {"skipped"}
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["tasks"]["map"] == 100
    # the compact engine (one driver, every phase) runs the same tasks and writes the same bytes
    from airflow_provider_lambdamr.engine.driver import Driver
    from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
    from airflow_provider_lambdamr.engine.spec import JobSpec

    compact = JobSpec(job="wordcount", inputs={"": [str(tmp_path / "in")]}, output=str(tmp_path / "compact"),
                      job_id="compact", max_files_per_task=1, partitions=2)
    with LocalRuntime(workers=2) as rt:
        reference = Driver(compact, rt).run()
    assert success["tasks"]["reduce"] == reference["tasks"]["reduce"] > 2
    assert success["invocations"]["map"]["invocations"] == reference["invocations"]["map"]["invocations"] == 100
    assert _part_bytes(out) == _part_bytes(tmp_path / "compact")


def test_a_multi_step_job_has_a_task_group_per_step():
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_lambdamr.task_group import lambdamr_task_group

    with DAG(dag_id="lambdamr_steps", schedule=None, start_date=datetime(2024, 1, 1)) as dag:
        tasks = lambdamr_task_group("q3a", job="amplab-3a", inputs={"uservisits": "/in/uv", "rankings": "/in/rk"},
                                    output_uri="/out", fan_in=16, max_map_tasks=300)
    groups = {k for k, v in tasks.group.children.items() if hasattr(v, "children")}
    assert groups == {"q3a.step_1", "q3a.step_2", "q3a.step_3"}
    rounds = slices.max_rounds(300, 16)
    for step in (1, 2, 3):
        ids = set(tasks.group.children[f"q3a.step_{step}"].children)
        expected = {f"q3a.step_{step}.{t}" for t in ["map", "map_commit"]
                    + [f"round_{r}{s}" for r in range(1, rounds + 1) for s in ("", "_groups")]}
        if step > 1:
            expected.add(f"q3a.step_{step}.plan_map")
        assert ids == expected
        assert dag.get_task(f"q3a.step_{step}.map").is_mapped
    # every task reads the job's directory from plan; steps follow each other's last round
    assert dag.get_task("q3a.step_2.plan_map").upstream_task_ids == {"q3a.plan", f"q3a.step_1.round_{rounds}"}
    assert dag.get_task("q3a.commit").upstream_task_ids == {"q3a.plan", f"q3a.step_3.round_{rounds}"}


def test_clearing_one_map_instance_reruns_only_its_share(tmp_path):
    from airflow_provider_lambdamr.task_group import LambdaMapBatchOperator, LambdaMapReducePlanOperator
    from lambda_src import contract

    (tmp_path / "in").mkdir()
    for i in range(6):
        (tmp_path / "in" / f"f{i}.txt").write_text(f"w{i} common\n")
    ctx = {"dag": SimpleNamespace(dag_id="d"), "run_id": "manual__1", "ti": _TI()}
    batches = LambdaMapReducePlanOperator(task_id="plan", job="wordcount", inputs=str(tmp_path / "in"),
                                       output_uri=str(tmp_path / "out"), max_files_per_task=1,
                                       max_instances=3, aws_conn_id=None).execute(ctx)
    assert batches == [[0, 1], [2, 3], [4, 5]]
    job_dir = ctx["ti"].pushed["job_dir"]

    def instance(batch: list[int]) -> int:
        """The mapped instance's callable: how many map tasks it ran."""
        return LambdaMapBatchOperator(task_id="map", job_dir=job_dir, indexes=batch,
                                      aws_conn_id=None).execute(ctx)

    assert [instance(b) for b in batches] == [2, 2, 2]
    status = Path(st.local_path(contract.status_uri(job_dir, contract.map_status_key(0, 3))))
    first = json.loads(status.read_text())
    status.unlink()  # as if task 3's work were lost: its instance (batch 1) is cleared and rerun
    assert instance(batches[0]) == 0
    assert instance(batches[1]) == 1
    assert json.loads(status.read_text())["task"]["index"] == first["task"]["index"] == 3
    assert [instance(b) for b in batches] == [0, 0, 0]


def test_a_job_with_more_map_tasks_than_the_dag_was_built_for_fails_naming_the_bound(tmp_path):
    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_lambdamr.task_group import LambdaMapReducePlanOperator

    (tmp_path / "in").mkdir()
    for i in range(5):
        (tmp_path / "in" / f"f{i}.txt").write_text("a\n")
    ctx = {"dag": SimpleNamespace(dag_id="d"), "run_id": "manual__1", "ti": _TI()}
    op = LambdaMapReducePlanOperator(task_id="plan", job="wordcount", inputs=str(tmp_path / "in"),
                                     output_uri=str(tmp_path / "out"), max_files_per_task=1, max_map_tasks=4,
                                     aws_conn_id=None)
    with pytest.raises(AirflowException, match="5 map tasks in step 1, more than the max_map_tasks=4"):
        op.execute(ctx)


def test_a_rerun_of_a_committed_job_maps_nothing_and_keeps_the_result(airflow_db, tmp_path):
    import datetime as dt

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"f{i}.txt").write_text(f"w{i} common\n")
    out = tmp_path / "out"
    dag, _ = _wordcount_dag("lambdamr_rerun", str(tmp_path / "in"), str(out), job="wordcount",
                            max_files_per_task=1)
    when = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    assert _state(dag.test(logical_date=when, run_after=when)) == "success"
    part = out / "part-00000"
    before = (part.stat().st_mtime_ns, (out / "_SUCCESS").read_bytes())
    dr = dag.test(logical_date=when, run_after=when)  # the same run again: the same job id
    assert _state(dr) == "success"
    tis = _tis(dr)
    assert _states(tis["wc.map"]) == _states(tis["wc.round_1"]) == {"skipped"}
    assert _states(tis["wc.map_commit"]) == _states(tis["wc.commit"]) == {"success"}
    assert (part.stat().st_mtime_ns, (out / "_SUCCESS").read_bytes()) == before
    assert read_counts(str(out)) == {"w0": 1, "w1": 1, "w2": 1, "common": 3}


def test_expanded_3a_example_runs_a_group_per_step_and_equals_duckdb(airflow_db, tmp_path):
    from airflow_provider_lambdamr.engine import amplab_gen
    from tests.integration.test_amplab_duckdb import duckdb_3a

    rk = amplab_gen.generate(str(tmp_path / "rk"), table="rankings", rows=3_000, files=2, seed=12)
    uv = amplab_gen.generate(str(tmp_path / "uv"), table="uservisits", rows=40_000, files=3, seed=12,
                             rankings_rows=3_000)
    out = str(tmp_path / "result")
    dr = _dag("example_lambdamr_amplab_3a_expanded").test(
        run_conf={"uservisits": str(tmp_path / "uv"), "rankings": str(tmp_path / "rk"), "output": out})
    assert _state(dr) == "success"
    ((ip, revenue, avg_rank),) = duckdb_3a([st.local_path(f["uri"]) for f in uv],
                                           [st.local_path(f["uri"]) for f in rk], "1980-01-01", "1980-04-01", 1)
    ((got_ip, got_revenue, got_avg),) = read_rows(out)
    assert (got_ip, float(got_revenue), float(got_avg)) == (ip, pytest.approx(revenue), pytest.approx(avg_rank))
    tis = _tis(dr)
    for step in (1, 2, 3):
        assert _states(tis[f"amplab_3a.step_{step}.map"]) == {"success"}
        assert _states(tis[f"amplab_3a.step_{step}.round_1"]) == {"success"}
        assert _states(tis[f"amplab_3a.step_{step}.round_2"]) == {"skipped"}
    success = json.loads((tmp_path / "result" / "_SUCCESS").read_text())
    assert success["steps"] == 3


def test_a_map_only_job_is_refused_when_the_dag_is_parsed():
    from datetime import datetime

    from airflow.sdk import DAG

    from airflow_provider_lambdamr.task_group import lambdamr_task_group

    with (DAG(dag_id="lambdamr_map_only", schedule=None, start_date=datetime(2024, 1, 1)),
          pytest.raises(ValueError, match="job 'amplab-1a' is map-only")):
        lambdamr_task_group("q1a", job="amplab-1a", inputs="/in/rk", output_uri="/out")
