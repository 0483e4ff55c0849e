"""Record mode against Lithops and the plain loop: Amplab 2a's logic and word count.

What is measured
    Two pure-Python jobs, each over one file, every contender a whole command (a fresh
    Python process: interpreter start, imports and, for us and Lithops, worker start-up
    included), run alternately, ``--repeat`` rounds after ``--warmup`` untimed ones:

    2a         Amplab 2a's logic (split the line, take the first 8 characters of sourceIP,
               parse adRevenue, sum by prefix) over one uservisits file made by
               ``lambdamr amplab-gen`` (``--size-mb``, default 200).
    wordcount  the word count of ``bench_lithops.py`` over its generated text.

    ours 2w / ours 1w  ``lambdamr run amplab-2a|wordcount --runtime local --workers 2|1
               --no-vectorized``: the job's plain mapper, combiner and reducer (record mode).
    lithops    ``_lithops_wordcount.py [--job 2a]`` in the Lithops venv (``lithops==3.8.0``,
               ``benchmarks/.venv-lithops``, made by ``bench_lithops.py`` if missing),
               localhost backend with 2 worker processes, as many chunks as our 2-worker
               run has map tasks: each map task aggregates its chunk into a dict, one
               reduce task merges the dicts.
    plain      one process: the same logic as a plain loop over the file's lines into one
               dict (2a) or ``collections.Counter`` (wordcount), writing its result.

    Every contender's result is checked against the plain loop's: the same keys, counts
    equal, sums equal to within 1e-9 relative (floats summed in another order).

Reported, from the minimum over the rounds of each contender (the least disturbed run on
a shared machine): ``ours 2w / lithops`` (goal: at most 0.5) and ``ours 2w / (plain / 2)``
(goal: at most 1.6), and ``ours 1w / plain``; and the same from CPU seconds (user + system
of the command and every process it waited for), which a loaded machine disturbs less.
Writes ``benchmarks/results/record_mode.json``.

    python benchmarks/bench_record.py [--size-mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_engine import compile_bytecode
from bench_engine import ensure_data as ensure_uservisits
from bench_lithops import LITHOPS_RUNNER, ensure_lithops_venv, read_csv, write_lithops_config
from bench_lithops import ensure_data as ensure_words

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MB = 1_000_000

PLAIN = {
    "2a": """
import csv, sys
sums = {}
get = sums.get
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        cols = line.rstrip("\\n").split(",")
        if len(cols) != 9:
            raise SystemExit(f"expected 9 columns, found {len(cols)}")
        key = cols[0][:8]
        sums[key] = get(key, 0.0) + float(cols[3])
with open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    csv.writer(out, lineterminator="\\n").writerows(sums.items())
""",
    "wordcount": """
import collections, csv, re, sys
findall = re.compile(r"[\\w']+").findall
counts = collections.Counter()
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        counts.update(findall(line.lower()))
with open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    csv.writer(out, lineterminator="\\n").writerows(counts.items())
""",
}
JOBS = {"2a": "amplab-2a", "wordcount": "wordcount"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds of a command, and the CPU seconds of it and the processes it waited for."""
    cpu = _children_cpu()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return wall, _children_cpu() - cpu


