"""A handler implementation, held to the written contract (docs/contract.md).

Everything here goes through events and storage only: events are built as JSON and checked
against docs/schemas/event.schema.json, records are read as files and checked against
docs/schemas/status-record.schema.json, runs and part files are read as bytes.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from tests.conformance.conftest import EVENT, RECORD

#: The suite's jobs (conftest.JOBS has each implementation's).
JOB = "pairs"
BUG = "key-changing-combiner"


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _event(implementation, tmp_path: Path, task: dict, partitions: int = 1, job: str = JOB,
           config: dict | None = None, **fields) -> dict:
    event = {
        "version": 1,
        "job_id": "conformance-1",
        "job_dir": _uri(tmp_path / "job"),
        "job": {"ref": implementation.ref(job), "params": {}, "partitions": partitions, "max_bad_records": 0,
                "vectorized": False, "max_line_bytes": 1 << 20, **(config or {})},
        "task": task,
        **fields,
    }
    EVENT.validate(event)
    return event


def _map_event(implementation, tmp_path: Path, lines: list[str], index: int = 0, partitions: int = 1,
               job: str = JOB) -> dict:
    data = "".join(line + "\n" for line in lines).encode()
    src = tmp_path / f"in-{index}.txt"
    src.write_bytes(data)
    split = {"uri": _uri(src), "start": 0, "end": len(data), "size": len(data)}
    return _event(implementation, tmp_path, {"phase": "map", "index": index, "count": index + 1, "attempt": 1},
                  partitions=partitions, job=job, splits=[split])


def _canonical(value) -> bytes:
    """The contract's key encoding: compact JSON, object members sorted, UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def _record(path: Path) -> dict:
    record = json.loads(path.read_text())
    RECORD.validate(record)
    return record


def _failed_records(tmp_path: Path, key: str) -> list[dict]:
    status = tmp_path / "job" / "status"
    return [_record(p) for p in sorted(status.glob(f"{key}.failed-*.json"))]


def test_a_map_task_writes_canonical_sorted_runs_partitioned_by_crc32_then_commits(tmp_path, implementation):
    pairs = [["b", 1], [{"z": 1, "a": [2, 1]}, 2], [1, 3], [1.0, 4], [True, 5], ["é", 6], ["a", 7],
             ["b", 8], [None, 9], [{"a": [2, 1], "z": 1}, 10], [-0.0, 11], [0, 12], ["a\tb", 13]]
    event = _map_event(implementation, tmp_path, [json.dumps(p) for p in pairs], index=4, partitions=3)
    result = implementation.invoke(event)
    assert result.ok, result.error
    commit = tmp_path / "job" / "status" / "map" / "00004.json"
    record = _record(commit)
    assert record == result.payload
    assert record["state"] == "succeeded" and record["attempt"] == 1
    assert record["task"]["phase"] == "map" and record["task"]["index"] == 4
    token = record["attempt_token"]
    expected: dict[int, list[bytes]] = {}
    for key, value in pairs:
        kb = _canonical(key)
        expected.setdefault(zlib.crc32(kb) % 3, []).append(kb + b"\t" + _canonical(value) + b"\n")
    assert sorted(o["partition"] for o in record["outputs"]) == sorted(expected)
    for out in record["outputs"]:
        p = out["partition"]
        run = _path(out["uri"])
        assert run == tmp_path / "job" / "map" / "00004" / token / f"part-{p:05d}"
        lines = run.read_bytes().splitlines(keepends=True)
        assert lines == sorted(expected[p])  # bytewise order over whole lines
        assert out["records"] == len(lines) and out["bytes"] == run.stat().st_size
    assert not _failed_records(tmp_path, "map/00004")


def test_a_reduce_round_merges_its_runs_into_one_sorted_run(tmp_path, implementation):
    runs = []
    for i, lines in enumerate([[b'"a"\t1\n', b'"c"\t2\n', b'{"x":1}\t3\n'], [b'"a"\t5\n', b'"b"\t1\n', b'1\t2\n']]):
        run = tmp_path / "job" / "map" / f"{i:05d}" / "a1-t" / "part-00002"
        run.parent.mkdir(parents=True)
        run.write_bytes(b"".join(sorted(lines)))
        runs.append(_uri(run))
    event = _event(implementation, tmp_path, {"phase": "reduce", "round": 1, "partition": 2, "group": 0, "final": False,
                              "attempt": 1}, partitions=3, inputs=runs)
    result = implementation.invoke(event)
    assert result.ok, result.error
    record = _record(tmp_path / "job" / "status" / "reduce" / "r001" / "p00002-g00000.json")
    (out,) = record["outputs"]
    merged = _path(out["uri"])
    assert merged == tmp_path / "job" / "reduce" / "r001" / "p00002-g00000" / record["attempt_token"] / "run"
    inputs = [line for uri in runs for line in _path(uri).read_bytes().splitlines(keepends=True)]
    assert merged.read_bytes().splitlines(keepends=True) == sorted(inputs)
    assert out["partition"] == 2 and out["records"] == len(inputs)


