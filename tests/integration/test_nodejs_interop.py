"""The shuffle's bytes are the contract: Node.js and Python tasks of one job interoperate exactly.

The same job in both languages (userjobs.interop:KeySum, tests/fixtures/nodejobs/keysum.mjs) maps
keys whose JSON the languages write differently by default (1.0 and 1, integers beyond 2^53, -0.0,
NaN, non-ASCII and astral strings, objects with members in any order); map tasks of either language
write the same runs, and every mix of map, intermediate-reduce and final-reduce languages writes
the same part files.
"""

from __future__ import annotations

import collections
import csv
import gzip
import io
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from airflow_provider_lambdamr.engine import packaging
from airflow_provider_lambdamr.engine.runtimes.local import LocalRuntime
from lambda_src import storage as st
from lambda_src.contract import JobConfig, MapTask, ReduceTask
from lambda_src.shuffle import CODEC
from tests.conftest import FIXTURES

PARTITIONS = 3
JOBS = {"python": ("userjobs.interop:KeySum", "userjobs.interop:KeySum"),
        "nodejs": (str(FIXTURES / "nodejobs" / "keysum.mjs"), "job/keysum.mjs")}
#: The job that maps each line to itself, in each language (in the same packages).
LINES = {"python": "userjobs.interop:Lines", "nodejs": "job/lines.mjs"}
KEYS = [
    "1", "1.0", "true", '"1"', "-0.0", "0", "0.0", str(2**53 + 1), str(2**64), str(-(2**63)), "1e+16", "1e-05",
    "0.1", "1.5e+300", '"é"', '"😀"', '"\\uffff"', '"\\ue000"', '"a\\tb"', '"a,b"', '"q\\""', '"x\\ny"', '""',
    '{"b":1,"a":2}', '{"a":2,"b":1}', '[1,[2.0]]', "null", "NaN", "Infinity", "-Infinity", "false",
]


#: Node.js map tasks that flush their buffer every 7 values and spill runs past 50 characters:
#: merged (and combined) from spill files, their runs must still be the same bytes.
SPILLING = {"LAMBDAMR_MAP_FLUSH_VALUES": "7", "LAMBDAMR_MAP_SPILL_CHARS": "50"}


@pytest.fixture(scope="module")
def runtimes(node, fixture_jobs_path) -> Iterator[dict[str, LocalRuntime]]:
    with LocalRuntime(workers=1) as py, LocalRuntime(workers=1) as js, LocalRuntime(workers=1, env=SPILLING) as spill:
        py.deploy(packaging.build(JOBS["python"][0]))
        js.deploy(packaging.build(JOBS["nodejs"][0]))
        spill.deploy(packaging.build(JOBS["nodejs"][0]))
        yield {"python": py, "nodejs": js, "nodejs, spilling": spill}


def _language(runtime_name: str) -> str:
    return runtime_name.split(",")[0]


def _outcome(runtime: LocalRuntime, spec):
    request_id = runtime.invoke(spec)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for result in runtime.poll(1.0):
            if result.request_id == request_id:
                return result
    raise AssertionError(f"no outcome of {spec.describe()}")


def _run(runtime: LocalRuntime, spec) -> dict:
    result = _outcome(runtime, spec)
    assert result.ok, result.error
    return result.payload


def _config(language: str, ref: str | None = None, **options) -> JobConfig:
    return JobConfig(ref=ref or JOBS[language][1], params={}, partitions=PARTITIONS, vectorized=False, **options)


def _input(tmp_path: Path) -> list[Path]:
    """Two input files of pair lists: every key several times, in different orders."""
    files = []
    for i in range(2):
        keys = KEYS[i:] + KEYS[:i] + KEYS[::2]
        lines = ["[" + ",".join(f"[{k},{n % 5 + 1}]" for n, k in enumerate(keys[j::3])) + "]" for j in range(3)]
        path = tmp_path / f"in-{i}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        files.append(path)
    return files


def _expected(files: list[Path]) -> collections.Counter:
    sums: collections.Counter = collections.Counter()
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            for key, value in json.loads(line):
                sums[CODEC.encode_key(key)] += value
    return sums


def _bytes(uri: str) -> bytes:
    return Path(st.local_path(uri)).read_bytes()


