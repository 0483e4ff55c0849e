"""Amplab 2a on one uservisits file: ``lambdamr run`` (local runtime) against DuckDB.

Both sides are timed as whole commands (a fresh Python process each, so interpreter start,
imports and, for us, worker start-up are included), run alternately, ``--repeat`` times.
DuckDB uses 2 threads; we use 2 local workers. DuckDB's answer is also the check: the
groups must be the same and every sum equal to within 1e-9 relative.

    .venv/bin/python benchmarks/bench_engine.py --size-mb 750 --repeat 5

Writes ``benchmarks/results/engine_2a.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

DUCKDB_2A = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET threads = 2")
cols = {'sourceIP': 'VARCHAR', 'destURL': 'VARCHAR', 'visitDate': 'VARCHAR', 'adRevenue': 'DOUBLE',
        'userAgent': 'VARCHAR', 'countryCode': 'VARCHAR', 'languageCode': 'VARCHAR',
        'searchWord': 'VARCHAR', 'duration': 'BIGINT'}
con.execute("COPY (SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM read_csv(?, header=false, "
            "delim=',', quote='', escape='', columns=?) GROUP BY 1) TO ? (HEADER false)",
            [sys.argv[1], cols, sys.argv[2]])
"""


def compile_bytecode() -> str:
    """Compile the project's modules (the driver's and the handlers') to bytecode before timing.

    An installed package has its bytecode (pip compiles it), and an editable install gets it
    on its first run, unless PYTHONDONTWRITEBYTECODE is set, as on some CI machines: then
    every command would compile every module again, which no user pays. The local runtime's
    workers run the handlers from the extracted code package, whose bytecode they write on
    their first run. Returns what the report says about it.
    """
    import airflow_provider_lambdamr
    import lambda_src

    dirs = [str(Path(m.__file__).parent) for m in (airflow_provider_lambdamr, lambda_src)]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, stdout=subprocess.DEVNULL)
    return f"compiled before timing (python -m compileall {' '.join(dirs)}), as an installed package has it"


def ensure_data(data_dir: Path, size_mb: int) -> Path:
    target = data_dir / f"uservisits-{size_mb}mb"
    files = sorted((target / "uservisits").glob("part-*")) if target.exists() else []
    if not files:
        rows = int(size_mb * 1_000_000 / 164)
        print(f"generating {rows:,} uservisits rows (~{size_mb} MB) in {target}", file=sys.stderr)
        subprocess.run(
            [str(BIN / "lambdamr"), "amplab-gen", "--output", str(target), "--table", "uservisits",
             "--rows", str(rows), "--files", "1", "--seed", "1"],
            check=True,
        )
        files = sorted((target / "uservisits").glob("part-*"))
    return files[0]


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def read_result(paths: list[Path]) -> dict[str, float]:
    out: dict[str, float] = {}
    for path in paths:
        with open(path, newline="") as fh:
            for row in csv.reader(fh):
                out[row[0]] = float(row[1])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=750)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "engine_2a.json")
    args = parser.parse_args()

    data = ensure_data(args.data_dir, args.size_mb)
    size = data.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="lambdamr-bench-"))
    ours_cmd = [str(BIN / "lambdamr"), "run", "amplab-2a", "--runtime", "local", "--workers",
                str(args.workers), "--input", str(data), "--output", str(work / "ours"), "--quiet",
                "--overwrite"]
    duck_cmd = [sys.executable, "-c", DUCKDB_2A, str(data), str(work / "duck.csv")]
    times: dict[str, list[float]] = {"lambdamr (local, 2 workers)": [], "duckdb (2 threads)": []}
    try:
        for i in range(args.repeat):
            shutil.rmtree(work / "ours", ignore_errors=True)
            times["lambdamr (local, 2 workers)"].append(timed(ours_cmd))
            times["duckdb (2 threads)"].append(timed(duck_cmd))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
        ours = read_result(sorted((work / "ours").glob("part-*")))
        duck = read_result([work / "duck.csv"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ours.keys() != duck.keys() or any(
        abs(v - duck[k]) > 1e-9 * max(1.0, abs(duck[k])) for k, v in ours.items()
    ):
        print("RESULTS DIFFER from DuckDB's", file=sys.stderr)
        return 1

    base = statistics.median(times["duckdb (2 threads)"])
    rows = []
    print(f"\nAmplab 2a over one {size / 1e6:.0f} MB uservisits file, {len(ours):,} groups "
          f"(answers equal to DuckDB's); {args.repeat} alternating runs\n")
    print(f"{'tool':<30} {'median s':>9} {'min s':>7} {'MB/s':>7} {'vs duckdb':>10}")
    for tool, values in times.items():
        med = statistics.median(values)
        rows.append({"tool": tool, "median_s": round(med, 3), "min_s": round(min(values), 3),
                     "mb_per_s": round(size / 1e6 / med, 1), "ratio_to_duckdb": round(med / base, 2),
                     "runs_s": [round(v, 3) for v in values]})
        print(f"{tool:<30} {med:>9.2f} {min(values):>7.2f} {size / 1e6 / med:>7.0f} {med / base:>9.2f}x")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "query": "amplab-2a", "input_bytes": size, "groups": len(ours), "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"), "results": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