def test_a_final_reduce_writes_the_partitions_part_file(tmp_path, implementation):
    run = tmp_path / "job" / "map" / "00000" / "a1-t" / "part-00001"
    run.parent.mkdir(parents=True)
    run.write_bytes(b'"a"\t1\n"a"\t5\n"b"\t2\n')
    out_dir = tmp_path / "out"
    event = _event(implementation, tmp_path, {"phase": "reduce", "round": 1, "partition": 1, "group": 0, "final": True,
                              "attempt": 1}, partitions=2, inputs=[_uri(run)], output=_uri(out_dir))
    result = implementation.invoke(event)
    assert result.ok, result.error
    record = _record(tmp_path / "job" / "status" / "reduce" / "r001" / "p00001-g00000.json")
    assert _path(record["outputs"][0]["uri"]) == out_dir / "part-00001"
    assert (out_dir / "part-00001").read_text() == "a,6\nb,2\n"


def test_bad_input_fails_at_once_blaming_the_input(tmp_path, implementation):
    result = implementation.invoke(_map_event(implementation, tmp_path, ['["a", 1]', "not a pair"]))
    assert not result.ok
    assert not (tmp_path / "job" / "status" / "map" / "00000.json").exists()
    (failed,) = _failed_records(tmp_path, "map/00000")
    assert failed["state"] == "failed" and failed["attempt"] == 1
    assert failed["attempt_token"].startswith("a1-")
    assert failed["error"]["kind"] == "input" and failed["error"]["retryable"] is False
    assert "bad record" in failed["error"]["message"] and "byte 9" in failed["error"]["message"]


def test_a_bug_in_the_job_fails_at_once_blaming_the_job(tmp_path, implementation):
    result = implementation.invoke(_map_event(implementation, tmp_path, ["a a b"], job=BUG))
    assert not result.ok
    (failed,) = _failed_records(tmp_path, "map/00000")
    assert failed["error"]["kind"] == "job" and failed["error"]["retryable"] is False
    assert failed["error"]["type"] == "CombinerKeyError"


def test_a_duplicate_delivery_writes_under_its_own_token_and_one_record_commits(tmp_path, implementation):
    event = _map_event(implementation, tmp_path, ['["a", 1]', '["b", 2]'], index=7, partitions=2)
    first, second = implementation.invoke(event), implementation.invoke(event)
    assert first.ok and second.ok, (first.error, second.error)
    tokens = {first.payload["attempt_token"], second.payload["attempt_token"]}
    assert len(tokens) == 2
    assert {p.name for p in (tmp_path / "job" / "map" / "00007").iterdir()} == tokens
    commits = list((tmp_path / "job" / "status").rglob("*.json"))
    assert commits == [tmp_path / "job" / "status" / "map" / "00007.json"]
    record = _record(commits[0])
    assert record["attempt_token"] in tokens
    for out in record["outputs"]:  # the committed record names its own attempt's outputs only
        assert _path(out["uri"]).parent.name == record["attempt_token"]


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_event_of_another_version_is_refused_and_writes_nothing(tmp_path, implementation, version):
    event = _map_event(implementation, tmp_path, ['["a", 1]'])
    if version is None:
        del event["version"]
    else:
        event["version"] = version
    with pytest.raises(Exception, match="version"):
        EVENT.validate(event)
    result = implementation.invoke(event)
    assert not result.ok
    assert "version" in result.error["errorMessage"]
    assert not (tmp_path / "job").exists()


def _runs(record: dict) -> list[bytes]:
    return sorted(line for out in record["outputs"] for line in _path(out["uri"]).read_bytes().splitlines())