def test_node_and_python_tasks_read_each_others_runs_and_write_the_same_bytes(tmp_path, runtimes):
    files = _input(tmp_path)
    maps: dict[str, list[dict[int, str]]] = {}
    spills: dict[str, int] = {}
    for name, runtime in runtimes.items():
        job_dir = st.from_path(str(tmp_path / f"map-{name}"))
        maps[name] = []
        for index, path in enumerate(files):
            size = path.stat().st_size
            split = {"uri": st.from_path(str(path)), "start": 0, "end": size, "size": size}
            record = _run(runtime, MapTask("interop", job_dir, _config(_language(name)), index=index, count=2,
                                           items=[split]))
            spills[name] = spills.get(name, 0) + record["stats"]["spills"]
            maps[name].append({o["partition"]: o["uri"] for o in record["outputs"]})
    assert spills == {"python": 0, "nodejs": 0, "nodejs, spilling": spills["nodejs, spilling"]}
    assert spills["nodejs, spilling"] > 0
    # Map tasks of both languages write the same runs, byte for byte (spilling or not).
    for name in ("nodejs", "nodejs, spilling"):
        for py_runs, js_runs in zip(maps["python"], maps[name], strict=True):
            assert py_runs.keys() == js_runs.keys()
            for p in py_runs:
                assert _bytes(py_runs[p]) == _bytes(js_runs[p]), f"{name}: partition {p}"

    parts: dict[tuple[str, str, str], dict[int, bytes]] = {}
    for mapped, merged, final in itertools.product(["python", "nodejs"], repeat=3):
        job_dir = st.from_path(str(tmp_path / f"map-{mapped}"))
        parts[mapped, merged, final] = {}
        for p in range(PARTITIONS):
            runs = [m[p] for m in maps[mapped] if p in m]
            rnd = ReduceTask("interop", job_dir, _config(merged), round=1, partition=p, group=0, items=runs)
            (merged_run,) = _run(runtimes[merged], rnd)["outputs"]
            output = st.from_path(str(tmp_path / f"out-{mapped}-{merged}-{final}"))
            last = ReduceTask("interop", job_dir, _config(final), round=2, partition=p, group=0, final=True,
                              items=[merged_run["uri"]], output=output)
            (part,) = _run(runtimes[final], last)["outputs"]
            parts[mapped, merged, final][p] = _bytes(part["uri"])
    reference = parts["python", "python", "python"]
    for combo, got in parts.items():
        assert got == reference, f"map/merge/final in {combo} wrote other part files than Python alone"

    # ... and the part files hold one row per key (as the contract's encoding tells keys apart) and its sum.
    expected = _expected(files)
    rows = [row for p in range(PARTITIONS) for row in csv.reader(io.StringIO(reference[p].decode()))]
    assert len(rows) == len(expected) == len(set(KEYS)) - 1  # {"b":1,"a":2} and {"a":2,"b":1} are one key
    assert sorted(int(row[-1]) for row in rows) == sorted(expected.values())
    shown = {row[0] for row in rows if len(row) == 2}
    assert {"1", "1.0", "true", "-0.0", "0", "0.0", str(2**53 + 1), str(2**64), "nan", "inf", "-inf", "1e+16",
            "é", "😀", "x\ny", "a,b", 'q"'} <= shown


#: Pieces of hostile text input: line ends of both kinds, a BOM, invalid UTF-8, non-ASCII, a long line.
PIECES = [b"a", b"b c", b"\n", b"\r\n", b"\r", b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3", b"\xc3\xa9", b"\xf0\x9f\x98\x80",
          b"\t", b",", b'"', b" ", b"x" * 40, b"\x00"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hs.lists(hs.sampled_from(PIECES), max_size=40).map(b"".join),
       cuts=hs.lists(hs.integers(0, 400), max_size=4), gz=hs.booleans(), bad=hs.sampled_from([0, 2, 100]))
def test_node_and_python_map_tasks_read_the_same_records_from_hostile_text(tmp_path_factory, runtimes, data, cuts,
                                                                             gz, bad):
    """Split ownership, BOM, \\r\\n, invalid UTF-8 (bad records), long lines: the same records, or the
    same failure, whichever language reads."""
    tmp = tmp_path_factory.mktemp("hostile")
    path = tmp / ("in.txt.gz" if gz else "in.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    size = path.stat().st_size
    bounds = [0, size] if gz else sorted({0, size, *(c for c in cuts if c < size)})
    splits = [{"uri": st.from_path(str(path)), "start": a, "end": b, "size": size,
               **({"compression": "gzip"} if gz else {})} for a, b in itertools.pairwise(bounds)]
    seen = {}
    for name, runtime in runtimes.items():
        job_dir = st.from_path(str(tmp / name.replace(", ", "-")))
        config = _config(_language(name), LINES[_language(name)], max_bad_records=bad, max_line_bytes=48)
        outcomes = []
        for index, split in enumerate(splits):
            result = _outcome(runtime, MapTask("hostile", job_dir, config, index=index, count=len(splits), items=[split]))
            if not result.ok:
                outcomes.append(("failed", result.failure.kind, result.failure.type))
                continue
            stats = result.payload["stats"]
            runs = {o["partition"]: _bytes(o["uri"]) for o in result.payload["outputs"]}
            outcomes.append(("ok", stats["input_records"], stats["bad_records"], stats["input_bytes"], runs))
        seen[name] = outcomes
    assert seen["nodejs"] == seen["python"]
    assert seen["nodejs, spilling"] == seen["python"]
