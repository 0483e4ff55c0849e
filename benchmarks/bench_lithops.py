"""Word count on one text file: lambdamr's local runtime against Lithops' localhost backend.

What is measured
    The same pure-Python record-mode word count (lower-case each line, take the runs of
    ``[\\w']+``, count them with a combiner and a reducer that sum) over the same text
    file, with two worker processes on each side:

    ours     ``lambdamr run wordcount --input FILE --output DIR --runtime local
             --workers 2 --no-vectorized --quiet``, the built-in job
             ``lambda_src/jobs/wordcount.py``, into a fresh output directory each run.
    lithops  ``benchmarks/_lithops_wordcount.py`` run by the interpreter of a separate
             venv (``benchmarks/.venv-lithops``, ``lithops==3.8.0``): one
             ``FunctionExecutor(backend="localhost", storage="localhost")`` doing
             ``map_reduce`` over the file, split by Lithops' data partitioner into
             newline-aligned byte ranges, as many as our planner makes map splits
             (``--chunk-mb`` splits, rounded up to a multiple of the workers when few:
             near-equal ranges on both sides), with
             ``worker_processes: 2``. Each map task counts its chunk line by line
             into one dict (the combine); one reduce task merges the dicts. It is
             spawned, as by default, once 20% of the map tasks are done: it queues
             behind the map tasks, so it takes no worker process from them.
    counter  (unless ``--no-baseline``) a single process in this interpreter:
             ``collections.Counter`` updated with the same regex line by line.

    The ours and lithops times are the wall clock of the whole command (a subprocess,
    interpreter start-up included); Lithops' own time from creating the
    ``FunctionExecutor`` to ``get_result`` returning is reported as a separate row. The
    counter time is in-process. Runs alternate, ours then lithops (then counter), for
    ``--repeat`` rounds, after the page cache has been warmed by reading the file once and
    ``--warmup`` untimed rounds of ours and lithops.
    Every run's counts are checked against the first ours run: the sha256 of the sorted
    rows for all, the full dicts for every ours and counter run and the first lithops
    run. Any difference fails the script.

How
    ``--size-mb`` MB (10^6 bytes) of English-like text is generated deterministically into
    ``--data-dir`` if missing: lines of about 80 characters, words drawn from a generated
    vocabulary of ``--vocab`` words with Zipf-like frequencies (short words common), some
    with apostrophes, capitalised sentence starts, commas and full stops. The Lithops
    venv is created with ``python3 -m venv`` and ``pip install lithops==3.8.0`` if it
    is missing, and runs with ``LITHOPS_CONFIG_FILE`` set to a temporary YAML config
    (localhost compute and storage, storage-based monitoring, no telemetry: no network).

    A table (median and min wall seconds, MB/s from the median, and "x ours": the tool's
    median over ours, above 1 when it is slower than ours) is printed, then how much faster
    ours is than Lithops against the required 2x; the results are written to
    ``benchmarks/results/lithops_wordcount.json``.

    python benchmarks/bench_lithops.py [--size-mb 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _lithops_wordcount import WORD_RE, counts_digest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LITHOPS_VERSION = "3.8.0"
LITHOPS_RUNNER = HERE / "_lithops_wordcount.py"
MB = 1_000_000
SEED = 20240611

SINGLE_ONSETS = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w"]
CLUSTER_ONSETS = ["br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sl", "st", "th", "tr", "wh"]
ONSETS = SINGLE_ONSETS + CLUSTER_ONSETS
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "ai", "ee", "oo", "y"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "d", "m", "ng", "nd", "st", "ck", "th", "rt"]
SUFFIXES = ["'s", "n't", "'ll", "'re", "'d"]


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    """Distinct pronounceable words, shortest first, so that Zipf ranks favour short words."""
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < size:
        syllables = rng.choices((1, 2, 3, 4), weights=(30, 42, 21, 7))[0]
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
        if rng.random() < 0.03:
            word += rng.choice(SUFFIXES)
        if len(word) > 1 and word not in seen:
            seen.add(word)
            words.append(word)
    return sorted(words, key=lambda w: (len(w) + rng.random() * 4, w))


def generate_text(path: Path, size_mb: int, vocab_size: int, seed: int) -> None:
    """Write ``size_mb`` MB (rounded up to a whole line) of ASCII text to ``path``, atomically."""
    rng = random.Random(seed)
    vocab = make_vocabulary(rng, vocab_size)
    cum_weights: list[float] = []
    total = 0.0
    for rank in range(1, len(vocab) + 1):
        total += 1.0 / rank**1.05
        cum_weights.append(total)
    target = size_mb * MB
    written = 0
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        while written < target:
            words = rng.choices(vocab, cum_weights=cum_weights, k=200_000)
            lines = []
            pos = 0
            while pos < len(words) - 30 and written < target:
                n = rng.randint(11, 23)
                line = words[pos : pos + n]
                pos += n
                line[0] = line[0].capitalize()
                comma = rng.randrange(n + 4)
                if comma < n - 1:
                    line[comma] += ","
                text = " ".join(line) + ".\n"
                lines.append(text)
                written += len(text)
            fh.write("".join(lines))
    os.replace(tmp, path)


def ensure_data(data_dir: Path, size_mb: int, vocab_size: int) -> Path:
    path = data_dir / f"words_{size_mb}mb_v{vocab_size}_s{SEED}.txt"
    if not path.exists() or path.stat().st_size < size_mb * MB:
        print(f"generating {path} ({size_mb} MB) ...", flush=True)
        t0 = time.perf_counter()
        generate_text(path, size_mb, vocab_size, SEED)
        print(f"  done in {time.perf_counter() - t0:.1f}s", flush=True)
    return path


def ensure_lithops_venv(venv: Path) -> Path:
    """The venv's python, after creating the venv and installing Lithops if needed."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import lithops; print(lithops.__version__)"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() == LITHOPS_VERSION:
            return python
    print(f"creating {venv} with lithops=={LITHOPS_VERSION} ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"lithops=={LITHOPS_VERSION}"], check=True
    )
    found = subprocess.run(check, capture_output=True, text=True, check=True)
    if found.stdout.strip() != LITHOPS_VERSION:
        raise SystemExit(f"expected lithops {LITHOPS_VERSION} in {venv}, found {found.stdout.strip()!r}")
    return python