def test_a_parquet_split_reads_exactly_its_row_groups(tmp_path, implementation):
    if implementation.language != "python":
        pytest.skip("the Node.js data plane reads text in record mode: no Parquet, JSON Lines or Join steps")
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "sales.parquet"
    pq.write_table(pa.table({"region": ["a", "a", "b", "b", "b", "a", "c", "c", "c"],
                             "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]}), src, row_group_size=3)
    size = src.stat().st_size
    split = {"uri": _uri(src), "start": 0, "end": size, "size": size, "format": "parquet", "row_groups": [1, 2]}
    event = _event(implementation, tmp_path, {"phase": "map", "index": 0, "count": 1, "attempt": 1},
                   job="userjobs.rows:SalesByRegion", splits=[split])
    result = implementation.invoke(event)
    assert result.ok, result.error
    record = _record(tmp_path / "job" / "status" / "map" / "00000.json")
    assert _runs(record) == [b'"a"\t6.0', b'"b"\t9.0']  # rows 3-5 only: row group 1


def test_a_json_lines_split_owns_the_lines_starting_in_its_range(tmp_path, implementation):
    if implementation.language != "python":
        pytest.skip("the Node.js data plane reads text in record mode: no Parquet, JSON Lines or Join steps")
    lines = [b'{"region": "a"}\n', b'{"region": "b"}\n', b"\n", b'{"region": "b"}\n', b'{"region": "c"}\n']
    src = tmp_path / "rows.jsonl"
    src.write_bytes(b"".join(lines))
    start = len(lines[0]) + 3  # inside the second line: the split owns lines 3 on
    end = len(b"".join(lines[:4])) + 1  # inside the last line, which it also owns
    split = {"uri": _uri(src), "start": start, "end": end, "size": src.stat().st_size, "format": "jsonl"}
    event = _event(implementation, tmp_path, {"phase": "map", "index": 0, "count": 1, "attempt": 1},
                   job="userjobs.rows:RegionRows", splits=[split])
    result = implementation.invoke(event)
    assert result.ok, result.error
    assert _runs(_record(tmp_path / "job" / "status" / "map" / "00000.json")) == [b'"b"\t1', b'"c"\t1']


# -- Join steps (docs/contract.md, "Join steps"): userjobs.joins:JoinPairs joins left (k,a) with
# right (k2,b); its emit writes key -> [a, b].
JOIN = "userjobs.joins:JoinPairs"
LEFT = ["k1,x", "k2,y", "k1,w", "", "k9,q"]
RIGHT = ["k1,z", "k3,y", "k2,v"]


def _join_splits(tmp_path: Path) -> list[dict]:
    splits = []
    for name, lines in (("left", LEFT), ("right", RIGHT)):
        data = "".join(line + "\n" for line in lines).encode()
        src = tmp_path / f"{name}.csv"
        src.write_bytes(data)
        splits.append({"uri": _uri(src), "start": 0, "end": len(data), "size": len(data), "input": name})
    return splits


def _arrow_rows(path: Path) -> list[dict]:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(path.read_bytes())).read_all().to_pylist()


def _joined_pairs() -> list[tuple]:
    return sorted((lk, (a, b)) for lk, a in (ln.split(",") for ln in LEFT if ln)
                  for rk, b in (ln.split(",") for ln in RIGHT) if lk == rk)


def _join_reduce(tmp_path: Path, implementation, runs: list[str], partition: int, config: dict) -> list[tuple]:
    event = _event(implementation, tmp_path, {"phase": "reduce", "round": 1, "partition": partition, "group": 0, "final": True,
                              "attempt": 1}, partitions=3, job=JOIN, config=config, inputs=runs)
    result = implementation.invoke(event)
    assert result.ok, result.error
    record = _record(tmp_path / "job" / "status" / "reduce" / "r001" / f"p{partition:05d}-g00000.json")
    (out,) = record["outputs"]
    path = _path(out["uri"])
    assert path.name == "pairs"
    pairs = []
    for line in path.read_bytes().splitlines():
        key, value = line.split(b"\t")
        pairs.append((json.loads(key), tuple(json.loads(value))))
    assert out["records"] == len(path.read_bytes().splitlines())
    return pairs


@pytest.mark.parametrize("broadcast", [None, "right", "left"])
def test_a_join_map_task_writes_arrow_runs_by_the_key_and_the_final_reducers_write_the_joined_pairs(
        tmp_path, implementation, broadcast):
    if implementation.language != "python":
        pytest.skip("the Node.js data plane reads text in record mode: no Parquet, JSON Lines or Join steps")
    config = {"vectorized": True, **({"broadcast": broadcast} if broadcast else {})}
    event = _event(implementation, tmp_path, {"phase": "map", "index": 0, "count": 1, "attempt": 1}, partitions=3, job=JOIN,
                   config=config, splits=_join_splits(tmp_path))
    result = implementation.invoke(event)
    assert result.ok, result.error
    record = _record(tmp_path / "job" / "status" / "map" / "00000.json")
    assert record["stats"]["mode"] == ("broadcast join" if broadcast else "partitioned join")
    pairs: list[tuple] = []
    for out in record["outputs"]:
        p = out["partition"]
        run = _path(out["uri"])
        assert run == tmp_path / "job" / "map" / "00000" / record["attempt_token"] / f"part-{p:05d}.arrow"
        rows = _arrow_rows(run)
        assert out["records"] == len(rows) and rows
        for row in rows:
            if broadcast:  # the pairs emit returned, by their key
                assert set(row) == {"key", "value"}
                key = row["key"]
            else:  # both sides' rows, by the join key
                side = row["side"]
                assert side in (0, 1)
                key = row["key.l"] if side == 0 else row["key.r"]
                own = {"key.l", "l.a"} if side == 0 else {"key.r", "r.b"}
                assert own | {"side"} <= set(row) <= {"side", "key.l", "key.r", "l.a", "r.b"}
            assert zlib.crc32(_canonical(key)) % 3 == p
        pairs += _join_reduce(tmp_path, implementation, [out["uri"]], p, config)
    assert sorted(pairs) == _joined_pairs()
