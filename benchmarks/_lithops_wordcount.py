"""Lithops side of ``bench_lithops.py``: a word count with Lithops' localhost backend
(and, with ``--job 2a``, Amplab 2a's logic, for ``bench_record.py``).

Run with the interpreter of ``benchmarks/.venv-lithops`` (Lithops is not installed in the
project's venv), with ``LITHOPS_CONFIG_FILE`` pointing at a config that selects the
``localhost`` backend and ``localhost`` storage; ``bench_lithops.py`` writes one and runs
this file as a subprocess.

The input file is handed to ``FunctionExecutor.map_reduce`` as ``{"obj": "/abs/path"}``:
an absolute path makes Lithops' data partitioner (``lithops/job/partitioner.py``) split
the local file itself into byte ranges (``CloudObjectLocal``), with no upload to storage:
``--chunk-bytes`` sets ``obj_chunk_size``, ``--chunk-number`` sets ``obj_chunk_number``
(that many near-equal ranges). ``obj_newline="\\n"`` makes each partition start after the first
newline at or past its start and run through the first newline at or past its end, so
no line is cut in two or counted twice (``lithops.utils.WrappedStreamingBodyPartition``).

Each map task reads its chunk, counts words line by line with the same regex and
lower-casing as ``lambda_src/jobs/wordcount.py`` into one dict (the per-chunk combine),
and returns that dict; the single reduce task merges the dicts.

Prints one JSON line on stdout: a digest of the counts, the number of partitions,
per-task timings and these wall-clock times (seconds, ``time.perf_counter``):

- ``import_s``: ``import lithops``;
- ``executor_s``: from creating the ``FunctionExecutor`` until ``get_result`` returns;
- ``executor_exit_s``: the same plus leaving its ``with`` block (its cleanup).

This module imports nothing outside the standard library at import time, so that
``bench_lithops.py`` can reuse its counting and digest helpers from the project's venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

WORD_RE = re.compile(r"[\w']+")


def count_lines(lines: Iterable[str], counts: dict[str, int]) -> dict[str, int]:
    """Add the words of each line to ``counts``: the mapper plus an in-memory combiner."""
    findall = WORD_RE.findall
    get = counts.get
    for line in lines:
        for word in findall(line.lower()):
            counts[word] = get(word, 0) + 1
    return counts


def counts_digest(counts: dict[str, int]) -> dict[str, Any]:
    """A summary that two equal word counts share: sha256 of the sorted rows, sizes."""
    h = hashlib.sha256()
    for word in sorted(counts):
        h.update(f"{word}\t{counts[word]}\n".encode())
    return {
        "sha256": h.hexdigest(),
        "distinct_words": len(counts),
        "total_words": sum(counts.values()),
    }


def map_chunk(obj: Any) -> dict[str, int]:
    """Lithops map function: count the words of one newline-aligned chunk of the file."""
    text = obj.data_stream.read().decode("utf-8")
    return count_lines(text.split("\n"), {})


def map_chunk_2a(obj: Any) -> dict[str, float]:
    """Lithops map function for ``bench_record.py``: Amplab 2a's logic over one chunk of a
    uservisits file (the first 8 characters of sourceIP, the sum of adRevenue)."""
    sums: dict[str, float] = {}
    get = sums.get
    for line in obj.data_stream.read().decode("utf-8").split("\n"):
        if line:
            cols = line.split(",")
            if len(cols) != 9:
                raise ValueError(f"expected 9 comma-separated columns, found {len(cols)}")
            key = cols[0][:8]
            sums[key] = get(key, 0.0) + float(cols[3])
    return sums


def reduce_counts(results: list[dict[str, int]]) -> dict[str, int]:
    """Lithops reduce function: merge the per-chunk dicts."""
    total: dict[str, int] = {}
    get = total.get
    for part in results:
        for word, n in part.items():
            total[word] = get(word, 0) + n
    return total


def _task_seconds(futures: list[Any]) -> dict[str, float]:
    times = [f.stats["worker_func_exec_time"] for f in futures if "worker_func_exec_time" in f.stats]
    if not times:
        return {}
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def _planned_partitions(path: str, chunk_bytes: int | None, chunk_number: int | None) -> list[dict[str, Any]]:
    """The partitions Lithops' partitioner plans for the file (no I/O beyond a stat)."""
    from lithops.job.partitioner import create_partitions

    parts, _ = create_partitions({}, None, [{"obj": path}], chunk_bytes, chunk_number, "\n")
    return [
        {"part": p["obj"].part, "byte_range": p["obj"].data_byte_range, "chunk_size": p["obj"].chunk_size}
        for p in parts
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="local text file (made absolute)")
    split = parser.add_mutually_exclusive_group(required=True)
    split.add_argument("--chunk-bytes", type=int, help="obj_chunk_size: bytes per map task")
    split.add_argument("--chunk-number", type=int, help="obj_chunk_number: map tasks (even ranges)")
    parser.add_argument(
        "--spawn-reducer",
        type=int,
        default=20,
        help="percent of map tasks done before the reduce task is spawned (default 20, Lithops' own)",
    )
    parser.add_argument("--counts-out", help="also write the full counts to this JSON file")
    parser.add_argument(
        "--job", choices=("wordcount", "2a"), default="wordcount",
        help="wordcount, or Amplab 2a's logic over a uservisits file (bench_record.py)",
    )
    args = parser.parse_args(argv)

    path = os.path.abspath(args.input)
    if not os.path.isfile(path):
        parser.error(f"no such file: {path}")

    t0 = time.perf_counter()
    import lithops

    t1 = time.perf_counter()
    with lithops.FunctionExecutor(backend="localhost", storage="localhost") as fexec:
        futures = fexec.map_reduce(
            map_chunk_2a if args.job == "2a" else map_chunk,
            [{"obj": path}],
            reduce_counts,
            obj_chunk_size=args.chunk_bytes,
            obj_chunk_number=args.chunk_number,
            obj_newline="\n",
            spawn_reducer=args.spawn_reducer,
        )
        counts = fexec.get_result(futures)
        t2 = time.perf_counter()
        worker_processes = fexec.config.get("localhost", {}).get("worker_processes")
    t3 = time.perf_counter()

    if not isinstance(counts, dict):
        raise SystemExit(f"unexpected map_reduce result: {type(counts).__name__}")
    map_futures = futures[:-1]
    if args.counts_out:
        with open(args.counts_out, "w", encoding="utf-8") as fh:
            json.dump(counts, fh, ensure_ascii=False, sort_keys=True)

    result = {
        "lithops_version": lithops.__version__,
        "python": sys.version.split()[0],
        "worker_processes": worker_processes,
        "chunk_bytes": args.chunk_bytes,
        "chunk_number": args.chunk_number,
        "spawn_reducer": args.spawn_reducer,
        "map_tasks": len(map_futures),
        "partitions": _planned_partitions(path, args.chunk_bytes, args.chunk_number),
        "map_task_s": _task_seconds(map_futures),
        "reduce_task_s": _task_seconds(futures[-1:]),
        "import_s": round(t1 - t0, 4),
        "executor_s": round(t2 - t1, 4),
        "executor_exit_s": round(t3 - t1, 4),
        "counts": counts_digest(counts) if args.job == "wordcount" else {"keys": len(counts)},
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