def write_lithops_config(path: Path, python: Path, workers: int) -> None:
    """Localhost compute and storage; monitoring polls local storage; telemetry off."""
    path.write_text(
        "lithops:\n"
        "  backend: localhost\n"
        "  storage: localhost\n"
        "  monitoring: storage\n"
        "  telemetry: false\n"
        "  log_level: WARNING\n"
        "localhost:\n"
        f"  runtime: {json.dumps(str(python))}\n"
        f"  worker_processes: {workers}\n",
        encoding="utf-8",
    )


def read_csv(paths: list[Path], kind: type = int) -> dict[str, Any]:
    """Two-column CSV files as one dict (values converted by ``kind``); a key twice fails."""
    out: dict[str, Any] = {}
    for path in paths:
        with open(path, encoding="utf-8", newline="") as fh:
            for key, value in csv.reader(fh):
                if key in out:
                    raise SystemExit(f"{path}: key {key!r} appears twice")
                out[key] = kind(value)
    return out


def read_part_files(output: Path) -> dict[str, int]:
    return read_csv(sorted(output.glob("part-*")))


def run_ours(
    lambdamr: Path, data: Path, work: Path, run: int, workers: int, split_mb: int, timeout: float
) -> dict[str, Any]:
    output = work / f"ours-{run}"
    cmd = [
        str(lambdamr),
        "run",
        "wordcount",
        "--input",
        str(data),
        "--output",
        str(output),
        "--runtime",
        "local",
        "--workers",
        str(workers),
        "--no-vectorized",
        "--quiet",
    ]
    if split_mb != 64:
        cmd[-1:-1] = ["--split-size", f"{split_mb}MB"]
    t0 = time.perf_counter()
    proc = run_command(cmd, timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ours failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    counts = read_part_files(output)
    success = json.loads((output / "_SUCCESS").read_text(encoding="utf-8"))
    shutil.rmtree(output)
    return {
        "tool": "ours",
        "run": run,
        "wall_s": round(wall, 4),
        "durations_s": success.get("durations_s"),
        "tasks": success.get("tasks"),
        "invocations": success.get("invocations"),
        "counts": counts_digest(counts),
        "_counts": counts,
        "command": cmd,
    }


def run_command(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"timed out after {timeout:.0f}s: {' '.join(cmd)}") from err


def run_lithops(
    python: Path,
    data: Path,
    work: Path,
    run: int,
    config: Path,
    chunks: int,
    spawn_reducer: int,
    keep_counts: bool,
    timeout: float,
) -> dict[str, Any]:
    counts_file = work / f"lithops-{run}.json"
    cmd = [
        str(python),
        str(LITHOPS_RUNNER),
        "--input",
        str(data),
        "--chunk-number",
        str(chunks),
        "--spawn-reducer",
        str(spawn_reducer),
    ]
    if keep_counts:
        cmd += ["--counts-out", str(counts_file)]
    env = {**os.environ, "LITHOPS_CONFIG_FILE": str(config)}
    t0 = time.perf_counter()
    proc = run_command(cmd, timeout, env)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"lithops failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(lines[-1])
    result.update(tool="lithops", run=run, wall_s=round(wall, 4), command=cmd)
    if keep_counts:
        result["_counts"] = json.loads(counts_file.read_text(encoding="utf-8"))
        counts_file.unlink()
    return result


def run_counter(data: Path, run: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    counter: collections.Counter[str] = collections.Counter()
    findall = WORD_RE.findall
    with open(data, encoding="utf-8") as fh:
        for line in fh:
            counter.update(findall(line.lower()))
    wall = time.perf_counter() - t0
    return {
        "tool": "counter",
        "run": run,
        "wall_s": round(wall, 4),
        "counts": counts_digest(dict(counter)),
        "_counts": dict(counter),
    }


def diff_counts(a: dict[str, int], b: dict[str, int], limit: int = 10) -> list[str]:
    rows = []
    for word in sorted(set(a) | set(b)):
        if a.get(word) != b.get(word):
            rows.append(f"  {word!r}: {a.get(word)} vs {b.get(word)}")
            if len(rows) == limit:
                break
    return rows


def check_counts(reference: dict[str, Any], result: dict[str, Any]) -> None:
    """Fail loudly unless ``result`` counted exactly what ``reference`` (the first ours run) did."""
    full = result.pop("_counts", None)
    if result["counts"] == reference["counts"] and (full is None or full == reference["_counts"]):
        return
    detail = diff_counts(reference["_counts"], full) if full is not None else []
    raise SystemExit(
        f"COUNTS DIFFER: {result['tool']} run {result['run']} {result['counts']} "
        f"!= ours {reference['counts']}\n" + "\n".join(detail)
    )


def summarize(name: str, times: list[float], size_bytes: int, ours_median: float) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "tool": name,
        "runs": len(times),
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "mb_per_s": round(size_bytes / MB / median, 2),
        "ratio_vs_ours": round(median / ours_median, 2),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'tool':<44} {'median s':>9} {'min s':>8} {'MB/s':>7} {'x ours':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['tool']:<44} {r['median_s']:>9.2f} {r['min_s']:>8.2f} {r['mb_per_s']:>7.1f} "
            f"{r['ratio_vs_ours']:>7.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200, help="size of the generated text (10^6 bytes)")
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--vocab", type=int, default=4000, help="distinct words in the generated text")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tool (alternating)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on each side")
    parser.add_argument(
        "--chunk-mb",
        type=int,
        default=64,
        help="our --split-size in MiB (default 64, ours' default); Lithops gets as many "
        "chunks (obj_chunk_number) as that makes splits",
    )
    parser.add_argument(
        "--spawn-reducer",
        type=int,
        default=20,
        help="Lithops: percent of map tasks done before the reduce task is spawned (default 20, "
        "Lithops' own). 100 can hang lithops 3.8.0's localhost backend: waiting for every map "
        "task stops its worker threads, which the reduce job then never gets back",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds one run of a command may take (default 1800)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of ours and lithops first (default 1)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-process Counter runs")
    parser.add_argument("--lambdamr", type=Path, default=REPO / ".venv" / "bin" / "lambdamr")
    parser.add_argument("--lithops-venv", type=Path, default=HERE / ".venv-lithops")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "lithops_wordcount.json")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.workers < 1 or args.chunk_mb < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--repeat, --workers, --chunk-mb and --timeout must be positive, --warmup not negative")

    data = ensure_data(args.data_dir.resolve(), args.size_mb, args.vocab)
    size_bytes = data.stat().st_size
    lithops_python = ensure_lithops_venv(args.lithops_venv.resolve())
    from airflow_provider_lambdamr.engine.planner import balanced_split_size

    # As many chunks as our planner makes map tasks (it rounds few tasks up to a multiple
    # of the worker count), so both sides get the same near-equal ranges.
    split_bytes = balanced_split_size(size_bytes, args.chunk_mb * 1024 * 1024, args.workers)
    chunks = -(-size_bytes // split_bytes)

    with open(data, "rb") as fh:
        while fh.read(16 * 1024 * 1024):
            pass

    runs: list[dict[str, Any]] = []
    warmup_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lithops-") as tmp:
        work = Path(tmp)
        config = work / "lithops.yaml"
        write_lithops_config(config, lithops_python, args.workers)
        reference: dict[str, Any] | None = None
        first = 1 - args.warmup
        for rnd in range(first, args.repeat + 1):
            warm = rnd < 1
            ours = run_ours(args.lambdamr, data, work, rnd, args.workers, args.chunk_mb, args.timeout)
            if reference is None:
                reference = dict(ours)
            check_counts(reference, ours)
            print(f"{'warm-up' if warm else 'round'} {rnd}: ours {ours['wall_s']:.2f}s", end="", flush=True)
            lith = run_lithops(
                lithops_python,
                data,
                work,
                rnd,
                config,
                chunks,
                args.spawn_reducer,
                keep_counts=rnd == first,
                timeout=args.timeout,
            )
            check_counts(reference, lith)
            print(f", lithops {lith['wall_s']:.2f}s (executor {lith['executor_s']:.2f}s)", end="", flush=True)
            (warmup_runs if warm else runs).extend([ours, lith])
            if not args.no_baseline and not warm:
                base = run_counter(data, rnd)
                check_counts(reference, base)
                print(f", counter {base['wall_s']:.2f}s", end="", flush=True)
                runs.append(base)
            print(flush=True)

    def times(tool: str, key: str = "wall_s") -> list[float]:
        return [r[key] for r in runs if r["tool"] == tool]

    ours_median = statistics.median(times("ours"))
    w = args.workers
    rows = [
        summarize(f"ours: lambdamr local, {w} workers (command)", times("ours"), size_bytes, ours_median),
        summarize(f"lithops localhost, {w} workers (command)", times("lithops"), size_bytes, ours_median),
        summarize(
            "lithops: inside FunctionExecutor", times("lithops", "executor_s"), size_bytes, ours_median
        ),
    ]
    if not args.no_baseline:
        rows.append(summarize("counter: 1 process, in-process", times("counter"), size_bytes, ours_median))
    speedup = statistics.median(times("lithops")) / ours_median
    speedup_inside = statistics.median(times("lithops", "executor_s")) / ours_median

    first_lithops = next(r for r in runs if r["tool"] == "lithops")
    print()
    print(
        f"data: {data} ({size_bytes / MB:.1f} MB), {chunks} map tasks a side "
        f"(split {split_bytes / 2**20:.1f} MiB), {args.repeat} runs each"
    )
    print_table(rows)
    print(f"counts identical in every run: {reference['counts']}")
    print(
        f"lithops map tasks: {first_lithops['map_tasks']} (newline-aligned byte ranges "
        f"{[p['byte_range'] for p in first_lithops['partitions']]})"
    )
    verdict = "MET" if speedup >= 2 else "NOT MET"

    def relation(ratio: float) -> str:
        return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"

    print(
        f"ours is {relation(speedup)} than Lithops (whole command), {relation(speedup_inside)} than "
        f"the time inside its FunctionExecutor; required >= 2x faster: {verdict}"
    )

    results = {
        "benchmark": "wordcount, pure-Python record mode: lambdamr local vs Lithops localhost",
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "data": {
            "path": str(data),
            "bytes": size_bytes,
            "size_mb": args.size_mb,
            "vocab": args.vocab,
            "seed": SEED,
        },
        "settings": {
            "repeat": args.repeat,
            "workers": args.workers,
            "split_bytes": split_bytes,
            "map_tasks": chunks,
            "lithops_version": LITHOPS_VERSION,
            "lithops_spawn_reducer": args.spawn_reducer,
            "warmup": args.warmup,
            "baseline": not args.no_baseline,
        },
        "counts": reference["counts"],
        "counts_match": True,
        "summary": rows,
        "speedup_vs_lithops_command": round(speedup, 2),
        "speedup_vs_lithops_executor": round(speedup_inside, 2),
        "requirement_2x_met": speedup >= 2,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "warmup_runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in warmup_runs],
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