def check(name: str, got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Fail unless ``got`` has the same keys and values (floats to within 1e-9 relative)."""
    if got.keys() != expected.keys():
        missing = sorted(expected.keys() - got.keys())[:5]
        extra = sorted(got.keys() - expected.keys())[:5]
        raise SystemExit(f"{name}: keys differ from the plain loop's (missing {missing}, extra {extra})")
    for key, value in expected.items():
        if abs(got[key] - value) > 1e-9 * max(1.0, abs(value)):
            raise SystemExit(f"{name}: {key!r} is {got[key]!r}, the plain loop says {value!r}")


class Contenders:
    def __init__(self, job: str, data: Path, work: Path, lithops: Path, config: Path, chunks: int) -> None:
        self.job, self.data, self.work = job, data, work
        self.lithops, self.config, self.chunks = lithops, config, chunks
        self.kind = float if job == "2a" else int
        self.reference: dict[str, Any] | None = None

    def ours(self, workers: int, round_: int, tree: Path | None = None) -> tuple[float, float]:
        """Our command; with ``tree``, that source tree's code (PYTHONPATH) instead of ours."""
        out = self.work / f"{self.job}-ours{workers}-{round_}{'-tree' if tree else ''}"
        env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
        # An older tree may predate the command's entry point (airflow_provider_lambdamr.prestart).
        command = [str(BIN / "lambdamr")]
        if tree and not (tree / "airflow_provider_lambdamr" / "prestart.py").exists():
            command = [str(BIN / "python"), "-m", "airflow_provider_lambdamr.cli"]
        took = timed([*command, "run", JOBS[self.job], "--runtime", "local", "--workers",
                      str(workers), "--input", str(self.data), "--output", str(out), "--no-vectorized",
                      "--quiet"], env)
        self._check(f"ours ({workers} workers)", read_csv(sorted(out.glob("part-*")), self.kind))
        shutil.rmtree(out)
        return took

    def lithops_run(self, round_: int) -> tuple[float, float]:
        counts = self.work / f"{self.job}-lithops-{round_}.json"
        cmd = [str(self.lithops), str(LITHOPS_RUNNER), "--job", self.job, "--input", str(self.data),
               "--chunk-number", str(self.chunks), "--counts-out", str(counts)]
        took = timed(cmd, {**os.environ, "LITHOPS_CONFIG_FILE": str(self.config)})
        self._check("lithops", json.loads(counts.read_text(encoding="utf-8")))
        counts.unlink()
        return took

    def plain(self, round_: int) -> tuple[float, float]:
        out = self.work / f"{self.job}-plain-{round_}.csv"
        took = timed([sys.executable, "-c", PLAIN[self.job], str(self.data), str(out)])
        result = read_csv([out], self.kind)
        out.unlink()
        if self.reference is None:
            self.reference = result
        self._check("plain", result)
        return took

    def _check(self, name: str, got: dict[str, Any]) -> None:
        if self.reference is not None:
            check(f"{self.job} {name}", got, self.reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="size of each input file (10^6 bytes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--jobs", default="2a,wordcount")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--lithops-venv", type=Path, default=HERE / ".venv-lithops")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "record_mode.json")
    parser.add_argument("--compare-tree", type=Path,
                        help="also run another checkout's code (2 workers), e.g. the main branch's, "
                             "as the contender 'tree 2w'")
    args = parser.parse_args(argv)
    bytecode = compile_bytecode()
    jobs = args.jobs.split(",")
    if args.repeat < 1 or args.warmup < 0 or not set(jobs) <= set(JOBS):
        parser.error(f"--repeat must be positive, --warmup not negative, --jobs from {sorted(JOBS)}")

    from airflow_provider_lambdamr.engine.planner import balanced_split_size

    lithops = ensure_lithops_venv(args.lithops_venv.resolve())
    data = {}
    for job in jobs:
        path = (ensure_uservisits(args.data_dir, args.size_mb) if job == "2a"
                else ensure_words(args.data_dir.resolve(), args.size_mb, 4000))
        with open(path, "rb") as fh:  # page cache warm for everyone
            while fh.read(16 * 1024 * 1024):
                pass
        data[job] = path

    names = ["ours 2w", "ours 1w", "lithops 2w", "plain"] + (["tree 2w"] if args.compare_tree else [])
    times: dict[str, dict[str, list[float]]] = {job: {n: [] for n in names} for job in jobs}
    cpus: dict[str, dict[str, list[float]]] = {job: {n: [] for n in names} for job in jobs}
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        work = Path(tmp)
        config = work / "lithops.yaml"
        write_lithops_config(config, lithops, 2)
        contenders = {}
        for job in jobs:
            size = data[job].stat().st_size
            chunks = -(-size // balanced_split_size(size, 64 * 1024 * 1024, 2))
            contenders[job] = Contenders(job, data[job], work, lithops, config, chunks)
        for rnd in range(1 - args.warmup, args.repeat + 1):
            for job, c in contenders.items():
                took = {"plain": c.plain(rnd), "ours 2w": c.ours(2, rnd), "lithops 2w": c.lithops_run(rnd),
                        "ours 1w": c.ours(1, rnd)}
                if args.compare_tree:
                    took["tree 2w"] = c.ours(2, rnd, args.compare_tree.resolve())
                print(f"{'warm-up' if rnd < 1 else 'round'} {rnd} {job} (wall/cpu s): "
                      + ", ".join(f"{n} {w:.2f}/{u:.2f}" for n, (w, u) in took.items()), flush=True)
                if rnd >= 1:
                    for n, (w, u) in took.items():
                        times[job][n].append(w)
                        cpus[job][n].append(u)

    summary = {}
    for job in jobs:
        best = {n: min(v) for n, v in times[job].items()}
        cpu = {n: min(v) for n, v in cpus[job].items()}
        ratios = {
            "ours_2w_over_lithops": round(best["ours 2w"] / best["lithops 2w"], 3),
            "ours_2w_over_plain_per_worker": round(best["ours 2w"] / (best["plain"] / 2), 3),
            "ours_1w_over_plain": round(best["ours 1w"] / best["plain"], 3),
            # CPU seconds, which a loaded machine disturbs less than wall time
            "cpu_ours_2w_over_lithops": round(cpu["ours 2w"] / cpu["lithops 2w"], 3),
            "cpu_ours_2w_over_plain": round(cpu["ours 2w"] / cpu["plain"], 3),
        }
        if "tree 2w" in best:
            ratios["ours_2w_over_tree_2w"] = round(best["ours 2w"] / best["tree 2w"], 3)
            ratios["cpu_ours_2w_over_tree_2w"] = round(cpu["ours 2w"] / cpu["tree 2w"], 3)
        summary[job] = {"input_bytes": data[job].stat().st_size,
                        "min_wall_s": {n: round(v, 3) for n, v in best.items()},
                        "min_cpu_s": {n: round(v, 3) for n, v in cpu.items()},
                        "runs_wall_s": {n: [round(x, 3) for x in v] for n, v in times[job].items()},
                        "runs_cpu_s": {n: [round(x, 3) for x in v] for n, v in cpus[job].items()},
                        "ratios": ratios,
                        "goals_met": {"at_most_0.5x_lithops": ratios["ours_2w_over_lithops"] <= 0.5,
                                      "within_1.6x_plain_per_worker": ratios["ours_2w_over_plain_per_worker"] <= 1.6}}
        print(f"\n{job} ({summary[job]['input_bytes'] / MB:.0f} MB), min of {args.repeat} alternated runs:")
        for n, v in best.items():
            print(f"  {n:<11} {v:6.2f} s wall {cpu[n]:6.2f} s cpu")
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))

    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "bytecode": bytecode,
        "benchmark": "record mode: lambdamr local (2 and 1 workers) vs Lithops localhost (2) vs a plain loop",
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "repeat": args.repeat, "warmup": args.warmup, "jobs": summary,
    }, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
